"""Train config: presets validate, errors are one line naming file and key; `cli.py train` end to end
on a small shard folder (the real data loader), and a restart resumes instead of redoing the run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer.testing
import webdataset as wds
import yaml

from pipeline.generators import REGISTRY
from pipeline.media import encode_image
from schemas.config import ConfigError
from schemas.train_config import load_train_config

REPO = Path(__file__).resolve().parents[1]
PRESETS = sorted((REPO / "configs").glob("train-*.yaml"))


def test_presets_validate_and_name_known_generators():
    assert {p.name for p in PRESETS} >= {"train-demo.yaml", "train-sdxl.yaml", "train-sd35.yaml", "train-wan21.yaml"}
    for path in PRESETS:
        cfg = load_train_config(path)
        spec = REGISTRY[cfg.model.generator]
        assert (spec.modality == "video") == (cfg.data.modality == "video"), path.name
        if spec.family == "wan21":
            assert (cfg.data.num_frames - 1) % 4 == 0, path.name
    demo = load_train_config(REPO / "configs" / "train-demo.yaml")
    assert demo.model.generator == "tiny-sd15" and demo.device == "cpu" and demo.lora is not None


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"model": {"generator": "tiny-sd15"}, "data": {"paths": ["x"]}}


@pytest.mark.parametrize(
    "change, where",
    [
        ({"optim": {"optimiser": "adamw"}}, "optim.optimiser: Extra inputs are not permitted"),
        ({"objective": {"beta": -1}}, "objective.beta: Input should be greater than 0"),
        ({"max_steps": 5, "objective": {"sft_steps": 5}}, "objective.sft_steps: 5 leaves no Poly-DPO steps"),
        ({"data": {"paths": []}}, "data.paths: List should have at least 1 item"),
        ({"mixed_precision": "fp16", "device": "cpu"}, "mixed_precision: fp16 needs a GPU"),
    ],
)
def test_errors_are_one_line_with_file_and_key(tmp_path, change, where):
    path = _write(tmp_path, {**BASE, **change})
    with pytest.raises(ConfigError) as err:
        load_train_config(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"{path}: ") and where in msg, msg


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_train_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_train_config(bad)


def _shards(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    with wds.TarWriter(str(folder / "train-000000.tar")) as sink:
        for i in range(n):
            key = f"{i:016x}"
            meta = {"pair_id": key, "prompt_id": f"{i:016x}", "prompt": f"a red square {i}", "category": "aesthetics",
                    "modality": "image"}
            win = encode_image(np.full((24, 24, 3), (200, 30, 30), np.uint8), "png")
            lose = encode_image(np.full((24, 24, 3), (30, 30, 200), np.uint8), "png")
            sink.write({"__key__": key, "json": json.dumps(meta).encode(), "txt": meta["prompt"].encode(),
                        "win.png": win, "lose.png": lose})


def test_cli_train_runs_on_shards_and_resumes(tmp_path, vipo_cache):
    from cli import app

    _shards(tmp_path / "shards", 6)
    cfg = {
        "output_dir": str(tmp_path / "run"), "device": "cpu", "cache_dir": str(vipo_cache),
        "model": {"generator": "tiny-sd15"}, "lora": {"rank": 2},
        "data": {"paths": [str(tmp_path / "shards")], "resolution": 16, "shuffle_buffer": 4},
        "batch_size": 2, "max_steps": 4, "checkpoint_every": 2,
    }
    runner = typer.testing.CliRunner()
    result = runner.invoke(app, ["train", "--config", str(_write(tmp_path, cfg))])
    assert result.exit_code == 0, result.output
    run = tmp_path / "run"
    assert (run / "final" / "pytorch_lora_weights.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    lines = (run / "metrics.csv").read_text().splitlines()
    assert lines[0].startswith("step,phase,loss,implicit_acc") and len(lines) == 5

    again = runner.invoke(app, ["train", "--config", str(tmp_path / "train.yaml")])
    assert again.exit_code == 0 and "resumed at step 4" in again.output


def test_cli_train_reports_a_bad_config_in_one_line(tmp_path):
    from cli import app

    path = _write(tmp_path, {**BASE, "lora": {"rank": 0}})
    result = typer.testing.CliRunner().invoke(app, ["train", "--config", str(path)])
    assert result.exit_code == 2
    assert "lora.rank: Input should be greater than or equal to 1" in result.output
