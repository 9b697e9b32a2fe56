"""Starting or joining Ray, and the GPU check that Ray itself does not make (it would wait forever)."""
from __future__ import annotations

import logging
import os

import ray

from schemas.config import RayConfig


class ResourceError(RuntimeError):
    """A stage asks for resources the cluster does not have."""


def init_ray(cfg: RayConfig) -> None:
    """Join `cfg.address` / RAY_ADDRESS, or start a local instance; a running session is reused."""
    if not ray.is_initialized():
        address = cfg.address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {} if address else {"num_cpus": cfg.num_cpus}
        ray.init(
            address=address,
            include_dashboard=False,
            logging_level=logging.WARNING,
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
