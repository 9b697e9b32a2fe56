"""The training loop end to end on CPU: it learns a planted preference, resumes exactly, and exports
weights that diffusers loads back."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from schemas.train_config import parse_train_config
from trainer.batch import PairBatch
from trainer.loop import build_optimizer, step_generator, train, train_step
from trainer.models import load_train_model

RED, BLUE = (0.8, -0.6, -0.6), (-0.6, -0.6, 0.8)


class ColourPairs:
    """Winners reddish, losers bluish, with random texture; batch i is a pure function of (seed, i),
    so the position is the whole loader state (resume without replay)."""

    def __init__(self, batches: int, batch_size: int, seed: int = 0, res: int = 16):
        self.batches, self.batch_size, self.seed, self.res, self.pos = batches, batch_size, seed, res, 0

    def _make(self, i: int) -> PairBatch:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        tex = torch.rand(2, self.batch_size, 1, self.res, self.res, generator=g) * 0.2 - 0.1
        w = (torch.tensor(RED).view(1, 3, 1, 1) + tex[0]).clamp(-1, 1)
        lose = (torch.tensor(BLUE).view(1, 3, 1, 1) + tex[1]).clamp(-1, 1)
        ids = [f"{i:08x}{j:08x}" for j in range(self.batch_size)]
        return PairBatch(w, lose, ["a photo"] * self.batch_size, ["aesthetics"] * self.batch_size, ids)

    def __iter__(self):
        while self.pos < self.batches:
            self.pos += 1
            yield self._make(self.pos - 1)

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = int(state["pos"])


@pytest.fixture(scope="module")
def unit_sd15(tmp_path_factory) -> str:
    """tiny-sd15 with a VAE that behaves like a trained one: a near-deterministic posterior
    (logvar bias -30) and a scaling factor that gives unit-variance latents on these colours. The
    random toy VAE's posterior has std ~1, which would bury the colours in sampling noise."""
    from pipeline.tiny_generators import build_tiny

    pipe = build_tiny("sd15", seed=0)
    with torch.no_grad():
        pipe.vae.quant_conv.bias[4:] = -30.0
        b = ColourPairs(1, 64, seed=12345)._make(0)
        lat = torch.cat([pipe.vae.encode(b.pixels_w).latent_dist.mode(), pipe.vae.encode(b.pixels_l).latent_dist.mode()])
    pipe.vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    folder = tmp_path_factory.mktemp("unit-sd15")
    pipe.save_pretrained(folder)
    return str(folder)


def _cfg(out: Path, path: str | None = None, **over) -> object:
    data = {
        "output_dir": str(out), "seed": 3, "device": "cpu",
        "model": {"generator": "tiny-sd15", "path": path},
        "lora": {"rank": 8}, "objective": {"beta": 1000.0}, "optim": {"learning_rate": 3e-3},
        "data": {"paths": ["unused-a-loader-is-injected"]},
        "batch_size": 16, "max_steps": 40, "checkpoint_every": 1000,
    }
    for key, value in over.items():
        if isinstance(value, dict):
            data[key] = {**data.get(key, {}), **value}
        else:
            data[key] = value
    return parse_train_config(data, "test")


def _heldout_accuracy(model, beta: float) -> float:
    accs = []
    model.denoiser.eval()
    with torch.no_grad():
        for i, batch in enumerate(ColourPairs(4, 32, seed=999)):  # pairs never seen in training
            _, stats = train_step(model, model.denoiser, batch, step_generator(77, i, 0, 0), beta=beta, alpha=0.0)
            accs.append(stats["implicit_acc"])
    return sum(accs) / len(accs)


def _rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_learns_a_planted_preference_and_exports_lora(tmp_path, unit_sd15, vipo_cache):
    cfg = _cfg(tmp_path / "run", unit_sd15, cache_dir=str(vipo_cache))
    result = train(cfg, loader=ColourPairs(cfg.max_steps, cfg.batch_size, seed=1))
    assert result.steps == 40 and (tmp_path / "run" / "final" / "pytorch_lora_weights.safetensors").exists()
    rows = _rows(result.metrics_csv)
    assert [int(r["step"]) for r in rows] == list(range(1, 41))
    assert {"loss", "implicit_acc", "reward_margin", "p_mean", "raw_model_loss", "ref_loss", "lr"} <= set(rows[0])
    # step 1 runs on the fresh adapters (B = 0): the policy's denoising error is the reference's, exactly
    assert rows[0]["raw_model_loss"] == rows[0]["ref_loss"] and float(rows[0]["ref_loss"]) > 0
    assert rows[-1]["raw_model_loss"] != rows[-1]["ref_loss"]

    # Load the exported LoRA back through diffusers into a fresh pipeline; reference = a frozen copy
    # of the base. Before loading, policy == reference: every pair is a tie, counted one half (diffusers' rule).
    model = load_train_model("tiny-sd15", path=unit_sd15, lora_rank=None, cache_dir=vipo_cache)
    assert _heldout_accuracy(model, 1000.0) == 0.5
    model.pipe.load_lora_weights(str(result.final_dir))
    acc = _heldout_accuracy(model, 1000.0)
    print(f"held-out implicit accuracy after 40 steps: {acc:.3f}")
    assert acc >= 0.65, f"held-out implicit accuracy {acc:.3f} after training"


@pytest.mark.parametrize("lora", [{"rank": 8}, None])
def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path, vipo_cache, lora):
    over = {"max_steps": 6, "checkpoint_every": 2, "batch_size": 2, "cache_dir": str(vipo_cache), "lora": lora,
            "gradient_accumulation_steps": 2, "optim": {"lr_scheduler": "linear", "warmup_steps": 2}}
    full = train(_cfg(tmp_path / "full", **over), loader=ColourPairs(100, 2, seed=5))

    class Kill(RuntimeError):
        pass

    class KillAt:
        def __init__(self, step):
            self.step, self.done = step, 0

        def start(self, stage, total): ...
        def finish(self, summary): ...

        def advance(self, n=1):
            self.done += n
            if self.done == self.step:
                raise Kill()

    cfg = _cfg(tmp_path / "killed", **over)
    with pytest.raises(Kill):
        train(cfg, KillAt(5), loader=ColourPairs(100, 2, seed=5))  # dies after step 5; last checkpoint: step 4
    ckpts = sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir())
    assert ckpts == ["step-00000002", "step-00000004"]  # atomic: no half-written step-6
    assert len(_rows(tmp_path / "killed" / "metrics.csv")) == 5
    loader = ColourPairs(100, 2, seed=5)
    resumed = train(cfg, loader=loader)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert loader.pos == 12  # 4 steps x 2 micro-batches restored, then 2 more steps: nothing replayed

    weights = "pytorch_lora_weights.safetensors" if lora else "diffusion_pytorch_model.safetensors"
    a = load_file(str(full.final_dir / weights))
    b = load_file(str(resumed.final_dir / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _rows(full.metrics_csv) == _rows(resumed.metrics_csv)
    again = train(cfg, loader=ColourPairs(100, 2, seed=5))  # a finished run restarts as finished
    assert again.resumed_from == 6 and again.steps == 6 and len(_rows(again.metrics_csv)) == 6


def test_sft_then_dpo_and_full_weights_export(tmp_path, vipo_cache):
    from diffusers import UNet2DConditionModel

    cfg = _cfg(tmp_path / "run", lora=None, max_steps=3, batch_size=2, cache_dir=str(vipo_cache),
               objective={"sft_steps": 2, "sft_weight": 0.5}, optim={"optimizer": "adafactor", "learning_rate": 1e-3})
    result = train(cfg, loader=ColourPairs(3, 2))
    rows = _rows(result.metrics_csv)
    assert [r["phase"] for r in rows] == ["sft", "sft", "dpo"]
    assert [float(r["lr"]) for r in rows] == [1e-3] * 3  # constant, no warmup configured
    assert rows[0]["implicit_acc"] == "" and rows[2]["implicit_acc"] != ""
    assert rows[0]["ref_loss"] == "" and float(rows[0]["raw_model_loss"]) > 0 and rows[2]["ref_loss"] != ""
    unet = UNet2DConditionModel.from_pretrained(result.final_dir)
    base = load_train_model("tiny-sd15", lora_rank=None, cache_dir=vipo_cache).denoiser
    moved = [n for n, p in unet.named_parameters() if not torch.equal(p, dict(base.named_parameters())[n])]
    assert moved  # the full weights were trained and saved in diffusers format


def test_data_running_out_stops_early_with_a_note(tmp_path, vipo_cache):
    cfg = _cfg(tmp_path / "run", max_steps=5, batch_size=2, cache_dir=str(vipo_cache), optim={"warmup_steps": 4})
    result = train(cfg, loader=ColourPairs(2, 2))
    assert result.steps == 2 and "data ran out after 2 of 5 steps" in result.last["stopped_early"]
    # constant schedule with linear warmup over 4 steps: step k applies 3e-3 * (k - 1) / 4 (transformers' warmup)
    assert [float(r["lr"]) for r in _rows(result.metrics_csv)] == pytest.approx([0.0, 3e-3 / 4])


class NaNAt(ColourPairs):
    """ColourPairs whose batch `bad` has NaN winner pixels (the VAE passes them on: NaN latents, NaN loss)."""

    def __init__(self, batches: int, batch_size: int, bad: int):
        super().__init__(batches, batch_size)
        self.bad = bad

    def _make(self, i: int) -> PairBatch:
        b = super()._make(i)
        if i == self.bad:
            b.pixels_w[0, 0, 0, 0] = float("nan")
        return b


def test_non_finite_loss_stops_at_once_and_saves_nothing_of_it(tmp_path, vipo_cache):
    from trainer.loop import NonFiniteError

    cfg = _cfg(tmp_path / "run", max_steps=6, batch_size=2, checkpoint_every=2, cache_dir=str(vipo_cache))
    with pytest.raises(NonFiniteError) as err:
        train(cfg, loader=NaNAt(6, 2, bad=2))  # the third batch: step 3
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("train: non-finite loss (nan) at step 3, micro-batch 1 of 1, rank 0, pairs "
                                             "0000000200000000, 0000000200000001; stopped before the optimiser step")
    assert "newest checkpoint: step-00000002" in msg
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002"]
    assert not (run / "final").exists()
    assert [r["step"] for r in _rows(run / "metrics.csv")] == ["1", "2"]
    # the process is usable again (accelerate's state was released): a clean run in bf16
    assert train(_cfg(tmp_path / "ok", max_steps=1, batch_size=2, mixed_precision="bf16", cache_dir=str(vipo_cache)),
                 loader=ColourPairs(1, 2)).steps == 1


def test_non_finite_gradient_stops_before_the_update(tmp_path, vipo_cache, monkeypatch):
    import trainer.loop as loop_module

    calls = []

    def nan_grad_step(model, policy, batch, generator, **kw):
        loss, stats = train_step(model, policy, batch, generator, **kw)
        calls.append(1)
        if len(calls) == 4:  # step 2, second micro-batch: a finite loss whose gradient is NaN
            p = next(q for q in model.denoiser.parameters() if q.requires_grad)
            loss = loss + torch.where(torch.tensor(False), torch.sqrt(-p.square().sum() - 1), torch.zeros(()))
        return loss, stats

    monkeypatch.setattr(loop_module, "train_step", nan_grad_step)
    cfg = _cfg(tmp_path / "run", max_steps=4, batch_size=2, gradient_accumulation_steps=2, checkpoint_every=1,
               cache_dir=str(vipo_cache))
    with pytest.raises(loop_module.NonFiniteError, match=r"^train: non-finite gradient norm \(nan\) at step 2, rank 0, pairs "
                       r"0000000200000000, 0000000200000001, 0000000300000000, 0000000300000001; stopped before"):
        train(cfg, loader=ColourPairs(8, 2))
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000001"]
    assert not (tmp_path / "run" / "final").exists()


def test_scale_lr_multiplies_by_the_pairs_per_step(tmp_path, vipo_cache):
    from trainer.loop import effective_learning_rate

    # Salesforce DiffusionDPO launchers/sd15.sh: --learning_rate=1e-8 --scale_lr, train_batch_size 1,
    # gradient_accumulation_steps 128 on 16 GPUs (2048 pairs a step): 2.048e-5 applied
    paper = _cfg(tmp_path / "p", batch_size=1, gradient_accumulation_steps=128, optim={"learning_rate": 1e-8, "scale_lr": True})
    assert effective_learning_rate(paper, 16) == pytest.approx(1e-8 * 128 * 1 * 16, rel=1e-15)
    assert effective_learning_rate(_cfg(tmp_path / "q", batch_size=4), 8) == 3e-3  # off by default, as in diffusers
    cfg = _cfg(tmp_path / "run", max_steps=2, batch_size=2, gradient_accumulation_steps=2, cache_dir=str(vipo_cache),
               optim={"learning_rate": 1e-3, "scale_lr": True})
    rows = _rows(train(cfg, loader=ColourPairs(4, 2)).metrics_csv)
    assert [float(r["lr"]) for r in rows] == pytest.approx([4e-3, 4e-3], rel=1e-12)  # 1e-3 x 2 micro-batches x 2 pairs


def test_optimizer_flags(vipo_cache):
    from schemas.train_config import OptimConfig

    p = [torch.nn.Parameter(torch.zeros(3))]
    assert type(build_optimizer(OptimConfig(optimizer="adafactor"), p)).__name__ == "Adafactor"
    assert type(build_optimizer(OptimConfig(), p)).__name__ == "AdamW"
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match="needs bitsandbytes"):
            build_optimizer(OptimConfig(optimizer="adamw8bit"), p)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(OptimConfig(), [])


@pytest.mark.parametrize("lora, checkpointing", [({"rank": 2}, True), (None, False)])
def test_bf16_mixed_precision_runs_for_lora_and_full(tmp_path, vipo_cache, lora, checkpointing):
    # accelerate's CPU autocast: frozen parts (and the full fine-tune's reference copy) in bf16
    cfg = _cfg(tmp_path / "run", lora=lora, mixed_precision="bf16", max_steps=2, batch_size=2, cache_dir=str(vipo_cache),
               gradient_checkpointing=checkpointing)
    result = train(cfg, loader=ColourPairs(2, 2))
    rows = _rows(result.metrics_csv)
    assert len(rows) == 2 and all(float(r["loss"]) == float(r["loss"]) for r in rows)  # finite, not NaN


class RandomPairs(ColourPairs):
    """Random pixels of any shape (video: (B, 3, F, H, W)); only the plumbing is under test."""

    def __init__(self, batches: int, shape: tuple[int, ...]):
        super().__init__(batches, shape[0])
        self.shape = shape

    def _make(self, i: int) -> PairBatch:
        g = torch.Generator().manual_seed(i)
        b = self.shape[0]
        return PairBatch(torch.rand(self.shape, generator=g) * 2 - 1, torch.rand(self.shape, generator=g) * 2 - 1,
                         ["a cat walking"] * b, ["motion_quality"] * b, [f"{i:08x}{j:08x}" for j in range(b)])


@pytest.mark.parametrize("generator, shape, pipeline", [
    ("tiny-sd3", (2, 3, 16, 16), "StableDiffusion3Pipeline"),
    ("tiny-wan21", (1, 3, 5, 16, 16), "WanPipeline"),
])
def test_flow_models_train_and_export_loadable_lora(tmp_path, vipo_cache, generator, shape, pipeline):
    import diffusers

    from pipeline.generators import REGISTRY
    from pipeline.models import generator_path

    cfg = _cfg(tmp_path / "run", model={"generator": generator, "max_sequence_length": 8}, lora={"rank": 2},
               objective={"beta": None}, max_steps=2, batch_size=shape[0], cache_dir=str(vipo_cache))
    result = train(cfg, loader=RandomPairs(2, shape))
    assert [r["phase"] for r in _rows(result.metrics_csv)] == ["dpo", "dpo"]
    pipe = getattr(diffusers, pipeline).from_pretrained(generator_path(REGISTRY[generator], vipo_cache))
    pipe.load_lora_weights(str(result.final_dir))
    saved = load_file(str(result.final_dir / "pytorch_lora_weights.safetensors"))
    loaded = [n for n, _ in pipe.transformer.named_parameters() if "lora_A" in n]
    downs = [k for k in saved if "lora_A" in k or "lora.down" in k]
    assert loaded and len(loaded) == len(downs)  # every saved adapter found its layer


def test_preflight_refuses_data_the_model_cannot_take(tmp_path, vipo_cache):
    cfg = _cfg(tmp_path / "run", data={"modality": "video"}, cache_dir=str(vipo_cache))
    with pytest.raises(ValueError, match="data.modality: video pairs need a video model; 'tiny-sd15' is a sd15 image model"):
        train(cfg, loader=ColourPairs(1, 1))
    wan = _cfg(tmp_path / "run", model={"generator": "tiny-wan21"}, data={"modality": "video", "num_frames": 8},
               cache_dir=str(vipo_cache))
    with pytest.raises(ValueError, match=r"data.num_frames: 8; the Wan VAE needs \(num_frames - 1\) % 4 == 0"):
        train(wan, loader=ColourPairs(1, 1))


def test_missing_tracker_is_a_clear_error(tmp_path, vipo_cache):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    cfg = _cfg(tmp_path / "run", report_to="tensorboard", cache_dir=str(vipo_cache))
    with pytest.raises(RuntimeError, match=r"report_to: tensorboard is not installed \(pip install tensorboard, or pip install -e '\.\[logging\]'\)"):
        train(cfg, loader=ColourPairs(1, 1))
