"""VLM rater: the two-label / swap-debias maths on hand-computed numbers; the tiny Qwen2-VL rater
through save_pretrained -> from_pretrained checked against a forward pass done here; the openai
backend against a canned local server; the vllm backend's request/parse plumbing against a stand-in
engine (the real engine needs a GPU); the judge stage on media written to disk."""
from __future__ import annotations

import base64
import io
import json
import math
import pickle
import sys
import time
import types

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from pipeline.judge import JudgeStage, rater_model_path
from pipeline.media import encode_image, encode_video
from pipeline.select import DROP_DISAGREES, DROP_POSITION_INCONSISTENT, judge_keeps
from pipeline.store import write_bytes
from reward_models.vlm.openai_backend import OpenAIBackend, RaterRequestError
from reward_models.vlm.prompting import chat_messages, images_of
from reward_models.vlm_rater import (
    PairQuery,
    RaterAnswerError,
    VLMRater,
    build_parts,
    label_logprobs_from_top,
    label_token_ids,
    question,
    save_tiny_rater,
    swap_debias,
    two_label_probability,
)
from schemas.config import JudgeConfig, ResourceConfig
from schemas.tables import JUDGE_KEEPS, JUDGEMENTS

ln = math.log


def _image(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------- the maths
def test_two_label_renormalisation_exact():
    assert two_label_probability(-0.5, -1.5) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-15)  # 0.7310585786300049
    assert two_label_probability(ln(0.3), ln(0.1)) == pytest.approx(0.75, abs=1e-15)
    assert two_label_probability(ln(0.02), ln(0.06)) == pytest.approx(0.25, abs=1e-15)  # scale-free: only the ratio counts
    assert two_label_probability(-700.0, -701.0) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=1e-15)  # no underflow
    # a label absent from the top-k list is -inf: the other label gets everything
    assert two_label_probability(-2.0, -math.inf) == 1.0
    assert two_label_probability(-math.inf, -0.1) == 0.0
    with pytest.raises(RaterAnswerError):
        two_label_probability(-math.inf, -math.inf)


def test_label_logprobs_from_top_k():
    top = {"A": ln(0.6), " A": ln(0.1), "B": ln(0.2), "C": ln(0.05), "a": ln(0.05)}
    la, lb = label_logprobs_from_top(top)
    assert la == pytest.approx(ln(0.7), abs=1e-12)  # "A" and " A" are one answer; "a" is not
    assert lb == pytest.approx(ln(0.2), abs=1e-12)
    assert two_label_probability(la, lb) == pytest.approx(0.7 / 0.9, abs=1e-12)
    # B absent from the top-k list
    la, lb = label_logprobs_from_top([("A", -0.3), ("X", -1.0), ("\n", -2.0)])
    assert (la, lb) == (-0.3, -math.inf)
    assert two_label_probability(la, lb) == 1.0
    with pytest.raises(RaterAnswerError):
        two_label_probability(*label_logprobs_from_top({"X": -0.1, "Y": -3.0}))


def test_swap_debias_exact():
    assert swap_debias(0.8, 0.3) == pytest.approx((0.75, 0.9), abs=1e-15)  # (0.8 + 0.7) / 2; 1 - |0.8 - 0.7|
    assert swap_debias(0.9, 0.9) == pytest.approx((0.5, 0.2), abs=1e-15)  # always "A": position bias, no preference
    assert swap_debias(0.75, 0.25) == pytest.approx((0.75, 1.0), abs=1e-15)
    assert swap_debias(1.0, 0.0) == (1.0, 1.0)


def test_rater_combines_orders_exactly():
    class Canned:
        def __init__(self, answers):
            self.answers, self.seen = answers, []

        def label_logprobs(self, queries):
            self.seen.append(queries)
            return self.answers[: len(queries)]

    backend = Canned([(ln(0.6), ln(0.2)), (ln(0.1), ln(0.3)), (-1.0, -math.inf), (-2.0, -0.5)])
    rater = VLMRater(backend, name="canned:x", image_size=32)
    pairs = [PairQuery("p0", "a cat", "aesthetics", [_image(0)], [_image(1)]), PairQuery("p1", "a dog", "composition", [_image(2)], [_image(3)])]
    j0, j1 = rater.rate(pairs)
    assert len(backend.seen) == 1 and len(backend.seen[0]) == 4  # both orders of every pair in ONE backend call
    assert (j0.pair_id, j0.p_ab, j0.p_ba) == ("p0", pytest.approx(0.75), pytest.approx(0.25))
    assert (j0.p_first, j0.position_consistency) == (pytest.approx(0.75), pytest.approx(1.0))
    p_ba = 1 / (1 + math.exp(-1.5))  # P(A) from (-2.0, -0.5)
    assert j1.p_ab == 1.0 and j1.p_ba == pytest.approx(1 - p_ba, abs=1e-15)
    assert j1.p_first == pytest.approx((1.0 + p_ba) / 2, abs=1e-15)
    assert j1.position_consistency == pytest.approx(1 - abs(1.0 - p_ba), abs=1e-15)
    assert j1.p_first_when_second == pytest.approx(p_ba, abs=1e-15)
    # the first query of a pair shows a as A, the second shows b as A
    first, second = backend.seen[0][0], backend.seen[0][1]
    assert np.array_equal(np.asarray(images_of(first)[0]), np.asarray(images_of(second)[1]))
    with pytest.raises(RaterAnswerError, match="p0"):
        VLMRater(Canned([(-math.inf, -math.inf), (-1.0, -1.0)]), name="x").rate(pairs[:1])


# ------------------------------------------------------------------------------------------ prompting
def test_question_and_layout():
    q = question("text_rendering", "a sign that says OPEN")
    assert q == (
        'Which of A and B is better at legible, correctly spelled text that the prompt asks for for the prompt '
        '"a sign that says OPEN"? Answer with A or B.'
    )
    with pytest.raises(ValueError, match="unknown category"):
        question("nope", "x")
    parts = build_parts("p", "aesthetics", [_image(0, 100, 50)], [_image(1, 30, 60)], image_size=56)
    assert [k for k, _ in parts] == ["text", "image", "text", "text", "image", "text", "text"]
    assert images_of(parts)[0].size == (56, 28) and images_of(parts)[1].size == (28, 56)  # longest side = image_size
    assert parts[0][1] == "Image A:\n" and parts[3][1] == "Image B:\n" and parts[-1][1] == question("aesthetics", "p")
    # a video: its frames as images, in order, each labelled
    frames_a = [_image(i) for i in range(3)]
    frames_b = [_image(10 + i) for i in range(3)]
    parts = build_parts("p", "motion_quality", frames_a, frames_b, image_size=32)
    assert len(images_of(parts)) == 6
    text = "".join(v for k, v in parts if k == "text")
    assert "Video A (3 frames, in order):" in text and "A frame 3: " in text and "B frame 1: " in text
    msg = chat_messages(parts)
    assert msg[0]["role"] == "user" and sum(c["type"] == "image" for c in msg[0]["content"]) == 6


def test_label_token_ids_variants():
    class Tok:
        table = {"A": [10], " A": [11], "B": [12], " B": [13, 14]}

        def encode(self, text, add_special_tokens=False):
            return self.table[text]

    assert label_token_ids(Tok()) == {"A": [10, 11], "B": [12]}
    Tok.table = {"A": [10], " A": [10], "B": [1, 2], " B": [3, 4]}
    with pytest.raises(ValueError, match="'B'"):
        label_token_ids(Tok())


# ------------------------------------------------------------------------------- the tiny Qwen2-VL
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    return save_tiny_rater(tmp_path_factory.mktemp("tiny-rater") / "qwen2vl", seed=0)


@pytest.fixture(scope="module")
def tiny_rater(tiny_folder) -> VLMRater:
    return VLMRater.from_config(JudgeConfig(model="tiny", image_size=56), tiny_folder)


def _direct_p_first(model, processor, pair: PairQuery, image_size: int) -> tuple[float, float, float]:
    """P(a better) recomputed here: one unbatched forward per order, the two label logits at the last
    position, softmax over those two, then (P(A|a,b) + 1 - P(A|b,a)) / 2."""
    id_a, id_b = processor.tokenizer.convert_tokens_to_ids(["A", "B"])
    probs = []
    for first, second in ((pair.media_a, pair.media_b), (pair.media_b, pair.media_a)):
        parts = build_parts(pair.prompt, pair.category, first, second, image_size)
        text = processor.apply_chat_template(chat_messages(parts), tokenize=False, add_generation_prompt=True)
        assert text.endswith("<|im_start|>assistant\n")
        inputs = processor(text=[text], images=images_of(parts), return_tensors="pt")
        with torch.no_grad():
            logits = model(**inputs).logits[0, -1]
        probs.append(torch.softmax(logits[[id_a, id_b]].double(), dim=0)[0].item())
    return (probs[0] + 1 - probs[1]) / 2, probs[0], probs[1]


def test_tiny_rater_matches_direct_forward(tiny_folder, tiny_rater):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(tiny_folder).eval()
    processor = AutoProcessor.from_pretrained(tiny_folder)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration" and type(processor).__name__ == "Qwen2VLProcessor"
    assert label_token_ids(processor.tokenizer) == {"A": [65], "B": [66]}  # explicit vocabulary: fixed ids
    pairs = [
        PairQuery("p0", "a red fox in the snow", "aesthetics", [_image(0)], [_image(1, 80, 40)]),
        PairQuery("p1", "three cups on a table", "composition", [_image(2, 40, 70)], [_image(3)]),
    ]
    judgements = tiny_rater.rate(pairs)
    for pair, j in zip(pairs, judgements):
        p, p_ab, p_ba = _direct_p_first(model, processor, pair, 56)
        assert j.pair_id == pair.pair_id
        assert j.p_ab == pytest.approx(p_ab, abs=1e-5) and j.p_ba == pytest.approx(p_ba, abs=1e-5)
        assert j.p_first == pytest.approx(p, abs=1e-5)
        assert j.position_consistency == pytest.approx(1 - abs(p_ab - (1 - p_ba)), abs=1e-5)
    assert abs(judgements[0].p_ab - judgements[1].p_ab) > 1e-3  # the images do move the answer

    # the same pair in the other order: complementary probabilities, same consistency
    a, b = pairs[0].media_a, pairs[0].media_b
    fwd, rev = tiny_rater.rate([PairQuery("ab", "a red fox in the snow", "aesthetics", a, b),
                                PairQuery("ba", "a red fox in the snow", "aesthetics", b, a)])
    assert fwd.p_first + rev.p_first == pytest.approx(1.0, abs=1e-6)
    assert (fwd.p_ab, fwd.p_ba) == (pytest.approx(rev.p_ba, abs=1e-6), pytest.approx(rev.p_ab, abs=1e-6))
    assert fwd.position_consistency == pytest.approx(rev.position_consistency, abs=1e-6)


def test_tiny_rater_is_deterministic_and_cached(tmp_path, tiny_folder):
    again = save_tiny_rater(tmp_path / "again", seed=0)
    from safetensors.torch import load_file

    w0, w1 = load_file(f"{tiny_folder}/model.safetensors"), load_file(f"{again}/model.safetensors")
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert open(f"{tiny_folder}/tokenizer.json").read() == open(f"{again}/tokenizer.json").read()
    cfg = JudgeConfig(model="tiny")
    path = rater_model_path(cfg, tmp_path / "cache")
    assert rater_model_path(cfg, tmp_path / "cache") == path  # built once
    assert rater_model_path(JudgeConfig(model="Qwen/Qwen2.5-VL-7B-Instruct"), tmp_path) == "Qwen/Qwen2.5-VL-7B-Instruct"


# ------------------------------------------------------------------------- the vllm backend's plumbing
class _Logprob:
    def __init__(self, logprob, decoded_token=None):
        self.logprob, self.decoded_token = logprob, decoded_token


def _fake_vllm(calls: dict, exact: bool, answers=None):
    """A stand-in `vllm` module recording what the backend builds (the engine needs a GPU).

    exact=True: a release with `SamplingParams.logprob_token_ids` (vllm-project/vllm#34539), whose
    result position holds exactly the requested ids plus the sampled token. exact=False: an older
    release whose SamplingParams has no such keyword (TypeError, as msgspec raises) and returns top-k."""
    if exact:
        class SamplingParams:
            def __init__(self, **kw):
                calls["params"] = kw
    else:
        class SamplingParams:  # the keywords of a release before logprob_token_ids
            def __init__(self, *, max_tokens=16, temperature=1.0, logprobs=None):
                calls["params"] = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs}

    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw

        def generate(self, requests, params, use_tqdm=True):
            calls["requests"] = requests
            outs = []
            for i, _ in enumerate(requests):
                top = answers[i % len(answers)]
                outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[top])]))
            return outs

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_backend_asks_for_exactly_the_label_ids(monkeypatch, tiny_folder):
    calls = {}
    # ids 65 = "A", 66 = "B" (the tiny rater's explicit vocabulary); 67 is the sampled token of the 2nd query.
    # With logprob_token_ids both labels are always there, whatever their rank (here far below any top-20).
    answers = [{65: _Logprob(ln(0.6)), 66: _Logprob(ln(0.2))}, {65: _Logprob(-40.0), 66: _Logprob(-38.0), 67: _Logprob(-0.01)}]
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, exact=True, answers=answers))
    cfg = JudgeConfig(backend="vllm", model="tiny", dtype="bfloat16", image_size=56, video_frames=3)
    rater = VLMRater.from_config(cfg, tiny_folder)
    assert rater.name == "vllm:tiny" and rater.backend.exact
    assert calls["params"] == {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": [65, 66]}  # no logprobs=k
    engine = calls["engine"]
    assert engine["model"] == tiny_folder and engine["dtype"] == "bfloat16"
    assert engine["limit_mm_per_prompt"] == {"image": 6}  # 2 x video_frames
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1)])])
    assert j.p_ab == pytest.approx(0.75) and j.p_ba == pytest.approx(1 / (1 + math.exp(2.0)), abs=1e-12)
    req = calls["requests"][0]
    assert req["prompt"].count("<|image_pad|>") == 2 and req["prompt"].endswith("<|im_start|>assistant\n")
    assert [im.size for im in req["multi_modal_data"]["image"]] == [(56, 42), (56, 42)]
    # an answer without a requested id is an engine fault, not a model that did not answer
    rater.backend.llm = _fake_vllm(calls, exact=True, answers=[{65: _Logprob(-0.1)}]).LLM()
    with pytest.raises(RuntimeError, match=r"label token ids \[66\]"):
        rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1)])])


def test_vllm_backend_falls_back_to_top_k_on_older_vllm(monkeypatch, tiny_folder):
    calls = {}
    answers = [{65: _Logprob(ln(0.6)), 66: _Logprob(ln(0.2)), 67: _Logprob(ln(0.1))}, {66: _Logprob(-0.1), 67: _Logprob(-3.0)}]
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, exact=False, answers=answers))
    rater = VLMRater.from_config(JudgeConfig(backend="vllm", model="tiny", image_size=56), tiny_folder)
    assert not rater.backend.exact
    assert calls["params"] == {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}
    assert calls["engine"]["max_logprobs"] == 20
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1)])])
    assert (j.p_ab, j.p_ba) == (pytest.approx(0.75), 0.0)  # A outside the top-k of the second order -> P(A) = 0
    assert j.p_first == pytest.approx(0.875) and j.position_consistency == pytest.approx(0.75)


def test_vllm_video_judge_image_limit_follows_video_frames(monkeypatch, tiny_folder):
    """An 8-frame video judge shows 16 images per query: the engine's limit is derived from the config."""
    calls = {}
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, exact=True, answers=[{65: _Logprob(-0.5), 66: _Logprob(-1.0)}]))
    rater = VLMRater.from_config(JudgeConfig(backend="vllm", model="tiny", image_size=56, video_frames=8), tiny_folder)
    assert calls["engine"]["limit_mm_per_prompt"] == {"image": 16}
    frames = lambda seed: [_image(seed + i, 32, 32) for i in range(8)]
    [j] = rater.rate([PairQuery("v", "a ball bouncing", "motion_quality", frames(0), frames(10))])
    assert len(calls["requests"][0]["multi_modal_data"]["image"]) == 16 and j.p_first == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"18 images.*limit_mm_per_prompt=\{'image': 16\}.*2 x judge.video_frames"):
        rater.rate([PairQuery("v", "a ball bouncing", "motion_quality", frames(0) + [_image(99)], frames(10) + [_image(98)])])


def test_vllm_backend_without_vllm_says_how_to_install(monkeypatch, tiny_folder):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(ImportError, match=r"\[gpu\]"):
        VLMRater.from_config(JudgeConfig(backend="vllm"), tiny_folder)


# ------------------------------------------------------------------------- the openai backend
def _completion(top: list[tuple[str, float]]) -> dict:
    first = {"token": top[0][0], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in top]}
    return {"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant", "content": top[0][0]}, "logprobs": {"content": [first]}, "finish_reason": "length"}]}


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}/v1"


def test_openai_backend_request_parse_and_retry(canned_server, monkeypatch):
    monkeypatch.setenv("VIPO_TEST_KEY", "sekret")
    canned_server.script = [
        (500, {"error": "warming up"}, 0),  # first attempt fails; retried after backoff
        (200, _completion([("A", ln(0.6)), (" A", ln(0.1)), ("B", ln(0.2)), ("C", ln(0.05))]), 0),
        (200, _completion([("B", ln(0.75)), ("A", ln(0.25))]), 0),
    ]
    cfg = JudgeConfig(backend="openai", model="qwen-vl", base_url=_url(canned_server), api_key_env="VIPO_TEST_KEY", max_retries=2, timeout_s=5, image_size=40)
    rater = VLMRater.from_config(cfg, cfg.model)
    rater.backend.concurrency = 1  # the script is answered in request order
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1, 30, 60)])])
    assert j.p_ab == pytest.approx(0.7 / 0.9, abs=1e-12) and j.p_ba == pytest.approx(0.25, abs=1e-12)
    assert j.p_first == pytest.approx((0.7 / 0.9 + 0.75) / 2, abs=1e-12)
    assert j.position_consistency == pytest.approx(1 - abs(0.7 / 0.9 - 0.75), abs=1e-12)
    assert rater.name == "openai:qwen-vl"

    seen = canned_server.seen
    assert len(seen) == 3 and seen[0]["body"] == seen[1]["body"]  # the 500 was retried with the same request
    req = seen[1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer sekret"
    body = req["body"]
    assert {k: body[k] for k in ("model", "max_tokens", "logprobs", "top_logprobs", "temperature")} == {
        "model": "qwen-vl", "max_tokens": 1, "logprobs": True, "top_logprobs": 20, "temperature": 0}
    # no /tokenize on this server (not vLLM): plain top-k, matched by token text
    assert "logprob_token_ids" not in body and "return_tokens_as_token_ids" not in body
    assert [t["prompt"] for t in canned_server.tokenized] == ["A"]  # asked once, gave up at the 404
    [msg] = body["messages"]
    urls = [c["image_url"]["url"] for c in msg["content"] if c["type"] == "image_url"]
    assert len(urls) == 2 and all(u.startswith("data:image/png;base64,") for u in urls)
    sizes = [Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))).size for u in urls]
    assert sizes == [(40, 30), (20, 40)]  # image A then image B, longest side 40
    texts = "".join(c["text"] for c in msg["content"] if c["type"] == "text")
    assert texts.startswith("Image A:") and texts.endswith(question("aesthetics", "a cat"))
    # the swapped order shows image b first
    urls_swapped = [c["image_url"]["url"] for c in seen[2]["body"]["messages"][0]["content"] if c["type"] == "image_url"]
    assert urls_swapped == urls[::-1]


def _completion_by_id(top: list[tuple[int, float]]) -> dict:
    """A vLLM chat completion with return_tokens_as_token_ids: tokens spelled token_id:<id>."""
    return _completion([(f"token_id:{i}", lp) for i, lp in top])


def test_openai_backend_asks_a_vllm_server_for_exactly_the_label_ids(canned_server):
    # the server's tokenizer: two single-token spellings per label ("A" / " A", "B" / " B")
    canned_server.vocab = {"A": [32], " A": [362], "B": [33], " B": [425]}
    canned_server.script = [
        (200, _completion_by_id([(32, ln(0.6)), (362, ln(0.1)), (33, ln(0.2)), (425, -9999.0)]), 0),  # vLLM clamps at -9999
        (200, _completion_by_id([(151645, -0.01), (32, -30.0), (362, -9999.0), (33, -29.0), (425, -9999.0)]), 0),
    ]
    cfg = JudgeConfig(backend="openai", model="qwen-vl", base_url=_url(canned_server), max_retries=0, image_size=40)
    rater = VLMRater.from_config(cfg, cfg.model)
    rater.backend.concurrency = 1
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1)])])
    assert [t["prompt"] for t in canned_server.tokenized] == ["A", " A", "B", " B"]  # once, not per request
    assert all(t == {"model": "qwen-vl", "prompt": t["prompt"], "add_special_tokens": False} for t in canned_server.tokenized)
    assert rater.backend.label_ids == {"A": [32, 362], "B": [33, 425]}
    for seen in canned_server.seen:
        body = seen["body"]
        assert body["logprob_token_ids"] == [32, 33, 362, 425] and body["return_tokens_as_token_ids"] is True
        assert body["logprobs"] is True  # vLLM requires logprobs=true with logprob_token_ids
    assert j.p_ab == pytest.approx(0.7 / 0.9, abs=1e-12)
    # the second answer's labels rank far below the sampled token: still read, by id
    assert j.p_ba == pytest.approx(1 / (1 + math.exp(1.0)), abs=1e-12)


def test_openai_backend_names_the_multimodal_limit(canned_server):
    limit = {"error": {"message": "At most 8 image(s) may be provided in one prompt. Set `--limit-mm-per-prompt` to "
                                  "increase this limit.", "type": "BadRequestError", "param": "image", "code": 400}}
    canned_server.script = [(400, limit, 0)]
    cfg = JudgeConfig(backend="openai", model="m", base_url=_url(canned_server), video_frames=8, max_retries=3)
    rater = VLMRater.from_config(cfg, cfg.model)
    rater.backend.concurrency = 1  # the first query's refusal ends the call
    frames = [_image(i, 32, 32) for i in range(8)]
    with pytest.raises(RaterRequestError, match=r"HTTP 400.*At most 8 image.*16 images per query.*--limit-mm-per-prompt "
                                                 r"'\{\"image\": 16\}'"):
        rater.rate([PairQuery("v", "a ball", "motion_quality", frames, frames)])
    assert len(canned_server.seen) == 1  # a 400: not retried


def test_openai_backend_errors(canned_server):
    backend = OpenAIBackend(_url(canned_server), "m", timeout_s=0.3, max_retries=0)
    parts = build_parts("p", "aesthetics", [_image(0)], [_image(1)], 32)
    canned_server.script = [(200, {}, 1.5)]
    t0 = time.monotonic()
    with pytest.raises(RaterRequestError, match=r"timed out after 0.3 s"):
        backend.label_logprobs([parts])
    assert time.monotonic() - t0 < 1.4
    canned_server.script = [(400, {"error": "bad model"}, 0)]
    with pytest.raises(RaterRequestError, match="HTTP 400.*bad model"):
        OpenAIBackend(_url(canned_server), "m", max_retries=3).label_logprobs([parts])  # 4xx: no retry
    assert len(canned_server.seen) == 2
    canned_server.script = [(200, {"choices": [{"message": {"content": "A"}}]}, 0)]
    with pytest.raises(RaterRequestError, match="logprobs"):
        backend.label_logprobs([parts])
    canned_server.script = [(503, {}, 0), (503, {}, 0)]
    with pytest.raises(RaterRequestError, match="after 2 attempts: HTTP 503"):
        OpenAIBackend(_url(canned_server), "m", max_retries=1, backoff_s=0.01).label_logprobs([parts])
    with pytest.raises(ValueError, match="base_url"):
        VLMRater.from_config(JudgeConfig(backend="openai"), "m")


# ------------------------------------------------------------------------------------ the judge stage
def test_judge_stage_process(tmp_path, tiny_folder):
    rng = np.random.default_rng(7)
    files = {
        "media/image/aa/w.jpg": encode_image(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)),
        "media/image/aa/l.jpg": encode_image(rng.integers(0, 256, (56, 40, 3), dtype=np.uint8)),
        "media/video/bb/w.mp4": encode_video(rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8), fps=8),
        "media/video/bb/l.mp4": encode_video(rng.integers(0, 256, (5, 32, 48, 3), dtype=np.uint8), fps=8),
    }
    for rel, data in files.items():
        write_bytes(tmp_path / rel, data)
    cfg = JudgeConfig(model="tiny", image_size=56, video_frames=3)
    stage = JudgeStage(resources=ResourceConfig(batch_size=2), cfg=cfg, model_path=tiny_folder, media_root=str(tmp_path))
    stage = pickle.loads(pickle.dumps(stage))  # what Ray ships to the actor
    stage.setup()
    image_tasks = [{"id": "0123456789abcdef", "prompt": "a cat", "category": "aesthetics", "modality": "image",
                    "winner_path": "media/image/aa/w.jpg", "loser_path": "media/image/aa/l.jpg"}]
    video_tasks = [{"id": "fedcba9876543210", "prompt": "a ball bouncing", "category": "motion_quality", "modality": "video",
                    "winner_path": "media/video/bb/w.mp4", "loser_path": "media/video/bb/l.mp4"}]
    for tasks in (image_tasks, video_tasks):
        table = stage.process(json.loads(json.dumps(tasks)))
        assert table.schema.equals(JUDGEMENTS)
        row = table.to_pylist()[0]
        assert row["pair_id"] == tasks[0]["id"] and row["rater"] == "transformers:tiny"
        assert row["category"] == tasks[0]["category"] and row["reason"] is None  # judged: no failure reason
        p, first, second, c = row["p_winner"], row["p_winner_first"], row["p_winner_second"], row["position_consistency"]
        assert 0 <= p <= 1 and p == pytest.approx((first + second) / 2, abs=1e-6)
        assert c == pytest.approx(1 - abs(first - second), abs=1e-6)
    # the winner is shown first: p_winner is P(winner better) as the rater itself reports it
    from pipeline.media import decode_image

    img = lambda rel: decode_image((tmp_path / rel).read_bytes())
    [j] = stage.rater.rate([PairQuery("x", "a cat", "aesthetics", [img("media/image/aa/w.jpg")], [img("media/image/aa/l.jpg")])])
    assert stage.process(image_tasks).column("p_winner")[0].as_py() == pytest.approx(j.p_first, abs=1e-6)
    assert stage.stats.failed == {} and stage.stats.n_in == stage.stats.n_out == 3  # three pairs, each judged


def test_judge_keeps():
    table = pa.table(
        {"pair_id": ["a", "b", "c", "d", "e", "f", "g"], "category": ["aesthetics"] * 7, "rater": ["r"] * 7,
         "p_winner": [0.9, 0.55, 0.8, 0.6, None, None, 0.9], "p_winner_first": [0.9, 0.5, 0.95, 0.6, None, None, 0.9],
         "p_winner_second": [0.9, 0.6, 0.65, 0.6, None, None, 0.9], "position_consistency": [1.0, 0.9, 0.3, 0.5, None, None, 1.0],
         "reason": [None, None, None, None, None, "vlm_no_label", "corrupt_media"]},
        schema=JUDGEMENTS,
    )
    out = judge_keeps(table, JudgeConfig(min_probability=0.6, min_position_consistency=0.5))
    assert out.schema.equals(JUDGE_KEEPS)
    assert out.to_pylist() == [
        {"pair_id": "a", "kept": True, "drop_reason": None},
        {"pair_id": "b", "kept": False, "drop_reason": DROP_DISAGREES},
        {"pair_id": "c", "kept": False, "drop_reason": DROP_POSITION_INCONSISTENT},
        {"pair_id": "d", "kept": True, "drop_reason": None},  # thresholds are inclusive (float32 0.6 >= 0.6)
        {"pair_id": "e", "kept": False, "drop_reason": DROP_DISAGREES},  # no probability, no reason
        {"pair_id": "f", "kept": False, "drop_reason": "vlm_no_label"},  # the rater gave no answer: its reason
        {"pair_id": "g", "kept": False, "drop_reason": "corrupt_media"},  # a reason wins over any probability
    ]
    assert judge_keeps(table.slice(0, 0), JudgeConfig()).num_rows == 0


def test_openai_backend_caps_the_response_body(canned_server, monkeypatch):
    """A server (or something pretending to be one) that answers with a huge body is refused after the cap,
    never read whole."""
    from reward_models.vlm import openai_backend

    monkeypatch.setattr(openai_backend, "MAX_RESPONSE_BYTES", 4096)
    parts = build_parts("p", "aesthetics", [_image(0)], [_image(1)], 32)
    canned_server.script = [(200, {"pad": "x" * 10_000}, 0)]
    backend = OpenAIBackend(_url(canned_server), "m", max_retries=0)
    with pytest.raises(RaterRequestError, match=r"^openai backend: POST .*/chat/completions: response larger than 4,096 bytes$"):
        backend.label_logprobs([parts])
