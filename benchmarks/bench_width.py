"""Benchmark: width golf (issue 16) on SmolLM2-135M, no training.

1. The vocabulary cost curve: bits per byte at full depth against the kept vocabulary (the most
   frequent tokens of the trim corpus, closed under BPE merges), on held-out text inside the trim
   corpus's domains (KJV Ruth 3-4, stdlib code, Python-docs prose) and outside them (the US
   Constitution, Debian ``miscfiles``: prose from a source the corpus lacks; ``apt-get install
   miscfiles``, and the column is left out when the file is absent).
2. Width pruning at < 100M parameters from the vocabulary-trimmed parent (``darwin prune``),
   uniform widths: FFN neurons by several scores, with and without the least-squares re-fit, and
   attention groups traded for FFN width.

Calibration and trim corpus: the training texts of ``examples/smollm2-bible-code`` (KJV without
Ruth, stdlib training code) and Python-docs topics that are neither held out nor used for search;
never the held-out texts. Held-out scoring: first 2048 tokens of each text, 1024-token windows
(the same as ``bench_golf.py``, so the parent's figures equal RESULTS.md (e)).

Usage::

    .venv/bin/python benchmarks/bench_width.py [--curve] [--prune] [--tokens 32768]

Results: ``benchmarks/_work/width/results.json`` and a markdown table on stdout; the curve plot
``benchmarks/_work/width/vocab_curve.png``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "examples" / "smollm2-bible-code"))
CONSTITUTION = Path("/usr/share/state/us-constitution.gz")
TEXTS = ("kjv", "code", "prose", "constitution")


def texts(data: Path, work: Path) -> dict[str, Path]:
    """Held-out files by name (the out-of-corpus one written from the Debian file)."""
    out = {n: data / f"heldout_{n}.txt" for n in ("kjv", "code", "prose")}
    if CONSTITUTION.exists():
        out["constitution"] = work / "heldout_constitution.txt"
        out["constitution"].write_text(gzip.decompress(CONSTITUTION.read_bytes()).decode("utf-8", "replace"))
    return out


def bpb(folder: Path, held: dict[str, Path]) -> dict:
    """Parameters and bits per byte on each held-out text."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.perplexity import BitsPerByteFitness

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out: dict = {"parameters": sum(p.numel() for p in model.parameters()), "vocab": model.config.vocab_size}
    for name, f in held.items():
        fit = BitsPerByteFitness([f], max_tokens=2048, window=1024, batch_size=1)
        total, count = fit.nll_sum(model, tok)
        out[name] = round(total / math.log(2) / fit.predicted_bytes(tok), 4)
        out[f"{name}_ce"] = round(total / count, 4)  # nats per token (only comparable within one vocabulary)
    return out


def trimmed_to(src: Path, corpus: list[Path], size: int, out: Path) -> Path:
    """``src`` with the ``size`` most frequent corpus tokens kept (plus what consistency needs)."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    from darwin.arch.vocab import trim_bpe_tokenizer
    from darwin.io.checkpoint import Checkpoint
    from darwin.plan.trim import _copy_side_files

    if (out / "config.json").exists():
        return out
    tok = AutoTokenizer.from_pretrained(src)
    counts = torch.zeros(len(tok), dtype=torch.long)
    for f in corpus:
        ids = tok(f.read_text(), add_special_tokens=False).input_ids
        counts += torch.bincount(torch.tensor(ids), minlength=len(tok))[: len(tok)]
    keep = set(torch.argsort(-counts, stable=True)[:size].tolist())
    tj, kept = trim_bpe_tokenizer(json.loads((src / "tokenizer.json").read_text()), keep)
    ck = Checkpoint(src)
    cfg = dict(ck.config)
    rows = torch.tensor(kept)
    out.mkdir(parents=True)
    save_file({n: (ck.get(n).index_select(0, rows) if ck.meta[n].shape[0] == cfg["vocab_size"] else ck.get(n))
               .contiguous() for n in ck.tensor_names}, str(out / "model.safetensors"), metadata={"format": "pt"})
    new_id = {o: i for i, o in enumerate(kept)}
    for k in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if isinstance(cfg.get(k), int):
            cfg[k] = new_id.get(cfg[k], 0)
    cfg["vocab_size"] = len(kept)
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    _copy_side_files(src, out, new_id)  # tokenizer_config ids and generation config, remapped
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--curve", action="store_true", help="the vocabulary cost curve")
    ap.add_argument("--prune", action="store_true", help="width pruning variants at the budget")
    ap.add_argument("--golf", action="store_true", help="the shipped one-command child: darwin golf (width) "
                    "from SmolLM2-135M with the trim corpus")
    ap.add_argument("--allocate", action="store_true", help="per-layer FFN widths (in memory, not shippable): "
                    "uniform vs a sensitivity table solved by DP vs the level-switch search, by KL on calibration")
    ap.add_argument("--tokens", type=int, default=32768, help="calibration tokens")
    ap.add_argument("--max-params", default="100M")
    ap.add_argument("--only", default="", help="run only the prune variants whose key contains one of these "
                    "comma-separated strings (e.g. 'sequential,second_moment')")
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "width")
    args = ap.parse_args()
    from data import golf_corpus, write_splits
    from transformers.utils import logging as hf_logging

    import darwin
    from darwin.search.config import parse_count
    from darwin.zoo import build as zoo_build

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cache = REPO / ".cache"
    smol = zoo_build("smollm2", cache / "zoo" / "smollm2")
    data = cache / "smollm2-bible-code" / "data"
    if not (data / "heldout_prose.txt").exists():
        write_splits(data)
    args.work.mkdir(parents=True, exist_ok=True)
    corpus = golf_corpus(data, args.work)
    held = texts(data, args.work)
    res_path = args.work / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}

    def record(key: str, fn) -> dict:
        if key not in results:
            t0 = time.perf_counter()
            results[key] = {**fn(), "seconds": round(time.perf_counter() - t0, 1)}
            res_path.write_text(json.dumps(results, indent=1))
            print(key, results[key], flush=True)
        return results[key]

    base = record("parent", lambda: bpb(smol, held))
    if args.curve:
        for size in (8000, 12000, 16000, 20000, 24000, 32000):
            folder = trimmed_to(smol, corpus, size, args.work / f"vocab-{size}")
            record(f"vocab {size}", lambda folder=folder: bpb(folder, held))
        plot_curve(results, base, args.work / "vocab_curve.png")
    if args.prune:
        trimmed = args.work / "trimmed"
        if not (trimmed / "config.json").exists():
            darwin.trim_vocab(smol, [str(c) for c in corpus], trimmed)
        record("trimmed", lambda: bpb(trimmed, held))
        budget = parse_count(args.max_params, "max_params")
        variants = [("magnitude", False, None, False), ("flap", False, None, False), ("flap", True, None, False),
                    ("second_moment", True, None, False), ("leverage", True, None, False), ("obs", True, None, False),
                    ("second_moment", True, 2, False), ("second_moment", True, None, True),
                    ("second_moment", True, 2, True)]
        for score, refit, groups, seq in variants:
            key = f"prune {score} refit={refit} groups={groups or 3}" + (" sequential" if seq else "")
            if args.only and not any(o in key for o in args.only.split(",")):
                continue
            out = args.work / key.replace(" ", "_").replace("=", "")

            def run(score=score, refit=refit, groups=groups, seq=seq, out=out) -> dict:
                r = darwin.prune(trimmed, out, calibration=[str(c) for c in corpus], max_params=budget,
                                 groups=groups, score=score, refit=refit, tokens=args.tokens, force=True,
                                 sequential=seq, progress=False, device="cpu")
                return {"ffn": r.plan.ffn, "groups": r.plan.groups, **bpb(out, held)}
            record(key, run)
    if args.golf:
        def golf_run() -> dict:  # the command of docs/golf.md, timed as a user runs it
            from data import write_golf_corpus

            folder = write_golf_corpus(args.work / "golf-corpus", data)
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "darwin", "golf", str(smol), "-o", str(args.work / "golf"),
                            "--max-params", args.max_params, "--min-context", "1028", "--trim-corpus", str(folder),
                            "--tokens", str(args.tokens), "--device", "cpu", "--force"], check=True)
            wall = time.perf_counter() - t0
            run = json.loads((args.work / "golf" / "golf.json").read_text())
            return {"ffn": run["ffn"], "groups": run["groups"], "command_wall_s": round(wall, 1),
                    "context_checked": run["constraints"]["window_tokens"], **bpb(args.work / "golf" / "child", held)}
        record("darwin golf (width, one command)", golf_run)
    if args.allocate:
        trimmed = args.work / "trimmed"
        if not (trimmed / "config.json").exists():
            darwin.trim_vocab(smol, [str(c) for c in corpus], trimmed)
        budget = parse_count(args.max_params, "max_params")
        record("allocation", lambda: allocation(trimmed, corpus, held, budget, args.tokens))
    print(table({k: v for k, v in results.items() if k != "allocation"}, base))
    if "allocation" in results:
        print(allocation_table(results["allocation"], base))


def allocation(trimmed: Path, corpus: list[Path], held: dict[str, Path], budget: int, tokens: int) -> dict:
    """Uniform vs DP vs level-switch search per-layer FFN widths at the same total width (the
    uniform budget's), scored by KL on 2 calibration windows the statistics did not use, then on
    the held-out texts (in memory: per-layer widths have no stock config)."""
    import torch
    from rich.progress import Progress
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.diagnosis.calibrate import collect_stats
    from darwin.fitness.perplexity import BitsPerByteFitness
    from darwin.plan.allocate import dp_allocation, level_switch_search
    from darwin.plan.width import widest_ffn
    from darwin.search.allocate import FfnAllocator, Levels
    from darwin.search.prune import calibration_windows

    model = AutoModelForCausalLM.from_pretrained(trimmed, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(trimmed)
    wins = calibration_windows(tok, [str(c) for c in corpus], tokens + 1024, 512)
    stats = collect_stats(model, wins[:-2], roles=("ffn",))["ffn"]
    cfg = json.loads((trimmed / "config.json").read_text())
    L = cfg["num_hidden_layers"]
    levels = Levels(widest_ffn(cfg, cfg["num_key_value_heads"], budget), step=64, span=4)
    alloc = FfnAllocator(model, stats, wins[-2:], levels)
    out: dict = {"uniform_ffn": levels.uniform, "step": levels.step, "span": levels.span}
    with Progress() as bar:
        t0 = time.perf_counter()
        job = bar.add_task("sensitivity", total=L * (levels.top + 1))
        sens = alloc.sensitivity(lambda: bar.advance(job))
        out["sensitivity_seconds"] = round(time.perf_counter() - t0, 1)
        plans = {"uniform": [levels.span] * L, "dp": dp_allocation(sens, L * levels.span)}
        t0 = time.perf_counter()
        job = bar.add_task("search", total=None)
        res = level_switch_search(alloc.kl, plans["uniform"], levels.top, generations=16, offspring=6, seed=0,
                                  progress=lambda: bar.advance(job))
        out["search_seconds"], out["search_evaluations"] = round(time.perf_counter() - t0, 1), res.evaluations
        plans["search"] = res.levels
    for name, lv in plans.items():
        assert sum(alloc.widths(lv)) == L * levels.uniform  # the same parameter count
        row: dict = {"widths": alloc.widths(lv), "kl": round(alloc.kl(lv), 5)}
        for text, f in held.items():
            row[text] = round(BitsPerByteFitness([f], max_tokens=2048, window=1024, batch_size=1)
                              .bits_per_byte(model, tok), 4)
        out[name] = row
    alloc.restore()
    return out


def allocation_table(res: dict, base: dict) -> str:
    """Markdown: KL on calibration and held-out bits per byte per allocation."""
    names = [t for t in TEXTS if t in base]
    rows = ["| allocation (FFN widths per layer) | KL (nats/token) | " + " | ".join(names) + " | mean in-corpus |",
            "|---" * (len(names) + 3) + "|"]
    for key in ("uniform", "dp", "search"):
        r = res[key]
        rel = [r[n] / base[n] - 1 for n in names]
        inside = sum(r[n] / base[n] - 1 for n in ("kjv", "code", "prose")) / 3
        w = r["widths"]
        rows.append(f"| {key} ({min(w)}–{max(w)}) | {r['kl']:.5f} | " + " | ".join(f"{x:+.1%}" for x in rel)
                    + f" | {inside:+.1%} |")
    return "\n".join(rows)


def table(results: dict, base: dict) -> str:
    """Markdown: parameters and bits per byte, relative to the parent."""
    names = [t for t in TEXTS if t in base]
    rows = ["| model | params | " + " | ".join(names) + " | mean in-corpus |", "|---" * (len(names) + 3) + "|"]
    for key, r in results.items():
        rel = [r[n] / base[n] - 1 for n in names]
        inside = [r[n] / base[n] - 1 for n in ("kjv", "code", "prose")]
        cells = [f"{r[n]:.4f}" if key == "parent" else f"{x:+.1%}" for n, x in zip(names, rel)]
        mean = "–" if key == "parent" else f"{sum(inside) / 3:+.1%}"
        rows.append(f"| {key} | {r['parameters']:,} | " + " | ".join(cells) + f" | {mean} |")
    return "\n".join(rows)


def plot_curve(results: dict, base: dict, path: Path) -> None:
    """Relative bits per byte against the kept vocabulary, one line per held-out text."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted(int(k.split()[1]) for k in results if k.startswith("vocab "))
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for n in TEXTS:
        if n in base:
            ax.plot(sizes, [100 * (results[f"vocab {s}"][n] / base[n] - 1) for s in sizes], marker="o",
                    label=n + (" (outside the corpus)" if n == "constitution" else ""))
    ax.set_xlabel("kept vocabulary (tokens)")
    ax.set_ylabel("bits per byte vs SmolLM2-135M (%)")
    ax.set_title("Vocabulary trimming cost, full depth, no training")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
