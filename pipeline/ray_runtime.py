"""Starting or joining Ray, and the GPU check that Ray itself does not make (it would wait forever).

Ray talks to the driver's terminal on two channels that vipo does not own: its Python loggers ("ray",
"ray.data"; e.g. the token-authentication notice at `ray.init`) and the C++ core worker, which writes
its ERROR lines straight to file descriptor 2 (e.g. `core_worker.cc ... constructor arguments in the
object store`, once per Ray Data actor pool: Ray Data itself `ray.put`s each pool's constructor
arguments and sets `max_restarts=-1`, so no argument vipo passes avoids it). A build reads them as
errors. `route_ray_logs` sends both to a log file and keeps the terminal for vipo's own lines.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import ray

from schemas.config import RayConfig
from schemas.errors import VipoError

RAY_LOG_FORMAT = "%(asctime)s\t%(levelname)s %(name)s %(filename)s:%(lineno)s -- %(message)s"


class ResourceError(VipoError, RuntimeError):
    """A stage asks for resources the cluster does not have."""


def init_ray(cfg: RayConfig, log_file: Path | None = None) -> None:
    """Join `cfg.address` / RAY_ADDRESS, or start a local instance; a running session is reused.

    With `log_file`, Ray's own log lines go there (INFO and up) instead of the terminal; see
    `route_ray_logs`. Without it Ray may print WARNING and ERROR lines on stderr."""
    if log_file is not None:
        route_ray_logs(log_file)
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {} if address else {"num_cpus": cfg.num_cpus}
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.INFO if log_file is not None else logging.WARNING,
            logging_format=RAY_LOG_FORMAT if log_file is not None else None,
            log_to_driver=False,
            configure_logging=True,
            **kwargs,
        )
    _quiet_ray_data_console()
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # vipo reports its own progress
    ctx.enable_operator_progress_bars = False
    ctx.enable_auto_log_stats = False
    ctx.verbose_stats_logs = False


_CHATTY_LOGGERS = {
    "ray.data._internal.execution.streaming_executor": logging.WARNING,  # "execution plan / finished"
    "ray.data._internal.progress": logging.ERROR,  # "progress bars disabled": we disabled them
}


def _quiet_ray_data_console() -> None:
    """Keep Ray Data's per-dataset chatter off the console: vipo reports progress itself."""
    for name, level in _CHATTY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


_ROUTE: dict = {}  # the current log file: {"path", "stream", "handler", "terminal_fd"}


def route_ray_logs(log_file: Path) -> Path:
    """Send Ray's driver-side log lines to `log_file` (appended), keep the terminal for vipo's.

    Python: every console handler of the "ray" / "ray.data" loggers is replaced by one on the file.
    C++: when `sys.stderr` is this process's fd 2 (a terminal or a pipe; not under pytest's capture
    or a notebook), fd 2 is pointed at the file and `sys.stderr` at a copy of the old fd 2, so what
    Python writes (vipo's progress, tracebacks, warnings) still reaches the terminal while what native
    code writes to fd 2 (Ray's core worker, other C libraries in the driver) lands in the file.
    Idempotent; a second call with another file moves both channels to it."""
    import ray.data  # noqa: F401  (configures the "ray.data" loggers now, so their console handler is replaced below)

    path = Path(log_file).resolve()
    if _ROUTE.get("path") == path:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.INFO)  # the console handlers' level; Ray Data's DEBUG lines stay in its session ray-data.log
    handler.setFormatter(logging.Formatter(RAY_LOG_FORMAT))
    old = _ROUTE.get("handler")
    for logger in _ray_loggers():
        consoles = [h for h in logger.handlers if h is old or _is_console(h)]
        for h in consoles:
            logger.removeHandler(h)
        if consoles or logger.name == "ray":
            logger.addHandler(handler)
    terminal_fd = _ROUTE.get("terminal_fd")
    if terminal_fd is None and _stderr_is_fd2():
        sys.stderr.flush()
        terminal_fd = os.dup(2)
        sys.stderr = open(terminal_fd, "w", buffering=1, encoding=sys.stderr.encoding, errors="backslashreplace",
                          closefd=False)
    if terminal_fd is not None:
        os.dup2(stream.fileno(), 2)
    if old is not None:
        old.close()
        _ROUTE["stream"].close()
    _ROUTE.update(path=path, stream=stream, handler=handler, terminal_fd=terminal_fd)
    return path


def _ray_loggers() -> list[logging.Logger]:
    loggers = logging.root.manager.loggerDict
    return [logging.getLogger("ray")] + [lg for name, lg in sorted(loggers.items())
                                         if name.startswith("ray.") and isinstance(lg, logging.Logger)]


def _is_console(handler: logging.Handler) -> bool:
    """A handler that prints to a console (Ray's PlainRayHandler is a StreamHandler on stderr); Ray's own
    file handlers (ray-data.log in the session folder) are not StreamHandlers and stay."""
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def _stderr_is_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, notebooks: no real fd behind sys.stderr
        return False


def check_resources(stage: str, num_gpus: float, num_cpus: float) -> None:
    """Refuse up front a request the cluster cannot ever satisfy."""
    total = ray.cluster_resources()
    if num_gpus > 0 and total.get("GPU", 0) < num_gpus:
        raise ResourceError(
            f"stage {stage!r} asks for {num_gpus:g} GPU per actor but the Ray cluster has "
            f"{total.get('GPU', 0):g}; set resources.num_gpus: 0 to run it on CPU, or join a GPU cluster"
        )
    if total.get("CPU", 0) < num_cpus:
        raise ResourceError(
            f"stage {stage!r} asks for {num_cpus:g} CPU per actor but the Ray cluster has {total.get('CPU', 0):g}"
        )
