"""Benchmark: candidates per minute, serial in-process vs Ray with 1 and 2 workers.

Same parents, same genomes, same fitness (−mean NLL of a fixed 256-token random sequence), same
run. The baseline is the serial :class:`darwin.search.evaluator.LocalEvaluator` measured in the
same process; the Ray pools are :class:`darwin.search.ray_pool.RayEvaluator` on a local Ray
instance. Start-up (Ray itself, actors loading the parents) is reported separately from the
steady-state rate, which is measured on a second batch after a warm-up batch.

Usage::

    .venv/bin/python benchmarks/bench_workers.py [--scale tiny|smollm2|both] [--candidates N]

``smollm2`` reuses the synthetic 135M parents of bench_merge.py (built if missing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_evolve import candidates  # noqa: E402


def _plans(scale: str, work: Path, n: int):
    from darwin.fitness.base import CombinedFitness, Component

    ck, a, plans, fit = candidates(scale, work, 2 * n)
    return ck, a, plans, CombinedFitness([Component("nll", fit)])


def _measure(evaluator, plans: list, n: int) -> tuple[float, list[float]]:
    evaluator.run(plans[:n])  # warm-up: first-touch allocations, lazy imports, thread pools
    t0 = time.perf_counter()
    recs = evaluator.run(plans[n:])
    if any(r["error"] for r in recs):
        raise RuntimeError(next(r["error"] for r in recs if r["error"]))
    return time.perf_counter() - t0, [r["fitness"] for r in recs]


def run(scale: str, work: Path, n: int) -> dict:
    from darwin.search.evaluator import LocalEvaluator
    from darwin.search.ray_pool import RayEvaluator
    from darwin.search.resident import ResidentSpec

    ck, a, plans, fit = _plans(scale, work, n)
    spec = ResidentSpec({r: str(c.path) for r, c in ck.items()}, a, torch.float32, "cpu")
    out: dict = {"scale": scale, "candidates_timed": n, "cpu_cores": os.cpu_count(),
                 "torch_threads_in_process": torch.get_num_threads()}
    t0 = time.perf_counter()
    local = LocalEvaluator(spec, fit)
    local.resident()
    out["serial_setup_s"] = round(time.perf_counter() - t0, 2)
    secs, ref = _measure(local, plans, n)
    local.close()
    del local
    out["serial_per_min"] = round(60 * n / secs, 1)
    for w in (1, 2):
        t0 = time.perf_counter()
        pool = RayEvaluator(spec, fit, workers=w)
        out[f"ray{w}_setup_s"] = round(time.perf_counter() - t0, 2)
        secs, got = _measure(pool, plans, n)
        pool.close()
        out[f"ray{w}_per_min"] = round(60 * n / secs, 1)
        out[f"ray{w}_vs_serial"] = round(out["serial_per_min"] and out[f"ray{w}_per_min"] / out["serial_per_min"], 2)
        out[f"ray{w}_max_fitness_diff"] = max(abs(x - y) for x, y in zip(ref, got))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["tiny", "smollm2", "both"], default="both")
    ap.add_argument("--candidates", type=int, default=None, help="timed candidates (default tiny 200, smollm2 8)")
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    scales = ["tiny", "smollm2"] if args.scale == "both" else [args.scale]
    res = [run(s, args.work, args.candidates or (200 if s == "tiny" else 8)) for s in scales]
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
