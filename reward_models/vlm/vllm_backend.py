"""The vLLM backend: an offline `vllm.LLM` engine (GPU), one `generate` call per rating batch.

The prompt is the model's own chat template applied by its processor (exactly the text the
transformers backend builds), the pixels go in `multi_modal_data={"image": [...]}` in the same order
as the `<|image_pad|>` placeholders. `SamplingParams(max_tokens=1, logprobs=k, temperature=0)`
returns, for the one generated position, a dict {token id: Logprob} of the top-k tokens (plus the
sampled one). vLLM reports log-probabilities of the raw model distribution, before any sampling mask
or penalty, so only the two labels' values are used and renormalised (prompting.two_label_probability).

vllm is the `[gpu]` extra: it is imported here, lazily, and nowhere else.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from reward_models.vlm.prompting import Part, chat_messages, images_of, label_logprobs_from_ids, label_token_ids


def _logprob_dict(position: Any) -> dict[int, float]:
    """{token id: logprob} of one generated position (a dict of `Logprob`s, or vLLM's flat form)."""
    items = position.items() if hasattr(position, "items") else position
    return {int(tok): float(getattr(lp, "logprob", lp)) for tok, lp in items}


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
        self.llm = LLM(
            model=model_path,
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            limit_mm_per_prompt={"image": max_images},
            max_logprobs=max(top_logprobs, 20),
            **engine_kwargs,
        )
        self.params = SamplingParams(max_tokens=1, logprobs=top_logprobs, temperature=0.0)

    def prompt_text(self, parts: Sequence[Part]) -> str:
        return self.processor.apply_chat_template(chat_messages(parts), tokenize=False, add_generation_prompt=True)

    def requests(self, queries: Sequence[list[Part]]) -> list[dict]:
        return [
            {"prompt": self.prompt_text(q), "multi_modal_data": {"image": images_of(q)}} for q in queries
        ]

    def label_logprobs(self, queries: Sequence[list[Part]]) -> list[tuple[float, float]]:
        outputs = self.llm.generate(self.requests(queries), self.params, use_tqdm=False)
        result = []
        for out in outputs:  # LLM.generate keeps the order of its inputs
            logprobs = out.outputs[0].logprobs
            if not logprobs:
                raise RuntimeError("vllm returned no logprobs for the first generated token")
            result.append(label_logprobs_from_ids(_logprob_dict(logprobs[0]), self.label_ids))
        return result
