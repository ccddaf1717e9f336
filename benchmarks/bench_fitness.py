"""Benchmark: perplexity fitness in bfloat16 vs float32 on the SmolLM2 demo's search texts.

For the zoo SmolLM2-135M base, the demo's two fine-tuned parents (cached by
``examples/smollm2-bible-code``), the demo's two uniform merges (linear 0.5, TIES density 0.5 over
the base: the same recipes as run_demo.py) and, with ``--child``, an evolved child folder, the
demo's search fitness (perplexity on ``search_kjv.txt`` and
``search_code.txt``, 1024 tokens each, windows of 512) is computed with the resident model in
float32 and in bfloat16: seconds per fitness call (median of ``--repeat``), the fitness values,
their bf16 − fp32 difference, and whether the models keep their order.

Usage::

    .venv/bin/python benchmarks/bench_fitness.py [--repeat 3] [--child runs/smollm2-demo/run/child]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("DARWIN_CACHE", HERE.parent / ".cache"))


def uniform_merges(models: dict[str, Path], work: Path) -> dict[str, Path]:
    """The demo's uniform linear 0.5 and TIES merges (run_demo.py's recipes), built once into ``work``."""
    import darwin

    a, b, base = (str(models[k]) for k in ("parent A (KJV)", "parent B (code)", "base"))
    recipes = {"uniform linear 0.5": {"merge_method": "linear", "dtype": "float32", "models": [
                   {"model": a, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.5}}]},
               "uniform TIES": {"merge_method": "ties", "base_model": base, "dtype": "float32", "models": [
                   {"model": a, "parameters": {"weight": 1.0, "density": 0.5}},
                   {"model": b, "parameters": {"weight": 1.0, "density": 0.5}}]}}
    out = {}
    for name, rec in recipes.items():
        folder = work / name.replace(" ", "-").replace(".", "")
        if not (folder / "config.json").exists():
            darwin.merge(rec, folder, force=True, progress=False)
        out[name] = folder
    return out


def main() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.perplexity import PerplexityFitness

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--child", type=Path, help="an evolved child folder to include")
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "fitness")
    args = ap.parse_args()
    data = CACHE / "smollm2-bible-code" / "data"
    models = {"base": CACHE / "zoo" / "smollm2", "parent A (KJV)": CACHE / "smollm2-bible-code" / "parents" / "kjv",
              "parent B (code)": CACHE / "smollm2-bible-code" / "parents" / "code"}
    models.update(uniform_merges(models, args.work))
    if args.child:
        models["evolved child"] = args.child
    fits = [PerplexityFitness([data / f"search_{d}.txt"], max_tokens=1024, window=512) for d in ("kjv", "code")]
    tok = AutoTokenizer.from_pretrained(models["base"])
    rows: dict[str, dict] = {}
    for name, path in models.items():
        row: dict = {}
        for dt in (torch.float32, torch.bfloat16):
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dt).eval()
            secs, val = [], 0.0
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                val = sum(f(model, tok) for f in fits) / len(fits)
                secs.append(time.perf_counter() - t0)
            row[str(dt).removeprefix("torch.")] = {"fitness": round(val, 5), "seconds": round(statistics.median(secs), 3)}
        row["delta_bf16_minus_fp32"] = round(row["bfloat16"]["fitness"] - row["float32"]["fitness"], 5)
        row["speedup"] = round(row["float32"]["seconds"] / row["bfloat16"]["seconds"], 2)
        rows[name] = row
    order = {dt: sorted(rows, key=lambda n: rows[n][dt]["fitness"]) for dt in ("float32", "bfloat16")}
    print(json.dumps({"models": rows, "same_order": order["float32"] == order["bfloat16"],
                      "threads": torch.get_num_threads()}, indent=1))


if __name__ == "__main__":
    main()
