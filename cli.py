"""vipo's command line: parse, call the library, report. `python cli.py --help` or `vipo --help`."""
from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build, verify and inspect visual preference datasets.")
console = Console(stderr=True)


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _on_cluster(cfg, address: str):
    """The build or audit config with its `ray.address` replaced (configs are frozen)."""
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": address})})


class RichReporter:
    """Renders the library's progress reports as one rich bar per stage and a summary line after it."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def start(self, stage: str, total: int) -> None:
        self.task = self.progress.add_task(stage, total=max(total, 1))

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self, summary) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total, visible=False)
            self.task = None
        self.progress.console.print(summary.line(), highlight=False, soft_wrap=True)


@app.command()
def build(
    config: Path = typer.Option(DEMO_CONFIG, "--config", "-c", help="Build config (YAML). Default: the embedded demo."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Build folder; overrides the config's output_dir."),
    stages: str | None = typer.Option(None, help="Comma-separated stages to (re)run, e.g. score,pair,select."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
) -> None:
    """Build a preference dataset: prompts -> generate -> score -> pair -> judge -> select -> write."""
    from pipeline.build import Build, StageInputError, parse_stages
    from pipeline.errors import StageFailed
    from pipeline.ray_runtime import ResourceError
    from schemas.config import ConfigError, load_config

    overrides = {}
    if out is not None:
        overrides["output_dir"] = str(out)
    try:
        cfg = load_config(config, overrides)
        if ray_address:
            cfg = _on_cluster(cfg, ray_address)
        wanted = parse_stages(stages)
    except (ConfigError, ValueError) as err:
        _fail(str(err))
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            result = Build(cfg, reporter=RichReporter(progress), source=str(config)).run(wanted)
        except (ConfigError, StageInputError, StageFailed, ResourceError) as err:
            _fail(str(err))
    shards = result.out_dir / "shards"
    console.print(f"\n[bold green]done[/] build folder: {result.out_dir}")
    if result.manifests:
        for modality, man in sorted(result.manifests.items()):
            console.print(f"  {modality}: {man['num_samples']} pairs in {len(man['shards'])} shard(s) under {shards / modality}")
        console.print(f"  card: {result.card}")
        console.print(f"  check it: python cli.py verify {result.out_dir}")


@app.command()
def verify(path: Path = typer.Argument(..., help="A build folder or its shards/ folder.")) -> None:
    """Check shards against the format contract; exits 1 with the list of problems."""
    from pipeline.verify import balance_report, verify_dataset

    if not path.exists():
        _fail(f"{path}: no such folder")
    problems = verify_dataset(path)
    for p in problems + balance_report(path):  # warnings (short of quota) do not fail verify
        print(p)
    if problems:
        console.print(f"[bold red]{len(problems)} problem(s)[/]")
        raise typer.Exit(1)
    console.print(f"[bold green]ok[/] {path} matches the shard format")


@app.command()
def inspect(path: Path = typer.Argument(..., help="A build folder or its shards/ folder.")) -> None:
    """Counts per category, generator pair and reward-model agreement."""
    from pipeline.summary import summarise

    if not path.exists():
        _fail(f"{path}: no such folder")
    report = summarise(path)
    if not report:
        _fail(f"{path}: no shards found")
    out = Console()
    for modality, info in report.items():
        out.print(f"[bold]{modality}[/]: {info['samples']} pairs in {info['shards']} shard(s)")
        for title, counts in (("category", info["categories"]), ("winner > loser", info["generator_pairs"]),
                              ("agreement", info["agreement"])):
            t = Table(title_justify="left")
            t.add_column(title)
            t.add_column("pairs", justify="right")
            for k, v in counts.items():
                t.add_row(k, str(v))
            out.print(t)


@app.command()
def audit(
    data: Path = typer.Argument(..., help="Pick-a-Pic parquet file or folder, a folder of vipo shards, or a jsonl/csv of pairs."),
    out: Path = typer.Option(..., "--out", "-o", help="Output folder: summary.json, report.html, consistent/conflicting.parquet."),
    config: Path = typer.Option(
        Path(__file__).resolve().parent / "configs" / "audit-demo.yaml", "--config", "-c",
        help="Audit config (YAML). Default: five tiny reward models on CPU.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Audit only the first N rows of the input."),
    batch_size: int | None = typer.Option(None, min=1, help="Pairs per model call; overrides resources.batch_size."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
) -> None:
    """Measure how noisy a preference dataset is: reward-model agreement, conflicts, clean/conflicting exports."""
    from pipeline.audit.read import AuditInputError
    from pipeline.audit.run import run_audit
    from pipeline.ray_runtime import ResourceError
    from schemas.audit import load_audit_config
    from schemas.config import ConfigError

    try:
        cfg = load_audit_config(config)
        if batch_size is not None:
            cfg = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"batch_size": batch_size})})
        if ray_address:
            cfg = _on_cluster(cfg, ray_address)
    except ConfigError as err:
        _fail(str(err))
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            result = run_audit(data, out, cfg, limit=limit, reporter=RichReporter(progress))
        except (AuditInputError, ResourceError) as err:
            _fail(str(err))
    s = result.summary
    n = len(s["reward_models"])
    pct = lambda x: "n/a" if x is None else f"{100 * x:.2f}%"
    console.print(f"\n[bold green]done[/] {s['pairs_scored']} of {s['pairs_read']} pairs scored; "
                  f"all {n} agree with each other on {pct(s['all_agree_with_each_other']['share'])}, "
                  f"with the label on {pct(s['all_agree_with_label']['share'])}", highlight=False)
    console.print(f"  report:  {result.report}\n  summary: {result.out_dir / 'summary.json'}\n"
                  f"  exports: consistent.parquet ({s['exports']['consistent']} rows), "
                  f"conflicting.parquet ({s['exports']['conflicting']} rows)", highlight=False)


class _TrainReporter(RichReporter):
    """The stage bar, with the latest loss / implicit accuracy / p in its description."""

    def metrics(self, row: dict) -> None:
        if self.task is not None and "implicit_acc" in row:
            text = f"train loss {row['loss']:.4f} acc {row['implicit_acc']:.2f} p {row['p_mean']:.2f}"
        elif self.task is not None:
            text = f"sft loss {row['loss']:.4f}"
        else:
            return
        self.progress.update(self.task, description=text)


@app.command()
def train(
    config: Path = typer.Option(..., "--config", "-c", help="Train config (YAML), e.g. configs/train-demo.yaml."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Run folder; overrides the config's output_dir."),
) -> None:
    """Fine-tune a diffusion model with Poly-DPO on preference pairs (resumes from the latest checkpoint)."""
    from schemas.config import ConfigError
    from schemas.train_config import load_train_config
    from trainer.loop import train as run_training

    try:
        cfg = load_train_config(config, {"output_dir": str(out)} if out is not None else None)
    except ConfigError as err:
        _fail(str(err))
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            result = run_training(cfg, reporter=_TrainReporter(progress))
        except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
            _fail(str(err))
    console.print(f"\n[bold green]done[/] {result.steps} steps; metrics: {result.metrics_csv}; weights: {result.final_dir}",
                  highlight=False)


if __name__ == "__main__":
    sys.exit(app())
