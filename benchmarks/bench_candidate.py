"""Benchmark: seconds per evolve candidate merge (darwin14, base given), this checkout vs another commit.

A candidate's merge is what :meth:`darwin.search.resident.ResidentModel.load_plan` does: merge the
decoded plan from the resident parents into the resident model. The fitness is left out (it is
measured by ``bench_fitness.py``). Parents: the synthetic SmolLM2-135M-shaped bf16 base and two
fine-tunes of ``bench_merge.py`` (``--scale smollm2``) or the tiny demo models (``--scale tiny``).
The same ``--candidates`` darwin14 genomes (start point + N(0, 0.5²) noise, seed 0) are merged by
both trees, each in its own process, interleaved over ``--rounds``; the first candidate of a
process also pays the genome-invariant precompute and is reported apart (``first_s``). Each child
is summarised by a checksum so that the two trees' children can be compared.

Usage::

    .venv/bin/python benchmarks/bench_candidate.py [--base REV] [--scale smollm2] [--candidates 8] [--rounds 2]
        [--resident-dtype float32|bfloat16]
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


def parents(scale: str, work: Path) -> tuple[str, str, str]:
    """(base, parent A, parent B) folders at ``scale`` (the same as bench_commits.py's)."""
    from bench_commits import parents as commit_parents

    a, b, base = commit_parents(scale, work)
    return base, a, b


def worker(scale: str, work: Path, n: int, resident_dtype: str = "float32") -> dict:
    """Merge ``n`` darwin14 candidates into one resident model; per-candidate seconds and checksums."""
    import torch

    from darwin.genome import decode, load_genome, pair_layout, start_vector, vector_to_values
    from darwin.io.checkpoint import Checkpoint
    from darwin.search.resident import ResidentModel

    base, a, b = parents(scale, work)
    ck = {a: Checkpoint(a), b: Checkpoint(b), base: Checkpoint(base)}
    layout = pair_layout(ck, a, b, base=base, out_dtype=torch.float32)
    spec = load_genome("darwin14")
    g = torch.Generator().manual_seed(0)
    x0 = start_vector(spec, layout.num_layers)
    xs = [[xi + 0.5 * float(torch.randn(1, generator=g)) for xi in x0] for _ in range(n)]
    plans = [decode(spec, vector_to_values(spec, x, layout.num_layers), layout) for x in xs]
    t0 = time.perf_counter()
    res = ResidentModel(ck, a, dtype=getattr(torch, resident_dtype), device="cpu")
    setup = time.perf_counter() - t0
    secs, sums = [], []
    for p in plans:
        t0 = time.perf_counter()
        res.load_plan(p)
        secs.append(time.perf_counter() - t0)
        sums.append(float(sum(t.double().sum() for t in res.model.state_dict().values())))
    stats = getattr(res, "invariant_bytes", None)
    return {"setup_s": setup, "first_s": secs[0], "seconds": secs[1:] or secs, "checksums": sums,
            "invariant_bytes": stats() if callable(stats) else None}


def run_tree(tree: Path, args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{HERE}", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_VERBOSITY": "error"}
    cmd = [sys.executable, str(HERE / "bench_candidate.py"), "--worker", "--scale", args.scale,
           "--candidates", str(args.candidates), "--work", str(args.work), "--resident-dtype", args.resident_dtype]
    out = subprocess.run(cmd, check=True, env=env, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="commit to compare against (exported with git archive)")
    ap.add_argument("--scale", choices=["tiny", "smollm2"], default="smollm2")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "commits")
    ap.add_argument("--resident-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="dtype of the resident model the candidates are written into")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        print(json.dumps(worker(args.scale, args.work, args.candidates, args.resident_dtype)))
        return
    from bench_commits import export

    trees = {"this checkout": REPO}
    if args.base:
        trees = {"base": export(args.base, args.work / f"tree-{args.base}"), **trees}
    runs: dict[str, list[dict]] = {k: [] for k in trees}
    for r in range(args.rounds):
        for name in (list(trees) if r % 2 == 0 else list(reversed(trees))):
            runs[name].append(run_tree(trees[name], args))
    report: dict = {"scale": args.scale, "candidates": args.candidates, "rounds": args.rounds,
                    "resident_dtype": args.resident_dtype}
    for name, rs in runs.items():
        report[name] = {"median_candidate_s": round(statistics.median(s for x in rs for s in x["seconds"]), 4),
                        "first_candidate_s": round(statistics.median(x["first_s"] for x in rs), 3),
                        "setup_s": round(statistics.median(x["setup_s"] for x in rs), 2),
                        "invariant_bytes": rs[0]["invariant_bytes"]}
    if args.base:
        report["ratio_new_over_base"] = round(report["this checkout"]["median_candidate_s"]
                                              / report["base"]["median_candidate_s"], 3)
        diffs = [abs(x - y) / max(abs(x), 1.0) for x, y in zip(runs["base"][0]["checksums"],
                                                            runs["this checkout"][0]["checksums"])]
        report["max_checksum_rel_diff"] = max(diffs)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
