"""Benchmark: the same ``darwin evolve`` run under this checkout and under another commit, interleaved.

The speed of a change is a ratio against the previous commit measured in one run: each round runs
the base commit and then this checkout (and the reverse order the next round) as separate
processes on the same parents, genome, seed and fitness, and compares the median per-candidate
``seconds`` of ``history.jsonl`` (merge into the resident model + fitness) and the wall time of the
whole run. The base commit is exported with ``git archive`` into the work folder and put first on
``PYTHONPATH``; both use this checkout's virtualenv.

Scales: ``tiny`` (demo models, hidden 32: the loop's own overhead dominates) and ``smollm2``
(synthetic SmolLM2-135M-shaped bf16 parents of bench_merge.py: the merge dominates), both with
the mean NLL of a fixed 256-token sequence as fitness (one forward pass), and ``demo``: the
SmolLM2 example's real parents, base and search fitness (perplexity on 2 × 1024 tokens; MRI off,
4 × 2 candidates), each commit with its own defaults (this checkout scores in bf16 where the CPU
runs it natively). The script reports whether the histories' fitness values are identical and
their largest difference.

Usage::

    .venv/bin/python benchmarks/bench_commits.py --base 13345cb [--scale tiny|smollm2|demo|both] [--rounds 2]
        [--fitness fixed_nll|constant] [--with-base]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

FITNESS = '''
import torch

_IDS = torch.randint(0, 384, (1, 256), generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def fixed_nll(model, tokenizer):
    ids = _IDS % model.config.vocab_size
    return -float(model(input_ids=ids, labels=ids).loss)


def constant(model, tokenizer):
    return 0.0
'''

RUN = "import sys, darwin; darwin.evolve(sys.argv[1], sys.argv[2], force=True, progress=False, write_outputs=False)"


def export(rev: str, dest: Path) -> Path:
    """``git archive rev`` into ``dest`` (reused when present)."""
    if not (dest / "darwin" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "darwin"], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def demo_config(population: int, generations: int) -> dict:
    """The SmolLM2 example's parents.yaml with absolute cache paths, MRI off, a small budget."""
    import yaml

    cache = Path(os.environ.get("DARWIN_CACHE", REPO / ".cache"))
    text = (REPO / "examples" / "smollm2-bible-code" / "parents.yaml").read_text().replace("../../.cache", str(cache))
    cfg = yaml.safe_load(text)
    cfg["mri"] = {"enabled": False}
    cfg["search"].update(population=population, generations=generations)
    return cfg


def parents(scale: str, work: Path) -> tuple[str, str, str]:
    if scale == "tiny":
        from darwin.demo import build_demo_models

        d = build_demo_models(work / "tiny")
        return str(d["parent_a"]), str(d["parent_b"]), str(d["base"])
    from bench_merge import build_parents

    folders = build_parents(work / "synthetic")
    return str(folders[1]), str(folders[2]), str(folders[0])


def config(a: str, b: str, fitness_file: Path, population: int, generations: int, fitness: str = "fixed_nll",
           base: str | None = None) -> dict:
    return {"parents": [a, b], "genome": "darwin14", "mri": {"enabled": False},
            "fitness": [{"python": f"{fitness_file}:{fitness}"}], "base": base,
            "search": {"population": population, "generations": generations, "seed": 0},
            "dtype": "float32", "device": "cpu"}


def one_run(tree: Path, cfg_file: Path, out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    t0 = time.perf_counter()
    # cwd = the tree: ``python -c`` puts the working directory first on sys.path, so running from the
    # repository would import this checkout's darwin whatever PYTHONPATH says
    subprocess.run([sys.executable, "-c", RUN, str(cfg_file), str(out)], check=True, env=env, cwd=str(tree))
    wall = time.perf_counter() - t0
    hist = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    secs = [c["seconds"] for h in hist for c in h["candidates"]]
    fits = [c["fitness"] for h in hist for c in h["candidates"]]
    return {"wall_s": wall, "median_candidate_s": statistics.median(secs), "fitness": fits}


def bench(scale: str, base: Path, work: Path, rounds: int, fitness: str = "fixed_nll", with_base: bool = False) -> dict:
    pop, gens = (10, 20) if scale == "tiny" else (4, 2)
    cfg_file = work / f"parents-{scale}.json"
    if scale == "demo":
        cfg_file.write_text(json.dumps(demo_config(pop, gens)))
    else:
        a, b, parent_base = parents(scale, work)
        fit = work / "fitness_fixed_nll.py"
        fit.write_text(FITNESS)
        cfg_file.write_text(json.dumps(config(a, b, fit, pop, gens, fitness, parent_base if with_base else None)))
    trees = {"base": base, "this checkout": REPO}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(rounds):
        order = list(trees) if r % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(one_run(trees[name], cfg_file, work / f"run-{scale}-{name.replace(' ', '_')}"))
    same = runs["base"][0]["fitness"] == runs["this checkout"][0]["fitness"]
    diff = max(abs(x - y) for x, y in zip(runs["base"][0]["fitness"], runs["this checkout"][0]["fitness"]))
    med = {k: statistics.median(x["median_candidate_s"] for x in v) for k, v in runs.items()}
    wall = {k: statistics.median(x["wall_s"] for x in v) for k, v in runs.items()}
    return {"scale": scale, "candidates": pop * gens, "rounds": rounds,
            "median_candidate_s": {k: round(v, 4) for k, v in med.items()},
            "wall_s": {k: round(v, 2) for k, v in wall.items()},
            "candidate_ratio_new_over_base": round(med["this checkout"] / med["base"], 3),
            "wall_ratio_new_over_base": round(wall["this checkout"] / wall["base"], 3),
            "identical_fitness": same, "max_fitness_difference": diff}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", required=True, help="commit to compare against (e.g. the previous one)")
    ap.add_argument("--scale", choices=["tiny", "smollm2", "demo", "both"], default="both")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fitness", choices=["fixed_nll", "constant"], default="fixed_nll",
                    help="constant: history seconds are the merge alone (the issue's per-candidate merge metric)")
    ap.add_argument("--with-base", action="store_true", help="give the parents' base (DARE-TIES task vectors)")
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "commits")
    args = ap.parse_args()
    args.work = args.work.resolve()  # the runs' working directory is the tree, not here
    args.work.mkdir(parents=True, exist_ok=True)
    rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", args.base], check=True,
                         capture_output=True, text=True).stdout.strip()
    base = export(rev, args.work / f"tree-{rev}")
    scales = ["tiny", "smollm2"] if args.scale == "both" else [args.scale]
    print(json.dumps({"base": rev, "fitness": args.fitness, "with_base": args.with_base,
                      "results": [bench(s, base, args.work, args.rounds, args.fitness, args.with_base) for s in scales]},
                     indent=2))


if __name__ == "__main__":
    main()
