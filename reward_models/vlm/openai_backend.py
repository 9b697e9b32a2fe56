"""The openai backend: any OpenAI-compatible chat-completions server (e.g. `vllm serve Qwen/Qwen2.5-VL-7B-Instruct`).

Each query is one POST to `{base_url}/chat/completions` with the user turn as content parts (text and
base64 PNG `image_url`s) and `max_tokens=1, logprobs=true, top_logprobs=k, temperature=0`; the answer
is read from `choices[0].logprobs.content[0].top_logprobs`. Plain `urllib` (no `openai` package).
Requests are retried on connection errors, timeouts, 429 and 5xx with exponential backoff; other
HTTP errors fail at once with the server's message.
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

from reward_models.vlm.prompting import Part, label_logprobs_from_top, openai_messages


class RaterRequestError(RuntimeError):
    """A request to the rater's server failed for good (after its retries) or was answered badly."""


_RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


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
    ):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.api_key = api_key
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.top_logprobs = int(top_logprobs)
        self.concurrency = max(1, int(concurrency))
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)

    def request_body(self, parts: Sequence[Part]) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": openai_messages(parts),
            "max_tokens": 1,
            "temperature": 0,
            "logprobs": True,
            "top_logprobs": self.top_logprobs,
        }

    def _post_once(self, data: bytes) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read().decode("utf-8"))

    def post(self, body: dict[str, Any]) -> dict:
        """POST with retries; raises `RaterRequestError` naming the URL and the last failure."""
        data = json.dumps(body).encode("utf-8")
        attempts = self.max_retries + 1
        last = ""
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1)))
            try:
                return self._post_once(data)
            except urllib.error.HTTPError as err:
                detail = err.read().decode("utf-8", "replace")[:500]
                last = f"HTTP {err.code}: {detail}"
                if err.code not in _RETRY_STATUS:
                    raise RaterRequestError(f"openai backend: POST {self.url} failed: {last}") from None
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
            f"openai backend: POST {self.url} failed after {attempts} attempt{'s' * (attempts > 1)}: {last}"
        )

    @staticmethod
    def parse(response: dict) -> tuple[float, float]:
        """(lA, lB) from a chat-completions response with first-token logprobs."""
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
        return label_logprobs_from_top(top)

    def label_logprobs(self, queries: Sequence[list[Part]]) -> list[tuple[float, float]]:
        def one(parts: list[Part]) -> tuple[float, float]:
            return self.parse(self.post(self.request_body(parts)))

        if len(queries) <= 1 or self.concurrency == 1:
            return [one(q) for q in queries]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(queries))) as pool:
            return list(pool.map(one, queries))
