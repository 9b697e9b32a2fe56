"""Model stages as Ray Data actor pools.

A stage is a small picklable object: its fields are paths and settings, its models are loaded in
`setup()` on the actor, once. The driver cuts work into *units* whose composition depends only on the
work itself (so a rerun after a kill feeds the models exactly the same batches and gets the same
bits), sends one unit per Ray Data batch, and gets one output block per unit back as it finishes.
"""
from __future__ import annotations

import abc
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import pyarrow as pa
import ray

from pipeline.ray_runtime import check_resources
from schemas.config import ResourceConfig


@dataclass
class ActorStage(abc.ABC):
    """One model stage: `setup` once per actor, then `process` one unit (a list of task dicts) at a time."""

    resources: ResourceConfig

    name = "stage"

    def setup(self) -> None:
        """Load models; runs on the actor, never on the driver."""

    @abc.abstractmethod
    def process(self, tasks: list[dict[str, Any]]) -> pa.Table:
        """Turn one unit of tasks into output rows."""


class _Actor:
    """The Ray Data callable class wrapping a stage: constructed on the actor, so `setup` runs there.

    The stage rides on a per-run subclass (see `_actor_class`) rather than in constructor arguments,
    which Ray would park in the object store, where a restarted actor could lose them.
    """

    stage_template: ActorStage

    def __init__(self):
        import torch

        stage = self.stage_template
        torch.set_num_threads(max(1, int(stage.resources.num_cpus)))
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.stage = stage
        stage.setup()

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        tables = [self.stage.process(json.loads(payload)) for payload in batch["tasks"]]
        return pa.concat_tables(tables) if len(tables) > 1 else tables[0]


def _actor_class(stage: ActorStage) -> type[_Actor]:
    return type(f"{type(stage).__name__}Actor", (_Actor,), {"stage_template": stage})


def make_units(tasks: Sequence[dict[str, Any]], size: int, key: Callable[[dict], Any]) -> list[list[dict]]:
    """Cut tasks into units of at most `size`, grouped by `key` and ordered by it: same work, same units."""
    by_key: dict[Any, list[dict]] = {}
    for t in sorted(tasks, key=lambda t: (key(t), t["id"])):
        by_key.setdefault(key(t), []).append(t)
    units = []
    for group in by_key.values():
        units += [group[i : i + size] for i in range(0, len(group), size)]
    return units


def run_stage(stage: ActorStage, units: list[list[dict[str, Any]]]) -> Iterator[pa.Table]:
    """Run `units` through an actor pool of `stage`; yields each unit's output as soon as it is done."""
    if not units:
        return
    res = stage.resources
    check_resources(stage.name, res.num_gpus, res.num_cpus)
    blocks = [pd.DataFrame({"tasks": [json.dumps(u)]}) for u in units]
    ds = ray.data.from_pandas(blocks).map_batches(
        _actor_class(stage),
        batch_size=1,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=min(res.num_actors, len(units))),
        num_gpus=res.num_gpus,
        num_cpus=res.num_cpus,
    )
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")
