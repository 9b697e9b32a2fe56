"""Shared fixtures: one local Ray instance per test session, a small offline build config, and a
session cache for the tiny models (built once, loaded through from_pretrained like real ones), and a
canned OpenAI-compatible server for the VLM rater's openai backend."""
from __future__ import annotations

import copy
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

SMALL = {
    "name": "vipo-test",
    "seed": 0,
    "categories": {
        "aesthetics": {"quota": 2, "prompts": 2},
        "motion_quality": {"quota": 2, "prompts": 2},
    },
    "generators": [
        {
            "name": "tiny-sd15",
            "seeds_per_prompt": 2,
            "sampling": [{"num_inference_steps": 2, "guidance_scale": 3.0}, {"num_inference_steps": 2, "guidance_scale": 7.5}],
            "resources": {"num_gpus": 0, "num_cpus": 1, "num_actors": 1, "batch_size": 2},
        },
        {
            "name": "tiny-wan21",
            "seeds_per_prompt": 4,
            "sampling": [{"num_inference_steps": 2}],
            "resources": {"num_gpus": 0, "num_cpus": 1, "num_actors": 1, "batch_size": 2},
        },
    ],
    "scoring": {
        "reward_models": [{"name": n, "model": "tiny"} for n in ("pickscore", "hpsv21", "imagereward", "clipscore", "aesthetic")],
        "video_frames": 3,
        "resources": {"num_gpus": 0, "num_cpus": 1, "num_actors": 1, "batch_size": 4},
    },
    "pairing": {"quorum": 3, "max_pairs_per_prompt": 2},
    "shards": {"samples_per_shard": 2},
}


@pytest.fixture(scope="session")
def vipo_cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vipo-cache")
    os.environ["VIPO_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # never a stray cluster
    yield ray
    ray.shutdown()


def small_config(cache: Path, out: Path) -> dict:
    cfg = copy.deepcopy(SMALL)
    cfg["cache_dir"] = str(cache)
    cfg["output_dir"] = str(out)
    return cfg


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def built(ray_session, vipo_cache, tmp_path_factory):
    """The small build, once per session: the reference that resumed and faulted builds must equal."""
    from pipeline.build import Build
    from schemas.config import parse_config

    out = tmp_path_factory.mktemp("build") / "a"
    cfg = parse_config(small_config(vipo_cache, out))
    return cfg, Build(cfg).run()


def tars(root: Path) -> dict[str, bytes]:
    """Every shard tar of a build folder, by path: equal dicts mean byte-identical datasets."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "shards").rglob("*.tar"))}


# -- a canned OpenAI-compatible server (the VLM rater's openai backend tests) ------------------------
class _Canned(BaseHTTPRequestHandler):
    """Answers POST /v1/chat/completions from the server's script: (status, body or None, delay_s)."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        srv = self.server
        if self.path == "/tokenize":  # vLLM's tokenizer endpoint, at the server root; 404 when the server has none
            with srv.lock:
                srv.tokenized.append(body)
            known = srv.vocab is not None and body.get("prompt") in srv.vocab
            self._reply(200 if known else 404, {"count": 1, "tokens": srv.vocab[body["prompt"]]} if known else {"detail": "Not Found"})
            return
        with srv.lock:
            srv.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            status, payload, delay = srv.script.pop(0) if srv.script else (500, {"error": "script exhausted"}, 0)
        time.sleep(delay)
        self._reply(status, payload)

    def _reply(self, status, payload):
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def canned_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Canned)
    srv.daemon_threads = True
    srv.lock, srv.seen, srv.script, srv.tokenized, srv.vocab = threading.Lock(), [], [], [], None
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)
