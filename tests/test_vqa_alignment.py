"""VQAScore alignment from the VLM rater: P("Yes") of the first answer token to t2v_metrics' question.

The maths on hand numbers; the tiny Qwen2-VL rater (with "Yes" / "No" single tokens) through
save_pretrained -> from_pretrained checked against a plain forward pass done here, for an image, a
3-frame video and a left-padded batch; the openai backend against a canned local server (request
body, by-id and by-text parsing, an answer with neither label returned as its error); the vllm
backend against a stand-in engine (SamplingParams per labels, parse, top-k fallback)."""
from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from PIL import Image

from reward_models.vlm.openai_backend import OpenAIBackend
from reward_models.vlm.prompting import images_of, resize_longest
from reward_models.vlm.transformers_backend import TransformersBackend
from reward_models.vlm_rater import (
    ALIGNMENT_LABELS,
    ALIGNMENT_QUESTION,
    AlignmentQuery,
    PairQuery,
    RaterAnswerError,
    VLMRater,
    alignment_parts,
    label_logprobs_from_ids,
    label_logprobs_from_top,
    label_token_ids,
    save_tiny_rater,
    yes_probability,
)
from schemas.config import JudgeConfig

ln = math.log
# t2v_metrics/models/vqascore_models/clip_t5_model.py: default_question_template, default_answer_template
T2V_METRICS_QUESTION = 'Does this figure show "{}"? Please answer yes or no.'


def _image(seed: int, w: int = 64, h: int = 48) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


# ---------------------------------------------------------------------------------------- the maths
def test_yes_probability_is_full_vocabulary_p_yes():
    assert yes_probability(ln(0.3), ln(0.6)) == pytest.approx(0.3, abs=1e-15)  # not 0.3 / 0.9: no renormalising
    assert yes_probability(ln(0.3), ln(0.01)) == pytest.approx(0.3, abs=1e-15)  # "No" does not enter the score
    assert yes_probability(-0.5, -math.inf) == pytest.approx(math.exp(-0.5), abs=1e-15)
    assert yes_probability(-math.inf, -0.1) == 0.0  # "Yes" below the top k, "No" there: P(Yes) = 0
    assert yes_probability(0.0, -math.inf) == 1.0
    with pytest.raises(RaterAnswerError, match="'Yes'.*'No'"):
        yes_probability(-math.inf, -math.inf)
    with pytest.raises(ValueError, match="NaN"):
        yes_probability(math.nan, -1.0)
    with pytest.raises(ValueError, match="not a log-probability"):
        yes_probability(0.5, -1.0)


def test_label_helpers_take_any_labels():
    top = {"Yes": ln(0.5), " Yes": ln(0.1), "yes": ln(0.2), "No": ln(0.05), "A": ln(0.01)}
    ly, ln_ = label_logprobs_from_top(top, ALIGNMENT_LABELS)
    assert ly == pytest.approx(ln(0.6), abs=1e-12) and ln_ == pytest.approx(ln(0.05), abs=1e-12)  # "yes" is not "Yes"
    assert yes_probability(ly, ln_) == pytest.approx(0.6, abs=1e-12)
    assert label_logprobs_from_top([("X", -0.1)], ALIGNMENT_LABELS) == (-math.inf, -math.inf)
    three = label_logprobs_from_top(top, ("No", "A", "Maybe"))
    assert three[:2] == (pytest.approx(ln(0.05)), pytest.approx(ln(0.01))) and three[2] == -math.inf
    assert label_logprobs_from_top(top) == (pytest.approx(ln(0.01)), -math.inf)  # the pairwise default: (lA, lB)
    by_id = {7: ln(0.4), 8: ln(0.2), 9: ln(0.1)}
    got = label_logprobs_from_ids(by_id, {"Yes": [7, 8], "No": [9, 10]}, ALIGNMENT_LABELS)
    assert got == (pytest.approx(ln(0.6), abs=1e-12), pytest.approx(ln(0.1), abs=1e-12))
    assert label_logprobs_from_ids(by_id, {"A": [7], "B": [11]}) == (pytest.approx(ln(0.4)), -math.inf)

    class Tok:
        table = {"Yes": [10], " Yes": [11], "No": [12], " No": [13, 14], "A": [20], " A": [21], "B": [10], " B": [22]}

        def encode(self, text, add_special_tokens=False):
            return self.table[text]

    assert label_token_ids(Tok(), ALIGNMENT_LABELS) == {"Yes": [10, 11], "No": [12]}
    with pytest.raises(ValueError, match=r"share token ids \[10\]"):  # "B" and "Yes", not shared by all three
        label_token_ids(Tok(), ("Yes", "A", "B"))


# ------------------------------------------------------------------------------------------ prompting
def test_question_and_layout():
    assert ALIGNMENT_QUESTION == T2V_METRICS_QUESTION and ALIGNMENT_LABELS == ("Yes", "No")
    parts = alignment_parts("a red fox", [_image(0, 100, 50)], image_size=56)
    assert [k for k, _ in parts] == ["image", "text"]  # the image, then the question (t2v_metrics' Qwen2-VL order)
    assert images_of(parts)[0].size == (56, 28)
    assert parts[-1][1] == 'Does this figure show "a red fox"? Please answer yes or no.'
    parts = alignment_parts("a ball", [_image(i) for i in range(3)], image_size=32)
    assert len(images_of(parts)) == 3
    text = "".join(v for k, v in parts if k == "text")
    assert text == ('Video (3 frames, in order):\nframe 1: \nframe 2: \nframe 3: \n'
                    'Does this figure show "a ball"? Please answer yes or no.')
    assert "A" not in text.replace("answer", "")  # no candidate letter
    with pytest.raises(ValueError, match="no media"):
        alignment_parts("x", [], 32)


def test_rater_alignment_each_one_call_and_errors_as_values():
    class Canned:
        def __init__(self, answers):
            self.answers, self.calls = answers, []

        def label_logprobs(self, queries, labels=("A", "B")):
            self.calls.append((len(queries), tuple(labels)))
            return self.answers[: len(queries)]

    backend = Canned([(ln(0.25), ln(0.5)), (-math.inf, -math.inf), (math.nan, -1.0), (-math.inf, -0.2)])
    rater = VLMRater(backend, name="canned:x", image_size=32)
    items = [AlignmentQuery(f"i{k}", f"prompt {k}", [_image(k)]) for k in range(4)]
    out = rater.alignment_each(items)
    assert backend.calls == [(4, ALIGNMENT_LABELS)]  # one backend call, one query per item (no swap)
    assert out[0] == pytest.approx(0.25, abs=1e-15) and out[3] == 0.0
    assert isinstance(out[1], RaterAnswerError) and "item i1" in str(out[1])
    assert type(out[2]) is ValueError and "item i2" in str(out[2])
    with pytest.raises(RaterAnswerError, match="item i1"):
        rater.alignment(items)
    assert rater.alignment(items[:1]) == [pytest.approx(0.25)]
    assert rater.alignment_each([]) == [] and len(backend.calls) == 3
    backend.answers = []
    with pytest.raises(RuntimeError, match="answered 0 of 1"):
        rater.alignment_each(items[:1])


# ------------------------------------------------------------------------------- the tiny Qwen2-VL
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> str:
    return save_tiny_rater(tmp_path_factory.mktemp("tiny-rater") / "qwen2vl-yes-no", seed=0, words=ALIGNMENT_LABELS)


@pytest.fixture(scope="module")
def tiny_direct(tiny_folder):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    return AutoModelForImageTextToText.from_pretrained(tiny_folder).eval(), AutoProcessor.from_pretrained(tiny_folder)


def _messages(prompt: str, n_frames: int) -> list[dict]:
    """The user turn written out by hand: one image then the question, or labelled frames then the question."""
    q = {"type": "text", "text": f'Does this figure show "{prompt}"? Please answer yes or no.'}
    if n_frames == 1:
        return [{"role": "user", "content": [{"type": "image"}, q]}]
    content: list[dict] = []
    for i in range(1, n_frames + 1):
        content += [{"type": "text", "text": ("Video (%d frames, in order):\n" % n_frames if i == 1 else "\n") + f"frame {i}: "},
                    {"type": "image"}]
    content.append({"type": "text", "text": "\n" + q["text"]})
    return [{"role": "user", "content": content}]


def _direct_p_yes(model, processor, prompt: str, media: list[Image.Image], image_size: int) -> tuple[float, str]:
    """P("Yes") recomputed here: one unbatched forward, log-softmax over the whole vocabulary at the
    last position, logsumexp over the token ids of "Yes" and " Yes", exp."""
    tok = processor.tokenizer
    yes_ids = [tok.convert_tokens_to_ids(t) for t in ("Yes", "\u0120Yes")]  # \u0120: byte-level BPE's space
    assert [tok.encode(t, add_special_tokens=False) for t in ("Yes", " Yes")] == [[i] for i in yes_ids]
    text = processor.apply_chat_template(_messages(prompt, len(media)), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], images=[resize_longest(m, image_size) for m in media], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1].double()
    logp = torch.log_softmax(logits, dim=-1)
    return torch.logsumexp(logp[yes_ids], dim=0).exp().item(), text


def test_tiny_alignment_matches_direct_forward(tiny_folder, tiny_direct):
    model, processor = tiny_direct
    rater = VLMRater.from_config(JudgeConfig(model="tiny", image_size=56), tiny_folder)
    assert label_token_ids(processor.tokenizer, ALIGNMENT_LABELS) == {"Yes": [257, 258], "No": [259, 260]}
    assert label_token_ids(processor.tokenizer) == {"A": [65], "B": [66]}  # the pairwise labels keep their ids
    image = AlignmentQuery("img", "a red fox in the snow", [_image(0)])
    video = AlignmentQuery("vid", "a ball bouncing", [_image(10 + i, 40, 40) for i in range(3)])
    got = rater.alignment_each([image, video])
    for item, p in zip((image, video), got):
        want, text = _direct_p_yes(model, processor, item.prompt, item.media, 56)
        assert p == pytest.approx(want, abs=1e-6, rel=1e-5)
        assert 1e-4 < p < 1  # a real probability of this toy vocabulary, not an underflow
        # the question in the chat template is exactly t2v_metrics' template with the prompt inserted
        assert rater.backend.prompt_text(rater.alignment_query(item)) == text
        assert text.endswith(T2V_METRICS_QUESTION.format(item.prompt) + "<|im_end|>\n<|im_start|>assistant\n")
    assert text.count("<|image_pad|>") == 3
    assert rater.backend.prompt_text(rater.alignment_query(image)) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        '<|vision_start|><|image_pad|><|vision_end|>Does this figure show "a red fox in the snow"? '
        "Please answer yes or no.<|im_end|>\n<|im_start|>assistant\n"
    )
    # the pairwise rater on the same backend still reads "A" / "B"
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(1)], [_image(2)])])
    assert 0 < j.p_first < 1


def test_tiny_alignment_batch_equals_one_by_one(tiny_folder):
    backend = TransformersBackend(tiny_folder, batch_size=8)
    rater = VLMRater(backend, name="transformers:tiny", image_size=56)
    items = [
        AlignmentQuery("short", "cat", [_image(0)]),
        AlignmentQuery("long", "a very long prompt about three red cups on a wooden table in the morning light", [_image(1, 80, 40)]),
        AlignmentQuery("video", "a ball", [_image(20 + i, 40, 40) for i in range(3)]),
        AlignmentQuery("tall", "two dogs", [_image(3, 30, 60)]),
    ]
    batch = backend.inputs([rater.alignment_query(it) for it in items])
    mask = batch["attention_mask"]
    assert mask.shape[0] == 4 and (mask[:, 0] == 0).any() and bool((mask[:, -1] == 1).all())  # left padding
    together = rater.alignment(items)
    alone = [rater.alignment([it])[0] for it in items]
    assert together == pytest.approx(alone, abs=1e-5, rel=1e-4)
    assert max(together) - min(together) > 1e-4  # prompts and images do move the answer


def test_tiny_default_rater_cannot_answer_yes(tmp_path):
    """The default tiny vocabulary has no single "Yes" token: a config error, raised (not a per-item value)."""
    rater = VLMRater.from_config(JudgeConfig(model="tiny", image_size=56), save_tiny_rater(tmp_path / "plain", seed=0))
    with pytest.raises(ValueError, match="no single token for the answer label 'Yes'"):
        rater.alignment_each([AlignmentQuery("i", "a cat", [_image(0)])])


# ------------------------------------------------------------------------------------ the vllm backend
class _Logprob:
    def __init__(self, logprob):
        self.logprob = logprob


def _fake_vllm(calls: dict, exact: bool, answers):
    """A stand-in `vllm` module (see tests/test_vlm_rater.py::_fake_vllm) that also records every
    SamplingParams built and the params each generate call got."""
    calls.setdefault("built", [])
    if exact:
        class SamplingParams:
            def __init__(self, **kw):
                self.kw = kw
                calls["built"].append(kw)
    else:
        class SamplingParams:
            def __init__(self, *, max_tokens=16, temperature=1.0, logprobs=None):
                self.kw = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs}
                calls["built"].append(self.kw)

    class LLM:
        def __init__(self, **kw):
            calls["engine"] = kw

        def generate(self, requests, params, use_tqdm=True):
            calls.setdefault("generate", []).append((requests, params.kw))
            top = answers()
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(logprobs=[top[i % len(top)]])]) for i in range(len(requests))]

    return types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams)


def test_vllm_backend_asks_for_the_yes_no_ids(monkeypatch, tiny_folder):
    calls, answers = {}, []
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, exact=True, answers=lambda: answers))
    rater = VLMRater.from_config(JudgeConfig(backend="vllm", model="tiny", image_size=56, video_frames=3), tiny_folder)
    assert calls["built"] == [{"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": [65, 66]}]  # the pairwise params
    # 257 = "Yes", 258 = " Yes", 259 = "No", 260 = " No"; 11 the sampled token
    answers[:] = [{257: _Logprob(ln(0.5)), 258: _Logprob(ln(0.1)), 259: _Logprob(ln(0.2)), 260: _Logprob(-9999.0), 11: _Logprob(-0.5)},
                  {257: _Logprob(-40.0), 258: _Logprob(-9999.0), 259: _Logprob(-0.01), 260: _Logprob(-9999.0)}]
    items = [AlignmentQuery("a", "a cat", [_image(0)]), AlignmentQuery("b", "a ball", [_image(i, 32, 32) for i in range(3)])]
    got = rater.alignment(items)
    assert got == [pytest.approx(0.6, abs=1e-12), pytest.approx(math.exp(-40.0), rel=1e-12)]
    assert calls["built"][1:] == [{"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": [257, 258, 259, 260]}]
    requests, params = calls["generate"][-1]
    assert params == calls["built"][1] and len(requests) == 2  # one query per item, one generate call
    assert requests[0]["prompt"].endswith('Does this figure show "a cat"? Please answer yes or no.<|im_end|>\n<|im_start|>assistant\n')
    assert len(requests[1]["multi_modal_data"]["image"]) == 3
    rater.alignment(items)
    assert len(calls["built"]) == 2  # the Yes/No params are cached
    answers[:] = [{65: _Logprob(ln(0.6)), 66: _Logprob(ln(0.2))}]
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1)])])
    assert calls["generate"][-1][1] == {"max_tokens": 1, "temperature": 0.0, "logprob_token_ids": [65, 66]}
    assert j.p_ab == pytest.approx(0.75) and len(calls["built"]) == 2
    # an exact answer without a requested id is an engine fault: raised
    answers[:] = [{257: _Logprob(-0.1), 259: _Logprob(-3.0)}]
    with pytest.raises(RuntimeError, match=r"label token ids \[258, 260\]"):
        rater.alignment_each(items[:1])


def test_vllm_backend_top_k_fallback(monkeypatch, tiny_folder):
    calls, answers = {}, []
    monkeypatch.setitem(sys.modules, "vllm", _fake_vllm(calls, exact=False, answers=lambda: answers))
    rater = VLMRater.from_config(JudgeConfig(backend="vllm", model="tiny", image_size=56), tiny_folder)
    answers[:] = [{257: _Logprob(ln(0.3)), 11: _Logprob(ln(0.5))}, {259: _Logprob(-0.1)}, {11: _Logprob(-0.1), 12: _Logprob(-3.0)}]
    items = [AlignmentQuery(f"i{k}", "a cat", [_image(k)]) for k in range(3)]
    p0, p1, p2 = rater.alignment_each(items)
    assert calls["built"][-1] == {"max_tokens": 1, "temperature": 0.0, "logprobs": 20}
    assert p0 == pytest.approx(0.3, abs=1e-12) and p1 == 0.0  # "Yes" outside the top k, "No" inside: 0
    assert isinstance(p2, RaterAnswerError) and "item i2" in str(p2)  # neither: the item's error, returned


# ---------------------------------------------------------------------------------- the openai backend
def _completion(top: list[tuple[str, float]]) -> dict:
    first = {"token": top[0][0], "logprob": top[0][1], "top_logprobs": [{"token": t, "logprob": lp} for t, lp in top]}
    return {"choices": [{"index": 0, "logprobs": {"content": [first]}, "finish_reason": "length"}]}


def _asked(srv) -> list[str]:
    """The texts the canned server was asked to tokenize, in order."""
    return [body["prompt"] for body in srv.tokenized]


def _bodies(srv) -> list[dict]:
    """The chat-completion request bodies the canned server received, in order."""
    return [seen["body"] for seen in srv.seen]


def _rater(srv) -> VLMRater:
    cfg = JudgeConfig(backend="openai", model="qwen-vl", base_url=f"http://127.0.0.1:{srv.server_address[1]}/v1",
                      max_retries=0, image_size=40)
    rater = VLMRater.from_config(cfg, cfg.model)
    rater.backend.concurrency = 1  # the script is answered in request order
    return rater


def test_openai_backend_asks_a_vllm_server_for_the_yes_no_ids(canned_server):
    canned_server.vocab = {"Yes": [9454], " Yes": [7414], "No": [2753], " No": [2308], "A": [32], " A": [362], "B": [33], " B": [425]}
    by_id = lambda top: _completion([(f"token_id:{i}", lp) for i, lp in top])
    canned_server.script = [
        (200, by_id([(9454, ln(0.5)), (7414, ln(0.1)), (2753, ln(0.3)), (2308, -9999.0)]), 0),
        (200, by_id([(151645, -0.01)]), 0),  # neither label in the answer
        (200, by_id([(32, ln(0.6)), (362, -9999.0), (33, ln(0.2)), (425, -9999.0)]), 0),
        (200, by_id([(33, ln(0.5)), (32, ln(0.5))]), 0),
    ]
    rater = _rater(canned_server)
    items = [AlignmentQuery("a", "a cat", [_image(0)]), AlignmentQuery("b", "a dog", [_image(1)])]
    p, err = rater.alignment_each(items)
    assert p == pytest.approx(0.6, abs=1e-12)
    assert isinstance(err, RaterAnswerError) and "item b" in str(err)  # returned, not raised
    assert _asked(canned_server) == ["Yes", " Yes", "No", " No"]  # once, before the requests
    for body in _bodies(canned_server):
        assert body["logprob_token_ids"] == [2308, 2753, 7414, 9454] and body["return_tokens_as_token_ids"] is True
        assert {k: body[k] for k in ("model", "max_tokens", "logprobs", "temperature")} == {
            "model": "qwen-vl", "max_tokens": 1, "logprobs": True, "temperature": 0}
    [msg] = _bodies(canned_server)[0]["messages"]
    assert [c["type"] for c in msg["content"]] == ["image_url", "text"]
    assert msg["content"][1]["text"] == T2V_METRICS_QUESTION.format("a cat")
    # the pairwise labels are resolved on their own, and their requests ask for their own ids
    [j] = rater.rate([PairQuery("p", "a cat", "aesthetics", [_image(0)], [_image(1)])])
    assert _asked(canned_server)[4:] == ["A", " A", "B", " B"]
    assert _bodies(canned_server)[-1]["logprob_token_ids"] == [32, 33, 362, 425]
    assert j.p_ab == pytest.approx(0.75, abs=1e-12) and j.p_ba == pytest.approx(0.5, abs=1e-12)
    assert rater.backend.label_ids == {"A": [32, 362], "B": [33, 425]}
    canned_server.script = [(200, by_id([(9454, ln(0.25))]), 0)]
    assert rater.alignment(items[:1]) == [pytest.approx(0.25, abs=1e-12)]
    assert len(_asked(canned_server)) == 8  # cached per labels


def test_openai_backend_without_tokenize_matches_by_text(canned_server):
    canned_server.script = [
        (200, _completion([("Yes", ln(0.5)), (" Yes", ln(0.2)), ("yes", ln(0.1)), ("No", ln(0.1))]), 0),
        (200, _completion([("Maybe", -0.1), ("I", -2.5)]), 0),  # neither label among the top k
        (200, _completion([("No", -0.05), ("Maybe", -3.0)]), 0),
    ]
    rater = _rater(canned_server)
    items = [AlignmentQuery(f"i{k}", "a cat", [_image(k)]) for k in range(3)]
    p0, p1, p2 = rater.alignment_each(items)
    assert p0 == pytest.approx(0.7, abs=1e-12) and p2 == 0.0
    assert isinstance(p1, RaterAnswerError) and "item i1" in str(p1)
    assert _asked(canned_server) == ["Yes"]  # a 404: no /tokenize here, top-k from now on
    assert all("logprob_token_ids" not in body and body["top_logprobs"] == 20 for body in _bodies(canned_server))
    backend = rater.backend
    assert isinstance(backend, OpenAIBackend) and backend.resolve_label_ids() is None
    assert _asked(canned_server) == ["Yes"]  # not asked again, for any labels
