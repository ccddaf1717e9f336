"""Benchmark: evolve candidates per minute, in memory vs writing each child to disk and reloading.

Same parents, same genomes, same fitness, same run. The in-memory path is darwin's
(:class:`darwin.search.resident.ResidentModel`: parents resident, child written into one resident
model with ``copy_``); the baseline writes every candidate with ``darwin.merge``'s writer into a
temporary folder and reloads it with ``AutoModelForCausalLM.from_pretrained``, as a loop around
``mergekit-yaml`` would. The fitness is the mean NLL of a fixed 256-token random sequence (a
forward pass; no tokenizer needed).

Usage::

    .venv/bin/python benchmarks/bench_evolve.py [--scale tiny|smollm2|both] [--candidates 8]

``smollm2`` reuses the synthetic 135M parents of bench_merge.py (built if missing).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def fixed_nll(ids: torch.Tensor):
    """Fitness: −mean NLL of ``ids`` (a fixed [1, T] sequence)."""
    @torch.no_grad()
    def fit(model, tokenizer) -> float:
        return -float(model(input_ids=ids, labels=ids).loss)
    return fit


def candidates(scale: str, work: Path, n: int):
    """Parents at ``scale``, ``n`` darwin14 plans around the start point and a fixed NLL fitness.

    Returns:
        ``(checkpoints, parent_a_ref, plans, fitness)``; fitness returns a float.
    """
    from darwin.genome import decode, load_genome, pair_layout, start_vector, vector_to_values
    from darwin.io.checkpoint import Checkpoint

    if scale == "tiny":
        from darwin.demo import build_demo_models

        d = build_demo_models(work / "tiny")
        a, b = str(d["parent_a"]), str(d["parent_b"])
    else:
        from bench_merge import build_parents

        folders = build_parents(work / "_work" if (work / "_work").exists() else work)
        a, b = str(folders[1]), str(folders[2])
    ck = {a: Checkpoint(a), b: Checkpoint(b)}
    layout = pair_layout(ck, a, b, out_dtype=torch.float32)
    spec = load_genome("darwin14")
    g = torch.Generator().manual_seed(0)
    x0 = start_vector(spec, layout.num_layers)
    xs = [[xi + 0.5 * float(torch.randn(1, generator=g)) for xi in x0] for _ in range(n)]
    plans = [decode(spec, vector_to_values(spec, x, layout.num_layers), layout) for x in xs]
    ids = torch.randint(0, layout.config.get("vocab_size", 384), (1, 256), generator=g)
    return ck, a, plans, fixed_nll(ids)


def run(scale: str, work: Path, n: int) -> dict:
    from transformers import AutoModelForCausalLM

    from darwin.plan.execute import execute
    from darwin.plan.run import write_child
    from darwin.search.resident import ResidentModel

    ck, a, plans, fit = candidates(scale, work, n)

    t0 = time.perf_counter()
    res = ResidentModel(ck, a, dtype=torch.float32, device="cpu")
    setup_mem = time.perf_counter() - t0
    t0 = time.perf_counter()
    mem_scores = [res.score(p, fit) for p in plans]
    t_mem = time.perf_counter() - t0

    t0 = time.perf_counter()
    disk_scores = []
    for p in plans:
        tmp = Path(tempfile.mkdtemp(dir=work))
        write_child(p, execute(p, ck, device="cpu"), tmp, ck, max_shard_bytes=5 * 10**9)
        model = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
        disk_scores.append(fit(model, None))
        del model
        shutil.rmtree(tmp)
    t_disk = time.perf_counter() - t0
    same = max(abs(x - y) for x, y in zip(mem_scores, disk_scores))
    return {"scale": scale, "candidates": n, "in_memory_s": round(t_mem, 2), "disk_reload_s": round(t_disk, 2),
            "in_memory_per_min": round(60 * n / t_mem, 1), "disk_reload_per_min": round(60 * n / t_disk, 1),
            "speedup": round(t_disk / t_mem, 2), "resident_setup_s": round(setup_mem, 2),
            "max_fitness_difference": same}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", choices=["tiny", "smollm2", "both"], default="both")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    scales = ["tiny", "smollm2"] if args.scale == "both" else [args.scale]
    print(json.dumps([run(s, args.work, args.candidates) for s in scales], indent=2))


if __name__ == "__main__":
    main()
