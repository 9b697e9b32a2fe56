"""The transformers backend: `AutoModelForImageTextToText` + `AutoProcessor` (Qwen2-VL / Qwen2.5-VL).

One forward pass per micro-batch (left padding, so the last position is every row's last prompt
token, "assistant\\n"), logits of that position only (`logits_to_keep=1`), log-softmax over the whole
vocabulary, then the label token ids ("A" and, where the vocabulary has it, " A"; for the alignment
"Yes" / " Yes" and "No" / " No"), looked up once per labels tuple.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from reward_models.vlm.prompting import LABELS, Part, chat_messages, images_of, label_token_ids, logsumexp


class TransformersBackend:
    def __init__(self, model_path: str, dtype: str = "float32", device: str = "cpu", batch_size: int = 8):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.device = torch.device(device)
        self.batch_size = max(1, int(batch_size))
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=getattr(torch, dtype))
        self.model.to(self.device).eval()
        self.label_ids = label_token_ids(self.processor.tokenizer)  # the pairwise labels, checked at load
        self._label_ids: dict[tuple[str, ...], dict[str, list[int]]] = {LABELS: self.label_ids}

    def ids_for(self, labels: Sequence[str]) -> dict[str, list[int]]:
        """The single-token spellings of each label (`label_token_ids`), once per labels tuple."""
        key = tuple(labels)
        if key not in self._label_ids:
            self._label_ids[key] = label_token_ids(self.processor.tokenizer, key)
        return self._label_ids[key]

    def prompt_text(self, parts: Sequence[Part]) -> str:
        """The chat-templated prompt, ending with the generation prompt (`<|im_start|>assistant\\n`)."""
        return self.processor.apply_chat_template(chat_messages(parts), tokenize=False, add_generation_prompt=True)

    def inputs(self, queries: Sequence[list[Part]]):
        """Processor inputs of a micro-batch (left-padded), on the model's device."""
        texts = [self.prompt_text(q) for q in queries]
        images = [im for q in queries for im in images_of(q)]
        batch = self.processor(
            text=texts, images=images or None, return_tensors="pt", padding=True, padding_side="left"
        )
        return batch.to(self.device)

    @torch.inference_mode()
    def label_logprobs(self, queries: Sequence[list[Part]], labels: Sequence[str] = LABELS) -> list[tuple[float, ...]]:
        out: list[tuple[float, ...]] = []
        ids = self.ids_for(labels)
        columns = [ids[label] for label in labels]
        for start in range(0, len(queries), self.batch_size):
            batch = self.inputs(queries[start : start + self.batch_size])
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1, :].float()
            logp = torch.log_softmax(logits, dim=-1).cpu().double()
            for row in logp:
                out.append(tuple(logsumexp(row[col].tolist()) for col in columns))
        return out
