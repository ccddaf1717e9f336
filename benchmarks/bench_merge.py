"""Benchmark: darwin merge vs mergekit-yaml, same recipe, same parents, same run.

Builds synthetic SmolLM2-135M-shaped parents (llama, 30 layers, d=576, FFN 1536, vocab 49152,
tied embeddings, 134.5M parameters, random bf16 weights: a base and three "fine-tunes" = base +
noise), writes one TIES recipe, then times each tool as a separate process with
``/usr/bin/time -v`` (wall seconds and peak RSS). Results are reported as ratios to mergekit
measured in the same run, plus darwin's batched path vs one-tensor-per-call in the same process.

Usage::

    .venv/bin/python benchmarks/bench_merge.py [--work benchmarks/_work] [--repeat 2]

Weights are cached in ``--work`` (≈ 1.1 GB); outputs are deleted after each run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent


def smollm2_config():
    """Config of SmolLM2-135M (shapes only)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                       tie_word_embeddings=True, rms_norm_eps=1e-5, rope_theta=100000.0,
                       torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])


def build_parents(work: Path, n_parents: int = 3) -> list[Path]:
    """Write ``base`` and ``p1..pn`` (bf16 safetensors) unless cached."""
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    cfg = smollm2_config()
    folders = [work / "base"] + [work / f"p{i}" for i in range(1, n_parents + 1)]
    if all((f / "model.safetensors").exists() for f in folders):
        for f in folders:
            cfg.save_pretrained(f)
        return folders
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaForCausalLM(cfg).state_dict().items() if k != "lm_head.weight"}
    g = torch.Generator().manual_seed(0)
    base = {k: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for k, s in shapes.items()}
    for i, f in enumerate(folders):
        f.mkdir(parents=True, exist_ok=True)
        sd = base if i == 0 else {k: (v.float() + torch.randn(v.shape, generator=g) * 0.002).to(torch.bfloat16)
                                  for k, v in base.items()}
        save_file(sd, str(f / "model.safetensors"), metadata={"format": "pt"})
        cfg.save_pretrained(f)
    return folders


def real_parents() -> list[Path]:
    """The SmolLM2 zoo base and the two fine-tuned specialists of examples/smollm2-bible-code (built if missing)."""
    repo = HERE.parent
    example = repo / "examples" / "smollm2-bible-code"
    sys.path.insert(0, str(example))
    from build_parents import build_parents
    from data import write_splits

    from darwin.zoo import build

    cache = repo / ".cache"
    base = build("smollm2", cache / "zoo" / "smollm2")
    data = cache / "smollm2-bible-code" / "data"
    write_splits(data)
    ps = build_parents(base, data, cache / "smollm2-bible-code" / "parents")
    return [base, ps["kjv"], ps["code"]]


def recipe(folders: list[Path]) -> str:
    base, *ps = folders
    models = "".join(f"  - model: {p}\n    parameters: {{weight: {w}, density: 0.5}}\n"
                     for p, w in zip(ps, (0.5, 0.3, 0.2)))
    return f"merge_method: ties\nbase_model: {base}\nmodels:\n{models}parameters:\n  normalize: true\ndtype: bfloat16\n"


def timed(cmd: list[str]) -> tuple[float, float]:
    """Run ``cmd`` under /usr/bin/time -v; return (wall seconds, peak RSS GiB)."""
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    return wall, rss_kb / 2**20


FLOOR = """
import sys, tempfile, torch
from pathlib import Path
from darwin.plan.run import plan_recipe, write_child
plan, ck = plan_recipe(open(sys.argv[1]).read())
buf = {}
def tensors():
    for t in plan.tasks:  # read every input (same Checkpoint path), no arithmetic; write the base's bytes
        srcs = list(t.inputs) + ([t.base] if t.base is not None else [])
        for s in srcs:
            x = ck[s.model].get(s.tensor)
            b = buf.setdefault((x.shape, x.dtype), torch.empty_like(x))
            b.copy_(x)
        yield t.out_name, b.to(plan.out_dtype, copy=True)  # a fresh output tensor, as a merge yields
write_child(plan, tensors(), Path(sys.argv[2]), ck, max_shard_bytes=5 * 10**9)
"""


def floor(rpath: Path, out: Path) -> tuple[float, float]:
    """The bandwidth floor: a fresh process reads every input and writes a child through darwin's I/O path."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    try:
        return timed([sys.executable, "-c", FLOOR, str(rpath), str(out)])
    finally:
        shutil.rmtree(out, ignore_errors=True)


def kernel_batching(folders: list[Path]) -> dict[str, float]:
    """darwin batched vs one tensor per kernel call, in this process (merge only, no writing)."""
    import darwin  # noqa: F401
    from darwin.plan.execute import execute
    from darwin.plan.run import plan_recipe

    plan, ck = plan_recipe(recipe(folders))
    out = {}
    for label, budget in (("batched_1GiB", 1 << 30), ("batched_default", None), ("one_per_call", 1)):
        t0 = time.perf_counter()
        for _ in execute(plan, ck, device="cpu", batch_bytes=budget):
            pass
        out[label] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=HERE / "_work")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--parents", choices=["synthetic", "real"], default="synthetic",
                    help="synthetic: base + 3 random 135M parents (bf16); real: SmolLM2 + its 2 fine-tunes (fp32)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    folders = build_parents(args.work) if args.parents == "synthetic" else real_parents()
    rpath = args.work / "ties.yaml"
    rpath.write_text(recipe(folders))
    rows: dict[str, list[tuple[float, float]]] = {"darwin": [], "mergekit": []}
    for _ in range(args.repeat):
        for tool in ("darwin", "mergekit"):
            out = args.work / f"out-{tool}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = [str(VENV_BIN / "darwin"), "merge", str(rpath), "-o", str(out)] if tool == "darwin" else \
                [str(VENV_BIN / "mergekit-yaml"), str(rpath), str(out)]
            rows[tool].append(timed(cmd))
            shutil.rmtree(out, ignore_errors=True)
    rows["floor"] = [floor(rpath, args.work / "out-floor") for _ in range(args.repeat)]
    best = {k: (min(w for w, _ in v), max(r for _, r in v)) for k, v in rows.items()}
    kb = kernel_batching(folders)
    result = {
        "machine": f"{os.cpu_count()} CPU threads, torch {torch.__version__}, {torch.get_num_threads()} intra-op threads",
        "recipe": ("ties, base + 3 synthetic parents, 134.5M params each, bf16, density 0.5"
                   if args.parents == "synthetic" else
                   "ties, SmolLM2-135M base + its KJV and code fine-tunes, fp32, density 0.5"),
        "darwin_wall_s": round(best["darwin"][0], 2), "darwin_peak_rss_gib": round(best["darwin"][1], 2),
        "mergekit_wall_s": round(best["mergekit"][0], 2), "mergekit_peak_rss_gib": round(best["mergekit"][1], 2),
        "wall_ratio_darwin_over_mergekit": round(best["darwin"][0] / best["mergekit"][0], 3),
        "floor_wall_s": round(best["floor"][0], 2),
        "wall_ratio_darwin_over_floor": round(best["darwin"][0] / best["floor"][0], 3),
        "rss_ratio_darwin_over_mergekit": round(best["darwin"][1] / best["mergekit"][1], 3),
        "darwin_merge_only_s": {k: round(v, 2) for k, v in kb.items()},
        "speedup_default_vs_one_per_call": round(kb["one_per_call"] / kb["batched_default"], 3),
        "all_runs": rows,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
