"""The annotation server of the human study, end to end: the real server in a subprocess (so it can be
SIGKILLed), a real headless Chromium driven through chromedriver (tests/webdriver.py), hostile requests, and a kill mid-vote.

What matters: every acknowledged vote is on disk, a refused request writes nothing, a reload resumes
at the first unvoted pair, and the sequence an annotator sees is a pure function of (study, annotator).
"""
from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from hashlib import sha256
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.media import encode_image, encode_video
from pipeline.study.votes import StudyError, VoteLog, load_study, preferred_side, sequence
from schemas.categories import IMAGE_CATEGORIES
from schemas.study import MAX_BODY_BYTES, PAIRS_FILE, STUDY_FILE, VOTE_FIELDS, pairs_schema

REPO = Path(__file__).resolve().parents[1]
CHROMEDRIVER = "/usr/bin/chromedriver"
RATERS = ["pickscore", "hpsv21", "unanimous"]
N_PAIRS = 16  # + round(0.1 * 16) = 2 repeats: 18 positions
VIDEO_AT = ("alice", 2)  # the pair alice sees at position 2 is a video


# ---------------------------------------------------------------- a study folder
def _pair_id(i: int) -> str:
    return sha256(f"pair-{i}".encode()).hexdigest()[:16]


def _image(rng: np.random.Generator, i: int) -> np.ndarray:
    """A gradient in a colour of its own plus noise: a screenshot of two of them has many colours."""
    y, x = np.mgrid[0:64, 0:64]
    base = np.stack([x * 4, y * 4, np.full_like(x, (i * 37) % 256)], axis=-1)
    return np.clip(base + rng.integers(-30, 30, (64, 64, 3)), 0, 255).astype(np.uint8)


def _video(rng: np.random.Generator) -> bytes:
    frames = np.zeros((8, 64, 64, 3), np.uint8)
    for t in range(8):
        frames[t, 20:40, t * 6:t * 6 + 16] = (240, 200, 40)
        frames[t] += rng.integers(0, 40, (64, 64, 3), dtype=np.uint8)
    return encode_video(frames, fps=8)


def _write_pairs(folder: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=pairs_schema(RATERS)), folder / PAIRS_FILE)


def make_study(folder: Path, n: int = N_PAIRS, media: bool = True, repeat_share: float = 0.1) -> Path:
    """A study folder as the sampler writes it: study.json, pairs.parquet, media/<pair_id>_<side>.jpg."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"version": 1, "source": "/data/build", "kind": "build", "created": "2025-01-01T00:00:00Z", "seed": 0,
            "repeat_share": repeat_share, "raters": RATERS, "pairs": n}
    (folder / STUDY_FILE).write_text(json.dumps(meta))
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pid = _pair_id(i)
        rows.append({"pair_id": pid, "category": IMAGE_CATEGORIES[i % len(IMAGE_CATEGORIES)], "modality": "image",
                     "prompt": f"<b>pair {i}</b> & a \"quoted\" <script>alert(1)</script> prompt",
                     "media_a": f"media/{pid}_a.jpg", "media_b": f"media/{pid}_b.jpg", "source_id": f"p{i}",
                     "vote_pickscore": 1, "vote_hpsv21": -1, "vote_unanimous": None})
        if media:
            (folder / "media").mkdir(exist_ok=True)
            for side in "ab":
                (folder / rows[-1][f"media_{side}"]).write_bytes(encode_image(_image(rng, 2 * i + (side == "b"))))
    _write_pairs(folder, rows)
    if media:  # the pair at VIDEO_AT becomes a video: the order depends on pair ids only, not on modality
        pid = sequence(load_study(folder), VIDEO_AT[0])[VIDEO_AT[1]][0]
        row = next(r for r in rows if r["pair_id"] == pid)
        row.update(category="motion_quality", modality="video", media_a=f"media/{pid}_a.mp4", media_b=f"media/{pid}_b.mp4")
        for side in "ab":
            (folder / row[f"media_{side}"]).write_bytes(_video(rng))
        _write_pairs(folder, rows)
    return folder


# ---------------------------------------------------------------- the server in a subprocess
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`serve(folder, port)` in its own process, started and waited for; `kill()` is a SIGKILL."""

    def __init__(self, folder: Path, log: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        code = f"from pipeline.study.server import serve; serve({str(folder)!r}, port={self.port})"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self._log = open(log, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=self._log, stderr=self._log)
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"the server did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()


def request(url: str, body: object = None, *, raw: bytes | None = None, headers: dict | None = None,
            method: str | None = None) -> tuple[int, dict, dict]:
    """(status, JSON body, headers) of one request; a JSON body is sent as application/json."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    hdrs = {"Content-Type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, headers={**hdrs, **(headers or {})}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            payload = r.read()
            status, resp_headers = r.status, dict(r.headers)
    except urllib.error.HTTPError as e:
        payload, status, resp_headers = e.read(), e.code, dict(e.headers)
    ctype = resp_headers.get("content-type", "")
    return status, (json.loads(payload) if ctype.startswith("application/json") else {"_bytes": payload}), resp_headers


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return make_study(tmp_path_factory.mktemp("study") / "s")


@pytest.fixture(scope="module")
def server(study, tmp_path_factory):
    srv = Server(study, tmp_path_factory.mktemp("log") / "server.log")
    yield srv
    srv.kill()


def _votes_snapshot(folder: Path) -> dict[str, bytes]:
    votes = folder / "votes"
    return {p.name: p.read_bytes() for p in sorted(votes.iterdir())} if votes.is_dir() else {}


# ---------------------------------------------------------------- the page in a real browser
def _driver(tmp: Path):
    if not Path(CHROMEDRIVER).exists() or shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium/chromedriver is not installed (.ci/run installs it)")
        pytest.skip("chromium/chromedriver is not installed")
    from tests.webdriver import Browser, chromium_args

    return Browser(CHROMEDRIVER, shutil.which("chromium"), chromium_args(tmp))


def _wait(driver, what: str, cond, timeout: float = 20):
    from tests.webdriver import wait

    return wait(driver, what, cond, timeout)


def _page(driver) -> dict:
    return driver.execute_script(
        "const t = document.getElementById('task');"
        "return {state: document.body.dataset.state, seq: t.dataset.seq, pair: t.dataset.pairId,"
        " progress: document.getElementById('progress').textContent, error: document.getElementById('error').textContent,"
        " left: (document.querySelector('#left img, #left video') || {}).src || null};")


KEY_OF = {"left": "ARROW_LEFT", "right": "ARROW_RIGHT", "tie": "ARROW_DOWN", "skip": "ARROW_UP"}  # tests.webdriver keys


def _annotate(driver, base: str, annotator: str, choices: list[str], seq: list) -> None:
    """Log in, check each shown pair is the sequence's, vote by arrow key, wait for the next pair."""
    from tests import webdriver as keys

    driver.get(base + "/")
    _wait(driver, "login form", lambda d: _page(d)["state"] == "login")
    driver.find_css("#annotator").send_keys(annotator, keys.ENTER)
    for i, choice in enumerate(choices):
        _wait(driver, f"{annotator} item {i}", lambda d, i=i: (p := _page(d))["state"] == "ready" and p["seq"] == str(i))
        page = _page(driver)
        assert page["pair"] == seq[i][0] and page["left"].endswith(f"/media/{seq[i][0]}/{seq[i][2]}"), page
        assert page["progress"] == f"{i} / {len(seq)}"
        if (annotator, i) == VIDEO_AT:  # the video plays (H.264 in this Chromium), left and right
            _wait(driver, "video decoded", lambda d: d.execute_script(
                "const v = [...document.querySelectorAll('video')];"
                "return v.length === 2 && v.every(x => x.error === null && x.readyState >= 2);"))
        driver.find_css("body").send_keys(getattr(keys, KEY_OF[choice]))
    _wait(driver, f"{annotator} after the last vote",
          lambda d: (p := _page(d))["state"] in ("ready", "done") and p["progress"] == f"{len(choices)} / {len(seq)}")


def _assert_log(folder: Path, annotator: str, choices: list[str]) -> None:
    """votes/<annotator>.jsonl holds exactly the votes sent, in order, each consistent with its sequence."""
    seq = sequence(load_study(folder), annotator)
    lines = (folder / "votes" / f"{annotator}.jsonl").read_bytes().splitlines(keepends=True)
    votes = [json.loads(line) for line in lines]
    assert all(line.endswith(b"\n") for line in lines) and len(votes) == len(choices)
    for i, (vote, choice) in enumerate(zip(votes, choices)):
        assert tuple(vote) == VOTE_FIELDS
        pid, repeat, left = seq[i]
        assert (vote["annotator"], vote["seq"], vote["pair_id"], vote["repeat"], vote["left"], vote["choice"]) == (
            annotator, i, pid, repeat, left, choice)
        assert vote["preferred"] == preferred_side(choice, left)
        assert isinstance(vote["ms"], int) and 0 <= vote["ms"] < 600_000 and vote["time"].endswith("Z")


def test_browser_votes_by_keyboard_resume_after_reload(server, study, tmp_path):
    alice_choices = ["left", "right", "tie", "skip", "left", "left", "right", "tie", "right", "left"]
    bob_choices = ["right", "right", "left", "skip", "tie", "left", "left"]  # the last: two presses, one vote
    alice_seq, bob_seq = sequence(load_study(study), "alice"), sequence(load_study(study), "bob")
    bob_error: list[BaseException] = []

    def bob() -> None:
        try:
            driver = _driver(tmp_path / "bob")
            try:
                _annotate(driver, server.url, "bob", bob_choices[:-1], bob_seq)
                # two key presses in one task: the second comes while the first vote is in flight
                driver.execute_script("for (let i = 0; i < 2; i++) document.dispatchEvent("
                                      "new KeyboardEvent('keydown', {key: 'ArrowLeft', bubbles: true}));")
                _wait(driver, "bob's debounced vote", lambda d: (p := _page(d))["state"] == "ready"
                      and p["progress"] == f"{len(bob_choices)} / {len(bob_seq)}")
                severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
                assert severe == [], severe
            finally:
                driver.quit()
        except BaseException as e:  # re-raised in the main thread
            bob_error.append(e)

    driver = _driver(tmp_path / "alice")
    thread = threading.Thread(target=bob)
    thread.start()
    try:
        _annotate(driver, server.url, "alice", alice_choices, alice_seq)
        driver.refresh()  # the id is in localStorage: logs back in and resumes at the first unvoted pair
        _wait(driver, "resumed", lambda d: _page(d)["state"] == "ready")
        page = _page(driver)
        assert page["progress"] == f"10 / {len(alice_seq)}" and page["seq"] == "10" and page["pair"] == alice_seq[10][0], page
        assert page["error"] == ""
        prompt = load_study(study).pair(alice_seq[10][0])["prompt"]  # holds <b> and <script>: shown as text
        assert driver.execute_script("const p = document.getElementById('prompt');"
                                     "return [p.textContent, p.children.length];") == [prompt, 0]
        shot = np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB"))
        assert shot.std() > 10 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 500
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe  # a CSP violation, a failed fetch or an uncaught error would show here
    finally:
        driver.quit()
        thread.join(60)
    if bob_error:
        raise bob_error[0]
    _assert_log(study, "alice", alice_choices)
    _assert_log(study, "bob", bob_choices)
    assert sorted(p.name for p in (study / "votes").iterdir()) == ["alice.jsonl", "bob.jsonl"]


# ---------------------------------------------------------------- hostile requests
def _vote(annotator: str, seq_pos: int, pid: str, choice: str = "left", **extra) -> dict:
    return {"annotator": annotator, "seq": seq_pos, "pair_id": pid, "choice": choice, "ms": 1200, **extra}


def test_bad_requests_are_one_line_4xx_and_write_nothing(server, study):
    seq = sequence(load_study(study), "dave")
    assert request(server.url + "/api/vote", _vote("dave", 0, seq[0][0]))[0] == 200  # a vote to collide with
    unknown = "0123456789abcdef"
    cases = [
        ("unknown pair id", _vote("dave", 1, unknown), None, {}, 404),
        ("pair not at that seq", _vote("dave", 1, seq[2][0]), None, {}, 409),
        ("seq already voted", _vote("dave", 0, seq[0][0]), None, {}, 409),
        ("pair id that is a path", _vote("dave", 1, "../../etc/passwd"), None, {}, 400),
        ("pair id encoded path", _vote("dave", 1, "..%2F..%2Fetc%2Fpasswd"), None, {}, 400),
        ("annotator with /", _vote("da/ve", 1, seq[1][0]), None, {}, 400),
        ("annotator ..", _vote("..", 1, seq[1][0]), None, {}, 400),
        ("annotator ../x", _vote("../votes/x", 1, seq[1][0]), None, {}, 400),
        ("annotator with a trailing newline", _vote("dave\n", 1, seq[1][0]), None, {}, 400),
        ("pair id with a trailing newline", _vote("dave", 1, seq[1][0] + "\n"), None, {}, 400),
        ("unknown key", _vote("dave", 1, seq[1][0], extra=1), None, {}, 400),
        ("missing key", {"annotator": "dave", "seq": 1, "pair_id": seq[1][0]}, None, {}, 400),
        ("seq a string", _vote("dave", "1", seq[1][0]), None, {}, 400),
        ("seq a bool", _vote("dave", True, seq[1][0]), None, {}, 400),
        ("seq out of range", _vote("dave", len(seq), seq[1][0]), None, {}, 400),
        ("choice unknown", _vote("dave", 1, seq[1][0], choice="up"), None, {}, 400),
        ("ms negative", _vote("dave", 1, seq[1][0], ms=-5), None, {}, 400),
        ("ms a float", _vote("dave", 1, seq[1][0], ms=1.5), None, {}, 400),
        ("not JSON", None, b"annotator=dave&seq=1", {}, 400),
        ("JSON array", [1, 2], None, {}, 400),
        ("duplicate key", None, b'{"annotator":"dave","annotator":"eve","seq":1,"pair_id":"%s","choice":"left"}'
         % seq[1][0].encode(), {}, 400),
        ("NaN", None, b'{"annotator":"dave","seq":NaN,"pair_id":"x","choice":"left"}', {}, 400),
        ("form content type", _vote("dave", 1, seq[1][0]), None, {"Content-Type": "text/plain"}, 415),
    ]
    before = _votes_snapshot(study)
    for name, body, raw, headers, status in cases:
        got, data, hdrs = request(server.url + "/api/vote", body, raw=raw, headers=headers)
        assert got == status, (name, got, data)
        assert set(data) == {"error"} and isinstance(data["error"], str) and "\n" not in data["error"], (name, data)
        assert "nosniff" in hdrs.get("x-content-type-options", ""), name
        assert _votes_snapshot(study) == before, name
    assert "the sequence has" in request(server.url + "/api/vote", _vote("dave", 1, seq[2][0]))[1]["error"]
    # login and next check the annotator the same way
    assert request(server.url + "/api/login", {"annotator": "a/b"})[0] == 400
    assert request(server.url + "/api/login", {"annotator": "dave", "x": 1})[0] == 400
    assert request(server.url + "/api/next?annotator=..%2Fvotes%2Fdave")[0] == 400
    assert request(server.url + "/api/next")[0] == 400
    assert request(server.url + "/api/next?annotator=dave%0A")[0] == 400  # `$` alone would let a newline through
    assert _votes_snapshot(study) == before


def test_huge_bodies_are_refused_unread(server, study):
    """A 1 MB vote is refused from its Content-Length (413) without being parsed; a chunked one, with
    no length to trust, once MAX_BODY_BYTES + 1 bytes are in. http.client, not urllib: urllib sends
    `Connection: close`, so the server closes with the unread megabyte in flight and the client gets a
    broken pipe instead of the 413; on a keep-alive connection the server discards the rest and answers."""
    before = _votes_snapshot(study)
    seq = sequence(load_study(study), "dave")
    huge = json.dumps(_vote("dave", 1, seq[1][0], pad="x" * 1_000_000)).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.request("POST", "/api/vote", huge, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 413 and set(json.loads(resp.read())) == {"error"}
    conn.close()
    assert _votes_snapshot(study) == before

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
    conn.putrequest("POST", "/api/vote")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    chunk = b"[" + b"1," * MAX_BODY_BYTES
    conn.send(b"%x\r\n%s\r\n0\r\n\r\n" % (len(chunk), chunk))
    resp = conn.getresponse()
    assert resp.status == 413 and set(json.loads(resp.read())) == {"error"}
    conn.close()
    assert _votes_snapshot(study) == before


def test_media_and_static_serve_only_known_files(server, study):
    s = load_study(study)
    image = next(p for p in s.pairs if p["modality"] == "image")
    video = next(p for p in s.pairs if p["modality"] == "video")
    status, body, hdrs = request(f"{server.url}/media/{image['pair_id']}/a")
    assert status == 200 and hdrs["content-type"] == "image/jpeg" and body["_bytes"] == (study / image["media_a"]).read_bytes()
    assert "frame-ancestors 'none'" in hdrs["content-security-policy"] and hdrs["x-content-type-options"] == "nosniff"
    status, body, hdrs = request(f"{server.url}/media/{video['pair_id']}/b")
    assert status == 200 and hdrs["content-type"] == "video/mp4" and body["_bytes"] == (study / video["media_b"]).read_bytes()
    status, _, hdrs = request(server.url + "/static/app.js")
    assert status == 200 and hdrs["content-type"].startswith("text/javascript")
    status, body, hdrs = request(server.url + "/")
    assert status == 200 and b"<script src=\"/static/app.js\"" in body["_bytes"] and b"<script>" not in body["_bytes"]
    assert hdrs["content-security-policy"].startswith("default-src 'self'")
    status, body, _ = request(server.url + "/api/vote")
    assert status == 405 and set(body) == {"error"}
    bad = [f"/media/{image['pair_id']}/c", "/media/0123456789abcdef/a", "/media/ZZZ/a", "/media/../../etc/passwd",
           "/media/..%2F..%2Fetc%2Fpasswd/a", f"/media/{image['pair_id']}/..%2F..%2Fstudy.json",
           "/static/../study.json", "/static/..%2Fstudy.json", "/static/index.html", "/static/", "/study.json",
           "/votes/dave.jsonl", "/pairs.parquet", f"/media/{image['pair_id']}%0A/a"]
    for path in bad:
        status, body, hdrs = request(server.url + path)
        assert status == 404 and set(body) == {"error"}, (path, status, body)
        assert hdrs["x-content-type-options"] == "nosniff" and "content-security-policy" in hdrs, path


def test_media_symlink_out_of_the_folder_is_not_served(tmp_path):
    """A media path from pairs.parquet that resolves outside the study folder is a 404."""
    from starlette.testclient import TestClient

    from pipeline.study.server import make_app

    folder = make_study(tmp_path / "s", n=3)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    pair = next(p for p in load_study(folder).pairs if p["modality"] == "image")
    pid = pair["pair_id"]
    target = folder / pair["media_a"]
    target.unlink()
    target.symlink_to(secret)
    with TestClient(make_app(folder)) as client:
        assert client.get(f"/media/{pid}/a").status_code == 404
        assert client.get(f"/media/{pid}/b").status_code == 200


# ---------------------------------------------------------------- a kill mid-vote
def test_sigkill_mid_voting_keeps_every_acknowledged_vote(tmp_path):
    folder = make_study(tmp_path / "s", n=60)
    seq = sequence(load_study(folder), "carol")
    srv = Server(folder, tmp_path / "server.log")
    acked: list[int] = []
    in_flight: list[int] = []
    wrong: list[tuple] = []

    def client() -> None:
        for i, (pid, _, _) in enumerate(seq):
            in_flight[:] = [i]
            try:
                status, data, _ = request(srv.url + "/api/vote", _vote("carol", i, pid, choice=("left", "right", "tie")[i % 3]))
            except (OSError, http.client.HTTPException, ValueError):
                return  # the server is gone (reset, empty or cut reply): this vote's ack, if any, was lost
            if status != 200 or data != {"ok": True, "done": i + 1}:
                wrong.append((i, status, data))
                return
            acked.append(i)

    thread = threading.Thread(target=client)
    thread.start()
    deadline = time.monotonic() + 30
    while len(acked) < 8 and time.monotonic() < deadline:
        time.sleep(0.002)
    srv.kill()
    thread.join(30)
    assert wrong == [] and 8 <= len(acked) < len(seq), (wrong, "the kill did not land mid-voting")

    raw = (folder / "votes" / "carol.jsonl").read_bytes()
    assert raw.endswith(b"\n")  # complete lines only: a vote is one write
    seqs = [json.loads(line)["seq"] for line in raw.splitlines()]
    assert seqs[: len(acked)] == acked and set(seqs) - set(acked) <= set(in_flight), (seqs, acked, in_flight)

    srv = Server(folder, tmp_path / "server2.log")
    try:
        status, data, _ = request(srv.url + "/api/next?annotator=carol")
        assert status == 200 and data["done"] == len(seqs) and data["item"]["seq"] == seqs[-1] + 1
        nxt = seqs[-1] + 1
        assert request(srv.url + "/api/vote", _vote("carol", nxt, seq[nxt][0]))[0] == 200
        assert request(srv.url + "/api/login", {"annotator": "carol"})[1] == {"annotator": "carol", "total": len(seq),
                                                                              "done": len(seqs) + 1}
    finally:
        srv.kill()


# ---------------------------------------------------------------- the vote log itself
def _line_vote(annotator: str, seq_pos: int, choice: str = "left", left: str = "a") -> dict:
    return {"annotator": annotator, "seq": seq_pos, "pair_id": _pair_id(seq_pos), "repeat": False, "left": left,
            "choice": choice, "preferred": preferred_side(choice, left), "ms": 10, "time": "2025-01-01T00:00:00.000Z"}


def test_vote_log_drops_a_torn_last_line_and_appends_after_it(tmp_path):
    log = VoteLog(tmp_path)
    log.append(_line_vote("eve", 0))
    path = tmp_path / "votes" / "eve.jsonl"
    good = path.read_bytes()
    with open(path, "ab") as f:
        f.write(b'{"annotator":"eve","seq":1,"pair_')  # a kill mid-write (no newline)
    assert [v["seq"] for v in log.read("eve")] == [0] and log.done("eve") == {0}
    log.append(_line_vote("eve", 1, "tie"))
    assert [v["seq"] for v in log.read("eve")] == [0, 1]
    assert path.read_bytes() == good + (json.dumps(_line_vote("eve", 1, "tie"), separators=(",", ":")) + "\n").encode()
    with open(path, "ab") as f:
        f.write(b"\x00\x00garbage\n")  # a last line with a newline that does not parse: torn too
    assert log.done("eve") == {0, 1}
    log.append(_line_vote("eve", 2, "skip", left="b"))
    assert [v["seq"] for v in log.read("eve")] == [0, 1, 2] and b"garbage" not in path.read_bytes()
    with open(path, "ab") as f:
        f.write(b"garbage\n")
    log.append(_line_vote("eve", 3))  # garbage is cut, so it is never a middle line; one in the middle is an error
    path.write_bytes(good + b"garbage\n" + good)
    with pytest.raises(StudyError, match="eve.jsonl:2:"):
        log.read("eve")


def test_vote_log_validates_and_serialises(tmp_path):
    log = VoteLog(tmp_path)
    with pytest.raises(StudyError, match="already"):
        log.append(_line_vote("eve", 0))
        log.append(_line_vote("eve", 0))
    for bad in ({**_line_vote("eve", 1), "extra": 1}, {**_line_vote("eve", 1), "seq": "1"},
                {**_line_vote("eve", 1), "preferred": "b"}, {**_line_vote("eve", 1), "annotator": "../x"},
                {k: v for k, v in _line_vote("eve", 1).items() if k != "ms"}):
        with pytest.raises(StudyError):
            log.append(bad)
    threads = [threading.Thread(target=log.append, args=(_line_vote("frank", i, "right", "b"),)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert log.done("frank") == set(range(40)) and log.done("eve") == {0}
    (tmp_path / "votes" / "not an id.jsonl").write_text("x\n")
    assert len(log.all_votes()) == 41


# ---------------------------------------------------------------- the sequence and the folder contract
def test_sequence_is_deterministic_complete_and_spaced(tmp_path):
    folder = make_study(tmp_path / "s", n=60, media=False, repeat_share=0.2)
    s = load_study(folder)
    seq = sequence(s, "alice")
    code = ("import json; from pipeline.study.votes import load_study, sequence; "
            f"print(json.dumps(sequence(load_study({str(folder)!r}), 'alice')))")
    other = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert [tuple(x) for x in json.loads(other.stdout)] == seq
    firsts = [pid for pid, rep, _ in seq if not rep]
    repeats = [pid for pid, rep, _ in seq if rep]
    assert sorted(firsts) == sorted(s.index) and len(repeats) == round(0.2 * 60) == 12
    assert Counter(pid for pid, _, _ in seq).most_common(1)[0][1] == 2
    for pid in repeats:
        first = next(i for i, (p, rep, _) in enumerate(seq) if p == pid and not rep)
        again = next(i for i, (p, rep, _) in enumerate(seq) if p == pid and rep)
        assert first < 30 and again - first >= 60 // 3
    assert {left for _, _, left in seq} == {"a", "b"}
    bob = sequence(s, "bob")
    assert [p for p, _, _ in bob] != [p for p, _, _ in seq] and sorted(p for p, r, _ in bob if not r) == sorted(s.index)
    with pytest.raises(StudyError):
        sequence(s, "../alice")


def test_load_study_names_the_file_at_fault(tmp_path):
    folder = make_study(tmp_path / "s", n=3, media=False)
    assert len(load_study(folder).pairs) == 3
    meta = json.loads((folder / STUDY_FILE).read_text())

    def fails(match: str) -> None:
        with pytest.raises(StudyError, match=match) as e:
            load_study(folder)
        assert "\n" not in str(e.value)

    (folder / STUDY_FILE).write_text("{not json")
    fails("study.json: not readable JSON")
    (folder / STUDY_FILE).write_text(json.dumps({**meta, "version": 2}))
    fails("study.json: version 2")
    (folder / STUDY_FILE).write_text(json.dumps({**meta, "pairs": 4}))
    fails("pairs.parquet: 3 rows")
    (folder / STUDY_FILE).write_text(json.dumps({**meta, "raters": ["pickscore"]}))
    fails("pairs.parquet: columns differ")
    (folder / STUDY_FILE).write_text(json.dumps(meta))
    (folder / PAIRS_FILE).write_bytes(b"\x80\x04\x95 a pickle, never loaded")
    fails("pairs.parquet: not a readable parquet file")
    (folder / PAIRS_FILE).unlink()
    fails("pairs.parquet: missing")
    (folder / STUDY_FILE).unlink()
    fails("study.json: missing")


def test_a_finished_annotator_gets_no_item(tmp_path):
    """After the last position `next` has no item (the page says thank you), and login reports all done."""
    from starlette.testclient import TestClient

    from pipeline.study.server import make_app

    folder = make_study(tmp_path / "s", n=3, media=False)
    seq = sequence(load_study(folder), "gina")
    with TestClient(make_app(folder)) as client:
        for i, (pid, _, _) in enumerate(seq):
            assert client.get("/api/next", params={"annotator": "gina"}).json()["item"]["seq"] == i
            assert client.post("/api/vote", json=_vote("gina", i, pid, choice="skip")).json() == {"ok": True, "done": i + 1}
        assert client.get("/api/next", params={"annotator": "gina"}).json() == {"total": 3, "done": 3, "item": None}
        assert client.post("/api/login", json={"annotator": "gina"}).json() == {"annotator": "gina", "total": 3, "done": 3}
    assert [v["preferred"] for v in VoteLog(folder).read("gina")] == [None] * 3
