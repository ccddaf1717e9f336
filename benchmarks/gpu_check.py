"""GPU check (≤ 5 minutes on one CUDA device): mask equality, kernel parity with the CPU, throughput.

1. Mask levels (:mod:`darwin.kernels.masks`) computed on CUDA equal the CPU's, bit for bit.
2. Every merge method's batched kernel, and the streamed blend and task-vector kernels, on the
   same float32 inputs on CPU and CUDA: max |difference| (float rounding only; masks are equal).
3. Throughput on synthetic SmolLM2-135M-shaped bf16 parents (bench_merge.py's): seconds per
   darwin14 evolve candidate merged into a resident model (base given), and one TIES merge of
   base + 3 parents through ``darwin.merge`` (read, merge on CUDA, write).

Usage (prints one JSON object; exit 2 without CUDA)::

    .venv/bin/python benchmarks/gpu_check.py [--work benchmarks/_work/gpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def mask_equality(dev: str) -> dict:
    from darwin.kernels.masks import mask_levels

    cases = [(0, 0, 1 << 20), (2**62 + 12345, 3 << 30, 1 << 18), (987654321, 5, 4097)]
    equal = all(torch.equal(mask_levels(s, a, n, "cpu"), mask_levels(s, a, n, dev).cpu()) for s, a, n in cases)
    return {"mask_levels_equal": equal, "cases": len(cases)}


def _batch_inputs(spec, g):
    n_par = max(spec.min_parents, 2 if spec.max_parents is None or spec.max_parents >= 2 else 1)
    if spec.max_parents is not None:
        n_par = min(n_par, spec.max_parents)
    B, n = 3, 4096
    base = torch.randn(B, n, generator=g) * 0.02
    x = base.unsqueeze(1) + torch.randn(B, n_par, n, generator=g) * 0.004
    shared, parent = {}, {}
    for p in spec.params:
        if p.kind is float:
            val = 0.5 if p.name not in ("epsilon", "gamma") else 0.05
            if p.scope == "shared":
                shared[p.name] = torch.full((B,), val)
            else:
                parent[p.name] = torch.full((B, n_par), val, dtype=torch.float64 if p.name in (
                    "density", "gamma", "epsilon") else torch.float32)
        else:
            shared[p.name] = p.default
    seeds = [[b * 10 + i for i in range(n_par)] for b in range(B)] if spec.random else None
    return x, (base if spec.base != "unused" else None), shared, parent, seeds


def kernel_parity(dev: str) -> dict:
    from darwin.kernels.blend import blend_apply, blend_coefficients, blend_prepare
    from darwin.kernels.methods import METHODS, run_kernel
    from darwin.kernels.streamed_family import STREAMED, family_apply

    out: dict[str, float] = {}
    g = torch.Generator().manual_seed(0)
    for name, spec in sorted(METHODS.items()):
        x, base, shared, parent, seeds = _batch_inputs(spec, g)
        cpu = run_kernel(spec, x.clone(), None if base is None else base.clone(), shared, parent, seeds)

        def to(v):
            return v.to(dev) if isinstance(v, torch.Tensor) else v
        gpu = run_kernel(spec, x.to(dev), to(base), {k: to(v) for k, v in shared.items()},
                         {k: to(v) for k, v in parent.items()}, seeds).cpu()
        out[f"batched {name}"] = float((cpu - gpu).abs().max())
    a, b, t0 = (torch.randn(1 << 20, generator=g) * 0.02 for _ in range(3))
    for where in ("cpu", dev):
        inv = blend_prepare(a.to(where), b.to(where), t0.to(where), [1, 2], "l1")
        c = blend_coefficients(inv, 0.4, 0.3, (0.7, 0.8), "l1")
        res = blend_apply(a.to(where), b.to(where), t0.to(where), inv, c, torch.empty(1 << 20, device=where))
        out.setdefault("_blend", []).append(res.cpu())  # type: ignore[attr-defined]
    ref, got = out.pop("_blend")  # type: ignore[misc]
    out["streamed darwin_blend"] = float((ref - got).abs().max())
    for m in STREAMED:
        res = [family_apply([a.to(w), b.to(w)], t0.to(w), m, weight=[0.6, 0.4], density=[0.5, 0.7], lam=1.0,
                            normalize=True, rescale=None, seeds=[1, 2], out=torch.empty(1 << 20, device=w)).cpu()
               for w in ("cpu", dev)]
        out[f"streamed {m}"] = float((res[0] - res[1]).abs().max())
    return out


def throughput(dev: str, work: Path) -> dict:
    from bench_merge import build_parents, recipe

    import darwin
    from darwin.genome import decode, load_genome, pair_layout, start_vector, vector_to_values
    from darwin.io.checkpoint import Checkpoint
    from darwin.search.resident import ResidentModel

    folders = build_parents(work)
    base, a, b = (str(f) for f in folders[:3])
    ck = {a: Checkpoint(a), b: Checkpoint(b), base: Checkpoint(base)}
    layout = pair_layout(ck, a, b, base=base, out_dtype=torch.float32)
    spec = load_genome("darwin14")
    g = torch.Generator().manual_seed(0)
    x0 = start_vector(spec, layout.num_layers)
    plans = [decode(spec, vector_to_values(spec, [v + 0.5 * float(torch.randn(1, generator=g)) for v in x0],
                                           layout.num_layers), layout) for _ in range(9)]
    res = ResidentModel(ck, a, dtype=torch.bfloat16, device=dev)
    t = time.perf_counter()
    res.load_plan(plans[0])
    torch.cuda.synchronize()
    first = time.perf_counter() - t
    secs = []
    for p in plans[1:]:
        t = time.perf_counter()
        res.load_plan(p)
        torch.cuda.synchronize()
        secs.append(time.perf_counter() - t)
    rpath = work / "ties.yaml"
    rpath.write_text(recipe(folders))
    t = time.perf_counter()
    darwin.merge(str(rpath), str(work / "out-ties"), device=dev, progress=False, force=True)
    merge_s = time.perf_counter() - t
    return {"candidate_merge_median_s": round(statistics.median(secs), 4), "first_candidate_s": round(first, 3),
            "invariant_bytes": res.invariant_bytes(), "ties_merge_wall_s": round(merge_s, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "gpu")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print(json.dumps({"error": "no CUDA device"}))
        sys.exit(2)
    args.work.mkdir(parents=True, exist_ok=True)
    dev = "cuda"
    t0 = time.perf_counter()
    report = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, **mask_equality(dev),
              "kernel_max_abs_diff": kernel_parity(dev), **throughput(dev, args.work)}
    report["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
