"""The openai backend: any OpenAI-compatible chat-completions server (e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct`).

Each query is one POST to `{base_url}/chat/completions` with the user turn as content parts (text and
base64 PNG `image_url`s) and `max_tokens=1, logprobs=true, top_logprobs=k, temperature=0`; the answer
is read from `choices[0].logprobs.content[0].top_logprobs`. Plain `urllib` (no `openai` package).

With a vLLM server the label token ids are asked for exactly, so a label cannot fall outside the
top k: once per backend, the labels are tokenized by the server's own `POST /tokenize` (at the
server root, next to `/v1`), and every request adds `logprob_token_ids` (vLLM's chat field: when set
it replaces the top-k selection, the response lists those ids plus the sampled token) and
`return_tokens_as_token_ids` (tokens come back as `token_id:<id>`, matched by id). A server without
`/tokenize` (not vLLM) gets plain top-k requests, matched by token text; a vLLM too old for
`logprob_token_ids` ignores the unknown field and answers top-k, read by id.

`label_logprobs(queries, labels)` takes the labels to read ("A", "B" by default; the alignment asks
"Yes", "No"); their ids are resolved through `/tokenize` once per labels tuple (a server found
without `/tokenize` is not asked again, for any labels).

Requests are retried on connection errors, timeouts, 429 and 5xx with exponential backoff; other
HTTP errors fail at once with the server's message (with the fix named when it is vLLM's
multimodal limit).
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from reward_models.vlm.prompting import (
    LABELS,
    Part,
    label_logprobs_from_ids,
    label_logprobs_from_top,
    label_token_ids,
    openai_messages,
)
from schemas.errors import VipoError

MAX_RESPONSE_BYTES = 8 * 2**20


class RaterRequestError(VipoError, RuntimeError):
    """A request to the rater's server failed for good (after its retries) or was answered badly."""


_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
_TOKEN_ID = "token_id:"  # vLLM's format_token_id_placeholder, with return_tokens_as_token_ids
_MM_LIMIT = "may be provided in one prompt"  # vLLM's "At most N image(s) may be provided in one prompt."


class _ServerTokenizer:
    """`encode` through the server's `POST /tokenize` (vLLM), for `label_token_ids`."""

    def __init__(self, backend: OpenAIBackend):
        self.backend = backend

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        body = {"model": self.backend.model, "prompt": text, "add_special_tokens": add_special_tokens}
        return [int(t) for t in self.backend.post(body, self.backend.tokenize_url, retries=0)["tokens"]]


class OpenAIBackend:
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 3,
        top_logprobs: int = 20,
        concurrency: int = 4,
        backoff_s: float = 0.5,
        max_backoff_s: float = 8.0,
        max_images: int = 2,
        exact_labels: bool = True,
    ):
        root = base_url.rstrip("/")
        self.url = root + "/chat/completions"
        self.tokenize_url = root.removesuffix("/v1") + "/tokenize"
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.top_logprobs = int(top_logprobs)
        self.concurrency = max(1, int(concurrency))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.max_images = int(max_images)  # 2 x judge.video_frames: what the server's multimodal limit must allow
        self.exact_labels = bool(exact_labels)
        self.label_ids: dict[str, list[int]] | None = None  # the pairwise labels' ids, from /tokenize on first use
        self._label_ids: dict[tuple[str, ...], dict[str, list[int]] | None] = {}  # per labels tuple
        self._tokenize_ok = True  # False once the server has shown it has no (usable) /tokenize

    def resolve_label_ids(self, labels: Sequence[str] = LABELS) -> dict[str, list[int]] | None:
        """The labels' token ids by the server's tokenizer (once per labels tuple); None when the
        server has no `/tokenize`, a label has no single-token spelling there, or `exact_labels` is
        off: requests for these labels are then top-k, matched by token text."""
        key = tuple(labels)
        if key not in self._label_ids:
            ids = None
            if self.exact_labels and self._tokenize_ok:
                try:
                    ids = label_token_ids(_ServerTokenizer(self), key)
                except (RaterRequestError, KeyError, TypeError):  # no /tokenize (not vLLM), or not vLLM's answer
                    self._tokenize_ok = False
                except ValueError:  # these labels are not single tokens (or share ids) on this server
                    pass
            self._label_ids[key] = ids
            if key == LABELS:
                self.label_ids = ids
        return self._label_ids[key]

    def request_body(self, parts: Sequence[Part], labels: Sequence[str] = LABELS) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(parts),
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }
        label_ids = self._label_ids.get(tuple(labels))
        if label_ids:
            body["logprob_token_ids"] = sorted(i for ids in label_ids.values() for i in ids)
            body["return_tokens_as_token_ids"] = True
        return body

    def _post_once(self, data: bytes, url: str) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            body = resp.read(MAX_RESPONSE_BYTES + 1)  # a one-token answer is a few KB: never read without a cap
        if len(body) > MAX_RESPONSE_BYTES:
            raise RaterRequestError(f"openai backend: POST {url}: response larger than {MAX_RESPONSE_BYTES:,} bytes")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, RecursionError) as err:
            raise RaterRequestError(f"openai backend: POST {url}: unreadable response ({type(err).__name__})") from None

    def _refusal(self, url: str, last: str) -> RaterRequestError:
        hint = ""
        if _MM_LIMIT in last:
            hint = (f" -- a video pair is {self.max_images} images per query (2 x judge.video_frames): start the server "
                    f"with --limit-mm-per-prompt '{{\"image\": {self.max_images}}}' or lower judge.video_frames")
        return RaterRequestError(f"openai backend: POST {url} failed: {last}{hint}")

    def post(self, body: dict[str, Any], url: str | None = None, retries: int | None = None) -> dict:
        """POST with retries; raises `RaterRequestError` naming the URL and the last failure."""
        url = url or self.url
        data = json.dumps(body).encode("utf-8")
        attempts = (self.max_retries if retries is None else retries) + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                return self._post_once(data, url)
            except urllib.error.HTTPError as err:
                detail = err.read(4096).decode("utf-8", "replace")[:500]
                last = f"HTTP {err.code}: {detail}"
                if err.code not in _RETRY_STATUS:
                    raise self._refusal(url, last) from None
            except TimeoutError:
                last = f"timed out after {self.timeout_s:g} s"
            except urllib.error.URLError as err:
                if isinstance(err.reason, (TimeoutError, socket.timeout)):
                    last = f"timed out after {self.timeout_s:g} s"
                else:
                    last = f"connection failed: {err.reason}"
            except (ConnectionError, json.JSONDecodeError) as err:
                last = f"{type(err).__name__}: {err}"
        raise RaterRequestError(
            f"openai backend: POST {url} failed after {attempts} attempt{'s' * (attempts > 1)}: {last}"
        )

    def parse(self, response: dict, labels: Sequence[str] = LABELS) -> tuple[float, ...]:
        """One logprob per label ((lA, lB) by default) from a chat-completions response with
        first-token logprobs: by token id where the server wrote `token_id:<id>` tokens and the
        labels' ids are known, else by token text."""
        try:
            first = response["choices"][0]["logprobs"]["content"][0]
        except (KeyError, IndexError, TypeError):
            raise RaterRequestError(
                "openai backend: the response has no choices[0].logprobs.content[0] "
                "(does the server support logprobs / top_logprobs?)"
            ) from None
        top = {t["token"]: t["logprob"] for t in first.get("top_logprobs") or []}
        if "token" in first and first["token"] not in top:
            top[first["token"]] = first["logprob"]
        by_id = {int(t[len(_TOKEN_ID):]): lp for t, lp in top.items() if t.startswith(_TOKEN_ID) and t[len(_TOKEN_ID):].isdigit()}
        label_ids = self._label_ids.get(tuple(labels))
        if label_ids and by_id and len(by_id) == len(top):
            return label_logprobs_from_ids(by_id, label_ids, labels)
        return label_logprobs_from_top(top, labels)

    def label_logprobs(self, queries: Sequence[list[Part]], labels: Sequence[str] = LABELS) -> list[tuple[float, ...]]:
        self.resolve_label_ids(labels)  # before the threads: one /tokenize round, shared

        def one(parts: list[Part]) -> tuple[float, ...]:
            return self.parse(self.post(self.request_body(parts, labels)), labels)

        if len(queries) <= 1 or self.concurrency == 1:
            return [one(q) for q in queries]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries))) as pool:
            return list(pool.map(one, queries))
