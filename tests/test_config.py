import subprocess
import sys

import pytest
import yaml

from schemas.config import ConfigError, load_config, parse_config
from tests.conftest import REPO, SMALL, write_config


def test_demo_and_presets_validate():
    from pipeline.build import preflight

    for name in ("demo.yaml", "vipo-image.yaml", "vipo-video.yaml"):
        cfg = load_config(REPO / "configs" / name)
        assert cfg.quorum <= len(cfg.scorer_names)
        preflight(cfg, name)
    for name in ("vipo-image.yaml", "vipo-video.yaml"):  # the paper's rule and resolution floors
        cfg = load_config(REPO / "configs" / name)
        assert cfg.quorum == 5 and max(cfg.media.min_image_side, cfg.media.min_video_side) >= 720
    demo = load_config(REPO / "configs" / "demo.yaml")
    assert len(demo.categories) == 8


@pytest.mark.parametrize(
    "mutate, key, words",
    [
        (lambda c: c["categories"].update({"landscapes": {"quota": 1, "prompts": 1}}), "categories", "unknown category"),
        (lambda c: c["generators"][0].update({"seeds_per_prompt": "many"}), "generators.0.seeds_per_prompt", "integer"),
        (lambda c: c["pairing"].update({"quorum": 9}), "pairing.quorum", "exceeds"),
        (lambda c: c["scoring"]["reward_models"].append({"name": "vibes"}), "scoring.reward_models.5", "unknown reward model"),
        (lambda c: c.update({"colour": "blue"}), "colour", "Extra inputs are not permitted"),
        (lambda c: c["categories"]["aesthetics"].update({"quota": 0}), "categories.aesthetics.quota", "greater than or equal"),
        (lambda c: c["pairing"].update({"min_margin": 0.5, "max_margin": 0.5}), "pairing.max_margin", "must exceed"),
        (lambda c: c["pairing"].update({"near_duplicate_bits": 65}), "pairing.near_duplicate_bits", "less than or equal"),
        (lambda c: c.setdefault("ray", {}).update({"columnar": "spark"}), "ray.columnar", "'auto', 'local' or 'ray'"),
        (lambda c: c.update({"selection": {"max_winner_generator_share": 1.5}}), "selection.max_winner_generator_share", "less than"),
    ],
)
def test_bad_config_names_file_and_key(tmp_path, mutate, key, words):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    mutate(data)
    path = write_config(tmp_path / "bad.yaml", data)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: {key}"), msg
    assert words in msg and "\n" not in msg


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\ncategories: {aesthetics: [\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: line \d+: invalid YAML"):
        load_config(path)


def test_non_mapping_config():
    with pytest.raises(ConfigError, match="expected a mapping"):
        parse_config(["a"], "x.yaml")


def test_cli_bad_config_one_line_and_writes_nothing(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    data["generators"][1]["resources"]["batch_size"] = -3
    path = write_config(tmp_path / "bad.yaml", data)
    out = tmp_path / "build"
    proc = subprocess.run(
        [sys.executable, str(REPO / "cli.py"), "build", "--config", str(path), "--out", str(out)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert f"{path}: generators.1.resources.batch_size:" in lines[0]
    assert not out.exists()


def _cfg(**changes):
    data = yaml.safe_load(yaml.safe_dump(SMALL))
    for key, value in changes.items():
        target = data
        *path, last = key.split(".")
        for p in path:
            target = target[int(p)] if p.isdigit() else target[p]
        target[last] = value
    return parse_config(data, "c.yaml")


def test_preflight_refuses_what_the_registries_cannot_do():
    from pipeline.build import preflight

    with pytest.raises(ConfigError, match=r"^c.yaml: generators.1: .*num_frames=10"):
        preflight(_cfg(**{"generators.1.call_kwargs": {"num_frames": 10}}), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml: generators.0: generator 'mystery'.*must set pipeline_class, model, modality"):
        preflight(_cfg(**{"generators.0.name": "mystery"}), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml: generators.0.sampling.0: 64x64 is below media.min_image_side 1024"):
        preflight(_cfg(media={"min_image_side": 1024}), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml: categories.aesthetics.prompts: 99999999 asked"):
        preflight(_cfg(**{"categories.aesthetics.prompts": 99999999}), "c.yaml")
    with pytest.raises(ConfigError, match=r"^c.yaml: categories.motion_quality: no video generator serves"):
        preflight(_cfg(**{"generators.1.categories": ["visual_quality"]}), "c.yaml")
    assert set(preflight(_cfg(), "c.yaml")) == {"tiny-sd15", "tiny-wan21"}


def test_preflight_checks_prompt_files(tmp_path):
    from pipeline.build import preflight

    with pytest.raises(ConfigError, match=r"^c.yaml: prompt_files.0: .*nope.txt: no such file"):
        preflight(_cfg(prompt_files=[str(tmp_path / "nope.txt")]), "c.yaml")
    (tmp_path / "p.docx").write_text("x")
    with pytest.raises(ConfigError, match=r"^c.yaml: prompt_files.0: .*p.docx: expected one of .txt, .jsonl, .csv, .parquet"):
        preflight(_cfg(prompt_files=[str(tmp_path / "p.docx")]), "c.yaml")


def test_configuration_reference_is_current():
    from schemas.config_doc import render_config_reference

    assert (REPO / "docs" / "configuration.md").read_text() == render_config_reference(), (
        "docs/configuration.md is stale: python -m schemas.config_doc > docs/configuration.md"
    )
