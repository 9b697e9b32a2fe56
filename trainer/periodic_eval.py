"""`eval:` in a train config: the weights of step N against the base, through the same `cli.py eval`
graph, with the overall win rates logged beside the loss (docs/eval.md, "During training").

The eval folder is `<run>/eval`, shared by every step: the base's media and scores are made once and
found done by identity afterwards, so each later eval costs only the new weights' images. A resumed
run re-evaluates a step from weights identical to the first time's, which the eval finds done too.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from schemas.config_io import read_yaml
from schemas.eval_config import EvalConfig, parse_eval_config
from schemas.train_config import TrainConfig

VLM_COLUMN = "eval_vlm_win_rate"


def eval_column(metric: str) -> str:
    return f"eval_{metric}_win_rate"


class PeriodicEval:
    """Checks the eval config when the run starts; `run(step, save)` evaluates the weights `save(folder)` writes."""

    def __init__(self, cfg: TrainConfig, out: Path):
        self.cfg, self.out = cfg, Path(out)
        source = cfg.eval.config
        data = read_yaml(source)
        if isinstance(data, dict):
            data = {**data, "output_dir": str(self.out / "eval"),
                    "base": {"name": "base", "generator": cfg.model.generator, "model": cfg.model.path},
                    "candidates": [{"name": "placeholder", "generator": cfg.model.generator}]}
            if cfg.cache_dir is not None:
                data.setdefault("cache_dir", cfg.cache_dir)
        self.template: EvalConfig = parse_eval_config(data, source)
        self.source = source

    @property
    def columns(self) -> list[str]:
        from pipeline.eval.analyse import compared_metrics
        from pipeline.score import score_names

        metrics = compared_metrics(score_names([r.name for r in self.template.scoring.reward_models]))
        return [eval_column(m) for m in metrics] + ([VLM_COLUMN] if self.template.judge is not None else [])

    def run(self, step: int, save: Callable[[Path], Path], lora: bool) -> dict[str, Any]:
        """Overall win rates of the step's weights against the base, by column name (None: no data)."""
        from pipeline.eval.run import Evaluation

        name = f"step-{step:08d}"
        weights = save(self.out / "eval" / "weights" / name)
        candidate = {"name": name, "generator": self.cfg.model.generator, "model": self.cfg.model.path,
                     ("lora" if lora else "denoiser"): str(weights)}
        cfg = parse_eval_config({**self.template.model_dump(mode="json"), "candidates": [candidate]}, self.source)
        summary = Evaluation(cfg, source=self.source).run().summary
        comp = summary["comparisons"][name]
        row = {eval_column(m): c["win_rate"]["estimate"] for m, c in comp["overall"].items()}
        if comp.get("vlm"):
            row[VLM_COLUMN] = comp["vlm"]["overall"]["win_rate"]["estimate"]
        return {k: row.get(k) for k in self.columns}
