"""The embedded default (configs/demo.yaml), end to end: what `python cli.py build` promises a new user."""
from pipeline.build import Build
from pipeline.verify import verify_dataset
from schemas.categories import CATEGORIES
from schemas.config import load_config
from tests.conftest import REPO


def test_demo_builds_every_category_and_verifies(ray_session, vipo_cache, tmp_path):
    cfg = load_config(REPO / "configs" / "demo.yaml", {"output_dir": str(tmp_path / "demo"), "cache_dir": str(vipo_cache)})
    result = Build(cfg).run()
    assert verify_dataset(result.out_dir) == []
    counts = {}
    for manifest in result.manifests.values():
        counts.update(manifest["categories"])
    assert counts == {c: cfg.categories[c].quota for c in CATEGORIES}
