"""vipo's command line: parse, call the library, report. `python cli.py --help` or `vipo --help`."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

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
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Build folder; overrides the config's output_dir."),
    stages: Optional[str] = typer.Option(None, help="Comma-separated stages to (re)run, e.g. score,pair,select."),
    ray_address: Optional[str] = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
) -> None:
    """Build a preference dataset: prompts -> generate -> score -> pair -> judge -> select -> write."""
    from pipeline.build import Build, StageInputError, parse_stages
    from pipeline.ray_runtime import ResourceError
    from schemas.config import ConfigError, load_config

    overrides = {}
    if out is not None:
        overrides["output_dir"] = str(out)
    try:
        cfg = load_config(config, overrides)
        if ray_address:
            cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": ray_address})})
        wanted = parse_stages(stages)
    except (ConfigError, ValueError) as err:
        _fail(str(err))
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            result = Build(cfg, reporter=RichReporter(progress), source=str(config)).run(wanted)
        except (ConfigError, StageInputError, ResourceError) as err:
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


if __name__ == "__main__":
    sys.exit(app())
