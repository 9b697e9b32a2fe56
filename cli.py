"""vipo's command line: parse, call the library, report. `python cli.py --help` or `vipo --help`."""
from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from typer.core import TyperGroup


def preset(name: str) -> Path:
    """A bundled preset: the checkout's `configs/NAME` when run from a checkout, else the copy a wheel or
    `pip install .` ships as package data (`configs/` is installed as the package `vipo_configs`)."""
    checkout = Path(__file__).resolve().parent / "configs" / name
    if checkout.is_file():
        return checkout
    try:
        return Path(str(files("vipo_configs") / name))
    except ModuleNotFoundError:  # neither a checkout nor an install: the checkout path, for the error message
        return checkout


DEMO_CONFIG = preset("demo.yaml")

console = Console(stderr=True)
_debug = False


# typer 0.29 bundles its own click: its Exit/Abort/usage errors are typer's classes, not click's.
_PASS_THROUGH = (typer.Exit, typer.Abort, typer.TyperException)


class _Guarded(TyperGroup):
    """Every command behind one error boundary (docs/reliability.md, "Errors"): an expected failure is
    `error: <file or key>: <what is wrong>` and exit code 2; a bug, a short traceback, the path of the
    full one, and exit code 3; `--debug` shows the full traceback of both."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except _PASS_THROUGH:
            raise
        except KeyboardInterrupt:
            console.print("interrupted: finished work is kept; run the same command again to resume", highlight=False)
            raise typer.Exit(130) from None
        except Exception as err:
            raise typer.Exit(_report(err)) from None


def _report(err: BaseException) -> int:
    import traceback

    from pipeline.boundary import describe, short_traceback, write_crash_log

    failure = describe(err)
    if _debug:
        console.print("".join(traceback.format_exception(err)), markup=False, highlight=False)
    elif not failure.expected:
        console.print(short_traceback(err), markup=False, highlight=False)
    _error_line(failure.message)
    if not failure.expected:
        log = write_crash_log(err, sys.argv[1] if len(sys.argv) > 1 else "vipo")
        console.print(f"this is a bug in vipo; the full traceback is in {log}" if log else "this is a bug in vipo",
                      markup=False, highlight=False)
    return failure.exit_code


def _error_line(message: str) -> None:
    console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _fail(message: str, code: int = 2) -> None:
    _error_line(message)
    raise typer.Exit(code)


app = typer.Typer(cls=_Guarded, add_completion=False, no_args_is_help=True, help="Build, verify and inspect visual preference datasets.")


@app.callback()
def _options(
    debug: bool = typer.Option(False, "--debug", envvar="VIPO_DEBUG", help="Show the full traceback of any failure."),
) -> None:
    global _debug
    _debug = debug


def _on_cluster(cfg, address: str):
    """The build or audit config with its `ray.address` replaced (configs are frozen)."""
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"address": address})})


class RichReporter:
    """Renders the library's progress reports as one rich bar per stage and a summary line after it."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def start(self, stage: str, total: int) -> None:
        if self.task is not None:  # a step run as several stages (one per generator, per score pool): one bar at a time
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(stage, total=max(total, 1))

    def advance(self, n: int = 1) -> None:
        if self.task is not None:
            self.progress.advance(self.task, n)

    def finish(self, summary) -> None:
        if self.task is not None:
            self.progress.update(self.task, completed=self.progress.tasks[self.task].total, visible=False)
            self.task = None
        self.progress.console.print(escape(summary.line()), highlight=False, soft_wrap=True)


@app.command()
def build(
    config: Path = typer.Option(DEMO_CONFIG, "--config", "-c", help="Build config (YAML). Default: the embedded demo."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Build folder; overrides the config's output_dir."),
    stages: str | None = typer.Option(None, help="Comma-separated stages to (re)run, e.g. score,pair,select."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
    skip_space_check: bool = typer.Option(False, help="Start even if the disk looks too small for the build."),
) -> None:
    """Build a preference dataset: prompts -> generate -> score -> pair -> judge -> select -> write."""
    from pipeline.build import Build, parse_stages
    from schemas.config import load_config

    cfg = load_config(config, {"output_dir": str(out)} if out is not None else None)
    if ray_address:
        cfg = _on_cluster(cfg, ray_address)
    wanted = parse_stages(stages)
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        build = Build(cfg, reporter=RichReporter(progress), source=str(config), check_space=not skip_space_check)
        result = build.run(wanted)
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
        preset("audit-demo.yaml"), "--config", "-c",
        help="Audit config (YAML). Default: five tiny reward models on CPU.",
    ),
    limit: int | None = typer.Option(None, min=1, help="Audit only the first N rows of the input."),
    batch_size: int | None = typer.Option(None, min=1, help="Pairs per model call; overrides resources.batch_size."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
    allow_outside_paths: bool = typer.Option(
        False, "--allow-outside-paths",
        help="Let a jsonl/csv's image paths point outside its folder (absolute, ../, symlinks out). "
             "Off: such rows are skipped unread, so an untrusted file cannot make the audit read your disk.",
    ),
) -> None:
    """Measure how noisy a preference dataset is: reward-model agreement, conflicts, clean/conflicting exports."""
    from pipeline.audit.run import run_audit
    from pipeline.model_sources import check_reward_models
    from schemas.audit import load_audit_config

    cfg = load_audit_config(config)
    check_reward_models(cfg.reward_models, str(config))
    if batch_size is not None:
        cfg = cfg.model_copy(update={"resources": cfg.resources.model_copy(update={"batch_size": batch_size})})
    if ray_address:
        cfg = _on_cluster(cfg, ray_address)
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        result = run_audit(data, out, cfg, limit=limit, reporter=RichReporter(progress),
                           allow_outside=allow_outside_paths)
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

    cfg = load_train_config(config, {"output_dir": str(out)} if out is not None else None)
    columns = (TextColumn("{task.description:<40}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        try:
            result = run_training(cfg, reporter=_TrainReporter(progress))
        except (ConfigError, ValueError, FileNotFoundError, RuntimeError) as err:
            _fail(str(err))
    console.print(f"\n[bold green]done[/] {result.steps} steps; metrics: {result.metrics_csv}; weights: {result.final_dir}",
                  highlight=False)


@app.command("eval")
def eval_(
    config: Path = typer.Option(preset("eval-demo.yaml"), "--config", "-c",
                                help="Eval config (YAML). Default: the tiny demo (base tiny-sd15 vs the train demo's LoRA)."),
    base: str | None = typer.Option(None, help="Base model: a registry generator, a diffusers folder or hub id, or a train run."),
    candidate: list[str] | None = typer.Option(
        None, "--candidate", help="A model to compare (repeatable; replaces the config's candidates): a `cli.py train` "
        "folder, a LoRA folder, a denoiser folder, a diffusers folder or a hub id."),
    prompts: str | None = typer.Option(None, help="held_out (the library's held-out split), a prompt file, or a build folder."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Eval folder; overrides the config's output_dir."),
    ray_address: str | None = typer.Option(None, envvar="RAY_ADDRESS", help="Join this Ray cluster."),
) -> None:
    """Did training help? Base vs candidates on the same prompts and seeds: rewards, win rates, VLM verdicts, report."""
    from pipeline.eval.run import Evaluation
    from schemas.config_io import read_yaml
    from schemas.eval_config import apply_flags, parse_eval_config

    data = apply_flags(read_yaml(config), base=base, candidates=candidate, prompts=prompts,
                       out=str(out) if out is not None else None)
    cfg = parse_eval_config(data, str(config))
    if ray_address:
        cfg = _on_cluster(cfg, ray_address)
    columns = (TextColumn("{task.description:<9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        result = Evaluation(cfg, reporter=RichReporter(progress), source=str(config)).run()
    s = result.summary
    first = s["metrics"][0] if s["metrics"] else None
    console.print(f"\n[bold green]done[/] {len(s['candidates'])} candidate(s) vs {escape(s['base']['name'])}", highlight=False)
    for c in s["candidates"]:
        comp = s["comparisons"][c["name"]]["overall"].get(first) if first else None
        if comp:
            w = comp["win_rate"]
            fmt = lambda x: "n/a" if x is None else f"{x:.3f}"
            fmt_p = lambda x: "n/a" if x is None else f"{x:.3g}"
            console.print(f"  {escape(c['name'])}: {first} win rate {fmt(w['estimate'])} [{fmt(w['low'])}, {fmt(w['high'])}], "
                          f"sign test p = {fmt_p(comp['sign_test_p'])}", highlight=False)
    console.print(f"  report:  {result.report}\n  summary: {result.out_dir / 'summary.json'}\n"
                  f"  scores:  {result.out_dir / 'scores.parquet'}", highlight=False)


@app.command()
def annotate(
    path: Path = typer.Argument(..., help="A build folder or an audit folder (pairs are sampled from it), or a study folder (served as it is)."),
    sample: int = typer.Option(200, min=1, help="Pairs to sample, stratified by category."),
    study: Path | None = typer.Option(None, help="Where the study goes; default <build or audit>/study (a build's card then gets its figures)."),
    repeat_share: float = typer.Option(0.1, min=0.0, max=0.5, help="Share of pairs each annotator sees twice (self-consistency)."),
    seed: int = typer.Option(0, help="Seed of the sample, of each annotator's order and left/right sides."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 keeps the page on this machine."),
    port: int = typer.Option(8765, min=1, max=65535, help="Port of the annotation page."),
    no_serve: bool = typer.Option(False, "--no-serve", help="Only sample the study folder."),
) -> None:
    """Human study: sample pairs of a built dataset (or an audit's rows) and serve a local page for people to vote on."""
    from pipeline.study.sample import sample_audit, sample_build
    from schemas.study import STUDY_FILE

    if not path.exists():
        _fail(f"{path}: no such folder")
    folder = path
    if not (path / STUDY_FILE).is_file():
        folder = study or path / "study"
        audit = (path / "summary.json").is_file() and (path / "scores").is_dir()  # a `cli.py audit` output folder
        made = (sample_audit if audit else sample_build)(path, folder, sample, seed=seed, repeat_share=repeat_share)
        per_cat = ", ".join(f"{c} {n}" for c, n in made.by_category.items())
        console.print(f"[bold green]sampled[/] {made.pairs} pairs into {folder} ({escape(per_cat)})", highlight=False)
    if no_serve:
        console.print(f"  serve it: python cli.py annotate {folder}", highlight=False)
        return
    from pipeline.study.server import serve

    console.print(f"annotation page: http://{host}:{port}/  (votes land in {folder / 'votes'}; Ctrl-C stops)\n"
                  f"  then: python cli.py agreement {folder}", highlight=False)
    serve(folder, host=host, port=port)


@app.command()
def agreement(
    study: Path = typer.Argument(..., help="A study folder made by `cli.py annotate`."),
    min_votes: int = typer.Option(2, min=1, help="Voters a pair needs before its majority counts."),
    resamples: int = typer.Option(2000, min=100, help="Bootstrap resamples per interval."),
) -> None:
    """How far the annotators agree with each other, and each rater with them: summary.json and report.html."""
    from pipeline.study.run import run_agreement

    result = run_agreement(study, min_votes=min_votes, resamples=resamples)
    s = result.summary
    pct = lambda iv: "n/a" if not iv or iv.get("estimate") is None else f"{100 * iv['estimate']:.1f}%"
    console.print(f"[bold green]done[/] {s['votes']} votes by {len(s['annotators'])} annotators on {s['pairs']} pairs; "
                  f"annotators agree with the majority of the others on {pct(s['annotator_agreement']['mean'])}", highlight=False)
    for rater, r in s["raters"].items():
        console.print(f"  {rater:<12} agrees with the human majority on {pct(r['overall'])}", highlight=False)
    console.print(f"  report:  {result.report}\n  summary: {result.summary_path}", highlight=False)
    if result.card is not None:
        console.print(f"  card:    {result.card} (section 'Human study')", highlight=False)


if __name__ == "__main__":
    sys.exit(app())
