"""The vLLM backend: an offline `vllm.LLM` engine (GPU), one `generate` call per rating batch.

The prompt is the model's own chat template applied by its processor (exactly the text the
transformers backend builds), the pixels go in `multi_modal_data={"image": [...]}` in the same order
as the `<|image_pad|>` placeholders.

The answer is read at the one generated position. vLLM releases with
`SamplingParams.logprob_token_ids` (vllm-project/vllm#34539) are asked for exactly the label token
ids, `SamplingParams(max_tokens=1, temperature=0, logprob_token_ids=[...])`: the result holds those
ids (plus the sampled token) whatever their rank, so a label cannot be missing. Older releases
refuse the keyword (TypeError) and get `logprobs=k` instead, the top-k tokens, where a label outside
the top k reads as -inf. Either way vLLM reports log-probabilities of the raw model distribution,
before any sampling mask or penalty, so only the two labels' values are used and renormalised
(prompting.two_label_probability).

`label_logprobs(queries, labels)` takes the labels to read ("A", "B" by default; the alignment asks
"Yes", "No"): their token ids and the `SamplingParams` asking for them are built once per labels
tuple. The alignment's P(Yes) is read as is (full vocabulary, vLLM's raw log-probabilities, before
temperature or penalties), not renormalised.

vllm is the `[gpu]` extra: it is imported here, lazily, and nowhere else.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reward_models.vlm.prompting import LABELS, Part, chat_messages, images_of, label_logprobs_from_ids, label_token_ids


def _logprob_dict(position: Any) -> dict[int, float]:
    """{token id: logprob} of one generated position (a dict of `Logprob`s, or vLLM's flat form)."""
    items = position.items() if hasattr(position, "items") else position
    return {int(tok): float(getattr(lp, "logprob", lp)) for tok, lp in items}


def sampling_params(sampling_params_cls: Any, label_ids: Sequence[int], top_logprobs: int) -> tuple[Any, bool]:
    """(SamplingParams, exact): the label ids asked for by id where this vLLM has `logprob_token_ids`
    (then `logprobs` stays unset: vLLM requires it to equal the id count when both are given), top-k
    logprobs otherwise."""
    try:
        return sampling_params_cls(max_tokens=1, temperature=0.0, logprob_token_ids=sorted(label_ids)), True
    except TypeError:  # msgspec's "Unexpected keyword argument 'logprob_token_ids'": a release before #34539
        return sampling_params_cls(max_tokens=1, temperature=0.0, logprobs=top_logprobs), False


class VLLMBackend:
    def __init__(
        self,
        model_path: str,
        dtype: str = "bfloat16",
        max_images: int = 2,
        top_logprobs: int = 20,
        max_model_len: int = 8192,
        gpu_memory_utilization: float = 0.85,
        seed: int = 0,
        **engine_kwargs: Any,
    ):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as err:
            raise ImportError("the vllm judge backend needs vllm: pip install -e '.[gpu]' (GPU machines only)") from err
        from transformers import AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model_path)
        self.label_ids = label_token_ids(self.processor.tokenizer)
        self.max_images = int(max_images)
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": self.max_images},
            max_logprobs=max(top_logprobs, 20),
            **engine_kwargs,
        )
        self._sampling_params_cls = SamplingParams
        self.top_logprobs = int(top_logprobs)
        self._label_ids: dict[tuple[str, ...], dict[str, list[int]]] = {LABELS: self.label_ids}
        self._params: dict[tuple[str, ...], tuple[Any, bool]] = {}
        self.params, self.exact = self.params_for(LABELS)

    def ids_for(self, labels: Sequence[str]) -> dict[str, list[int]]:
        """The single-token spellings of each label (`label_token_ids`), once per labels tuple."""
        key = tuple(labels)
        if key not in self._label_ids:
            self._label_ids[key] = label_token_ids(self.processor.tokenizer, key)
        return self._label_ids[key]

    def params_for(self, labels: Sequence[str]) -> tuple[Any, bool]:
        """(SamplingParams, exact) asking for these labels' token ids, built once per labels tuple."""
        key = tuple(labels)
        if key not in self._params:
            wanted = [i for ids in self.ids_for(key).values() for i in ids]
            self._params[key] = sampling_params(self._sampling_params_cls, wanted, self.top_logprobs)
        return self._params[key]

    def prompt_text(self, parts: Sequence[Part]) -> str:
        return self.processor.apply_chat_template(chat_messages(parts), tokenize=False, add_generation_prompt=True)

    def requests(self, queries: Sequence[list[Part]]) -> list[dict]:
        out = []
        for q in queries:
            images = images_of(q)
            if len(images) > self.max_images:
                raise ValueError(
                    f"vllm backend: a query holds {len(images)} images but the engine allows "
                    f"limit_mm_per_prompt={{'image': {self.max_images}}}, which the rater sets to 2 x judge.video_frames; "
                    "the frames shown per video must not exceed judge.video_frames"
                )
            out.append({"prompt": self.prompt_text(q), "multi_modal_data": {"image": images}})
        return out

    def label_logprobs(self, queries: Sequence[list[Part]], labels: Sequence[str] = LABELS) -> list[tuple[float, ...]]:
        label_ids = self.ids_for(labels)
        params, exact = self.params_for(labels)
        outputs = self.llm.generate(self.requests(queries), params, use_tqdm=False)
        result = []
        for out in outputs:  # LLM.generate keeps the order of its inputs
            logprobs = out.outputs[0].logprobs
            if not logprobs:
                raise RuntimeError("vllm returned no logprobs for the first generated token")
            position = _logprob_dict(logprobs[0])
            if exact:
                missing = sorted(i for ids in label_ids.values() for i in ids if i not in position)
                if missing:
                    raise RuntimeError(f"vllm returned no logprob for the label token ids {missing} asked for by logprob_token_ids")
            result.append(label_logprobs_from_ids(position, label_ids, labels))
        return result
