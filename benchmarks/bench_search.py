"""Benchmark: search efficiency with MRI trust on vs off (τ fixed at 0), several seeds.

On the SmolLM2 Bible × code example (built and cached by examples/smollm2-bible-code/run_demo.py
or this script), counts the evaluations each search needs before a candidate beats the best
uniform merge (the better of the uniform 0.5 linear merge and, as scored by the search, nothing
else), with the darwin14 genome and MRI on, and with a copy of the genome whose ``mri_trust`` is
pinned at 0 (bounds [0, 1e-9]) so MRI cannot act.

Usage::

    .venv/bin/python benchmarks/bench_search.py [--seeds 0 1 2] [--generations 6] [--population 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
EXAMPLE = REPO / "examples" / "smollm2-bible-code"


def first_beat(history: list[dict], target: float) -> int | None:
    """1-based index of the first evaluation whose fitness beats ``target`` (None if none)."""
    n = 0
    for rec in history:
        for c in rec["candidates"]:
            n += 1
            if c["fitness"] is not None and c["fitness"] > target:
                return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "search")
    args = ap.parse_args()
    sys.path.insert(0, str(EXAMPLE))
    from build_parents import build_parents
    from data import write_splits
    from transformers.utils import logging as hf_logging

    import darwin
    from darwin.zoo import build as zoo_build

    hf_logging.disable_progress_bar()
    cache = REPO / ".cache"
    base = zoo_build("smollm2", cache / "zoo" / "smollm2")
    data = cache / "smollm2-bible-code" / "data"
    write_splits(data)
    build_parents(base, data, cache / "smollm2-bible-code" / "parents")
    args.work.mkdir(parents=True, exist_ok=True)
    g = yaml.safe_load((REPO / "darwin" / "genome" / "builtin" / "darwin14.yaml").read_text())
    for gene in g["genes"]:
        if gene["name"] == "mri_trust":
            gene.update(low=0.0, high=1e-9, start=0.0)
    g["name"] = "darwin14-no-mri"
    (args.work / "darwin14-no-mri.yaml").write_text(yaml.safe_dump(g, sort_keys=False))
    cfg = yaml.safe_load((EXAMPLE / "parents.yaml").read_text().replace("../../.cache", str(cache)))
    rows = []
    for seed in args.seeds:
        for label, genome in (("mri", "darwin14"), ("tau0", str(args.work / "darwin14-no-mri.yaml"))):
            c = dict(cfg, genome=genome, search={"population": args.population, "generations": args.generations,
                                                 "sigma0": 0.5, "seed": seed},
                     mri={"enabled": label == "mri"})  # τ pinned at 0: the MRI scan would be unused
            run = darwin.evolve(c, args.work / f"{label}-{seed}", force=True, progress=False, write_outputs=False)
            target = max(v["fitness"] for k, v in run.baselines.items() if k.startswith("uniform"))
            rows.append({"seed": seed, "variant": label, "uniform": target, "best": run.best["fitness"],
                         "evals_to_beat_uniform": first_beat(run.history, target),
                         "evaluations": sum(len(h["candidates"]) for h in run.history)})
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
