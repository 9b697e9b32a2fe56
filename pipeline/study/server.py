"""The annotation server of a human study (docs/human_study.md): one page, a JSON API, the vote log.

Trust nothing from the client: bodies are capped (MAX_BODY_BYTES) and parsed as strict JSON objects
with known keys only, ids are checked against their regexes before any use, and no client string ever
becomes a path (media paths come from pairs.parquet, static files from a fixed dict). A vote is
answered 200 only after VoteLog fsynced it; every refusal is a 4xx `{"error": "<one line>"}` that
wrote nothing. There are no accounts: any well-formed annotator id may vote, so serve on 127.0.0.1
(the default) or a trusted network only. JSON bodies must be sent as application/json, which a
cross-site form cannot do without a CORS preflight this server never grants.
"""
from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from pipeline.study.votes import (
    MEDIA_TYPES,
    AlreadyVoted,
    Study,
    StudyError,
    VoteLog,
    check_annotator,
    load_study,
    preferred_side,
    sequence,
)
from schemas.categories import CATEGORIES
from schemas.study import CHOICES, MAX_BODY_BYTES, PAIR_ID, SIDES

STATIC_DIR = Path(__file__).parent / "static"
#: The only files under /static/ (name -> content type); the URL only ever selects a key here.
STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self'; media-src 'self'; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
MS_CAP = 3_600_000  # `ms` is informative: a pair left open over lunch is recorded as one hour
VOTE_KEYS = ("annotator", "seq", "pair_id", "choice", "ms")


class ClientError(Exception):
    """A refused request: its status and a one-line reason for `{"error": ...}`."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, " ".join(reason.split())


def make_app(study_folder: str | Path) -> Starlette:
    """The app over one study folder (loaded and checked now, so a bad folder fails before serving)."""
    study = load_study(study_folder)
    log = VoteLog(study.folder)
    root = study.folder.resolve()
    static = {name: (STATIC_DIR / name).read_bytes() for name in [*STATIC, "index.html"]}

    @lru_cache(maxsize=256)
    def seq_of(annotator: str) -> tuple[tuple[str, bool, str], ...]:
        return tuple(sequence(study, annotator))

    async def page(request: Request) -> Response:
        return Response(static["index.html"], media_type="text/html; charset=utf-8", headers={"cache-control": "no-cache"})

    async def static_file(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in STATIC:
            raise ClientError(404, "no such static file")
        return Response(static[name], media_type=STATIC[name], headers={"cache-control": "no-cache"})

    async def media(request: Request) -> Response:
        pid, side = request.path_params["pair_id"], request.path_params["side"]
        pair = study.pair(pid) if PAIR_ID.fullmatch(pid) and side in SIDES else None
        if pair is None:
            raise ClientError(404, "no such pair or side")
        path = (study.folder / pair[f"media_{side}"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():  # a symlink out of the folder, or missing
            raise ClientError(404, f"media of pair {pid} side {side} is missing")
        return FileResponse(path, media_type=MEDIA_TYPES[path.suffix.lower()], headers={"cache-control": "private, max-age=3600"})

    async def login(request: Request) -> Response:
        body = _keys(await _json_body(request), required=("annotator",))
        annotator = _annotator(body["annotator"])
        return _json({"annotator": annotator, **_progress(seq_of(annotator), log.done(annotator))})

    async def next_item(request: Request) -> Response:
        annotator = _annotator(request.query_params.get("annotator"))
        seq = seq_of(annotator)
        done = log.done(annotator)
        pos = next((i for i in range(len(seq)) if i not in done), None)
        item = None if pos is None else _item(study, pos, *seq[pos])
        return _json({**_progress(seq, done), "item": item})

    async def vote(request: Request) -> Response:
        body = _keys(await _json_body(request), required=VOTE_KEYS[:4], optional=VOTE_KEYS[4:])
        annotator = _annotator(body["annotator"])
        seq = seq_of(annotator)
        pos, pid = body["seq"], body["pair_id"]
        if not _is_int(pos) or not 0 <= pos < len(seq):
            raise ClientError(400, f"seq must be an integer in 0..{len(seq) - 1}")
        if not isinstance(pid, str) or not PAIR_ID.fullmatch(pid):
            raise ClientError(400, "pair_id must be 16 hex digits")
        if study.pair(pid) is None:
            raise ClientError(404, f"no pair {pid} in this study")
        expected, repeat, left = seq[pos]
        if pid != expected:
            raise ClientError(409, f"vote for pair {pid} at position {pos}, the sequence has {expected} there")
        if body["choice"] not in CHOICES:
            raise ClientError(400, f"choice must be one of {list(CHOICES)}")
        ms = body.get("ms")
        if ms is not None and (not _is_int(ms) or ms < 0):
            raise ClientError(400, "ms must be a non-negative integer")
        line = {
            "annotator": annotator, "seq": pos, "pair_id": pid, "repeat": repeat, "left": left,
            "choice": body["choice"], "preferred": preferred_side(body["choice"], left),
            "ms": None if ms is None else min(ms, MS_CAP), "time": _now(),
        }
        try:
            await asyncio.to_thread(log.append, line)  # fsync off the event loop
        except AlreadyVoted as e:
            raise ClientError(409, str(e)) from None
        return _json({"ok": True, "done": _progress(seq, log.done(annotator))["done"]})

    routes = [
        Route("/", page),
        Route("/static/{name}", static_file),
        Route("/media/{pair_id}/{side}", media),
        Route("/api/login", login, methods=["POST"]),
        Route("/api/next", next_item),
        Route("/api/vote", vote, methods=["POST"]),
    ]
    handlers = {ClientError: _client_error, HTTPException: _http_error, StudyError: _server_error, OSError: _server_error}
    return Starlette(routes=routes, exception_handlers=handlers, middleware=[Middleware(SecurityHeaders)])


def serve(study_folder: str | Path, host: str = "127.0.0.1", port: int = 8765, log_level: str = "warning") -> None:
    """Serve the study until interrupted (uvicorn, one process: the vote log's locks are per process)."""
    import uvicorn

    app = make_app(study_folder)
    print(f"serving {study_folder} at http://{host}:{port}/", file=sys.stderr, flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False, server_header=False)


def _item(study: Study, pos: int, pid: str, repeat: bool, left: str) -> dict[str, Any]:
    """What the page shows at a position; `repeat` stays on the server (it would bias the second look)."""
    pair = study.pair(pid)
    right = SIDES[1 - SIDES.index(left)]
    category = CATEGORIES.get(pair["category"])
    return {
        "seq": pos, "pair_id": pid, "prompt": pair["prompt"], "category": pair["category"],
        "rubric": category.rubric if category else "overall quality and faithfulness to the prompt", "modality": pair["modality"],
        "left": {"url": f"/media/{pid}/{left}"}, "right": {"url": f"/media/{pid}/{right}"},
    }


def _progress(seq: tuple, done: set[int]) -> dict[str, int]:
    return {"total": len(seq), "done": sum(1 for s in done if 0 <= s < len(seq))}


async def _json_body(request: Request) -> Any:
    """The body as JSON: application/json, at most MAX_BODY_BYTES (read no further), no duplicate keys."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json":
        raise ClientError(415, "send the body as application/json")
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
        raise ClientError(413 if length.isdigit() else 400, f"the body must be at most {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:  # chunked, or a Content-Length that lied
            raise ClientError(413, f"the body must be at most {MAX_BODY_BYTES} bytes")
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ClientError(400, "the body is not valid JSON") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("duplicate key")
    return out


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _keys(body: Any, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ClientError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - set(required) - set(optional))
    if unknown:
        raise ClientError(400, f"unknown key {_short(unknown[0])}; expected {list(required + optional)}")
    missing = [k for k in required if k not in body]
    if missing:
        raise ClientError(400, f"missing key {missing[0]!r}")
    return body


def _annotator(value: Any) -> str:
    try:
        return check_annotator(value)
    except StudyError as e:
        raise ClientError(400, str(e)) from None


def _json(data: dict[str, Any], status: int = 200) -> JSONResponse:
    return JSONResponse(data, status_code=status, headers={"cache-control": "no-store"})


async def _client_error(request: Request, exc: Exception) -> Response:
    return _json({"error": exc.reason}, exc.status)  # type: ignore[attr-defined]


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own refusals (no route: 404, wrong method: 405) in the same one-line JSON shape."""
    status = getattr(exc, "status_code", 500)
    return _json({"error": {404: "not found", 405: "method not allowed"}.get(status, str(getattr(exc, "detail", "")))}, status)


class SecurityHeaders:
    """Pure ASGI: the CSP and nosniff on every response, refusals and media included."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for k, v in SECURITY_HEADERS.items():
                    headers[k] = v
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    """The server's own trouble (a disk error, a votes file broken by hand): 5xx, the page shows the line;
    nothing was acknowledged, so the annotator can simply try again."""
    status = 503 if isinstance(exc, OSError) else 500
    return _json({"error": f"the server could not do that: {' '.join(str(exc).split())[:300]}"}, status)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _short(x: object) -> str:
    r = repr(x)
    return r if len(r) <= 40 else r[:37] + "..."
