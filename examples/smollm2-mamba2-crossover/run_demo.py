"""SmolLM2-135M × a Mamba-2 trained on shipped data: breed Bamba hybrids, measure held-out perplexity.

Usage: ``.venv/bin/python examples/smollm2-mamba2-crossover/run_demo.py [OUT]`` (default
``runs/crossover-demo``). Steps: SmolLM2 from the zoo; the text splits of the SmolLM2 example;
the Mamba-2 parent (build_ssm_parent.py, cached); ``darwin evolve`` with ``darwin/genome/builtin/crossover.yaml``;
held-out perplexity (Ruth 3–4, shlex + fractions, Python-docs prose; 1024 tokens each) of both
parents, the evolved child, the best searched hybrid that has at least one SSM layer, and fixed
hybrids with one SSM mixer. Writes ``OUT/summary.json`` and ``OUT/summary.md``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "examples" / "smollm2-bible-code"))

from build_ssm_parent import build_ssm_parent  # noqa: E402
from data import write_splits  # noqa: E402


def say(msg: str) -> None:
    print(f"[crossover-demo] {msg}", file=sys.stderr, flush=True)


def heldout(folder: Path, data: Path) -> dict:
    """Held-out perplexity (1024 tokens per text) and parameter count of one model folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from darwin.fitness.perplexity import PerplexityFitness

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = {"parameters": sum(p.numel() for p in model.parameters())}
    for name in ("kjv", "code", "prose"):
        ppl = PerplexityFitness([data / f"heldout_{name}.txt"], max_tokens=1024, window=512)
        out[name] = round(ppl.to_perplexity(ppl(model, tok)), 3)
    return out


def pattern_of(genes: dict, n: int) -> str:
    return "".join("B" if genes[f"layer_{i}_mixer"] >= 0.5 else "A" for i in range(n))


def main() -> None:
    from transformers.utils import logging as hf_logging

    import darwin
    from darwin.zoo import build as zoo_build

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    t0 = time.perf_counter()
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "runs" / "crossover-demo").resolve()
    cache = Path(os.environ.get("DARWIN_CACHE", REPO / ".cache")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    smol = zoo_build("smollm2", cache / "zoo" / "smollm2")
    data = cache / "smollm2-bible-code" / "data"
    if not (data / "heldout_prose.txt").exists():
        write_splits(data)
    say("Mamba-2 parent (trained on shipped data, cached)")
    t_train = time.perf_counter()
    ssm = build_ssm_parent(smol, data, cache / "smollm2-mamba2" / "mamba2", log=say)
    train_s = time.perf_counter() - t_train
    cfg = (HERE / "parents.yaml").read_text().replace("../../.cache", str(cache))
    (out / "parents.yaml").write_text(cfg)
    say("darwin evolve (crossover genome)")
    t_ev = time.perf_counter()
    run = darwin.evolve(out / "parents.yaml", out / "run", force=True, progress=sys.stderr.isatty())
    evolve_s = time.perf_counter() - t_ev
    n = 30
    cands = [c for h in run.history for c in h["candidates"] if c["fitness"] is not None]
    hybrids = [c for c in cands if "B" in pattern_of(c["genes"], n)]
    rows = [("SmolLM2-135M (parent A)", smol, "A" * n), ("Mamba-2 fixture (parent B)", ssm, "B" * 4),
            ("evolved child", run.child_dir, pattern_of(run.best["genes"], n))]
    if hybrids:
        hb = max(hybrids, key=lambda c: c["fitness"])
        p = pattern_of(hb["genes"], n)
        darwin.crossover(str(smol), str(ssm), out / "best-hybrid", mixers=p, force=True, progress=False,
                         ffn_ratio=hb["genes"]["ffn_ratio"], embed_ratio=hb["genes"]["embed_ratio"])
        rows.append(("best searched hybrid with an SSM layer", out / "best-hybrid", p))
    for layer in (0, 29):
        p = "".join("B" if i == layer else "A" for i in range(n))
        darwin.crossover(str(smol), str(ssm), out / f"ssm-at-{layer}", mixers=p, force=True, progress=False)
        rows.append((f"fixed: SSM mixer at layer {layer} only", out / f"ssm-at-{layer}", p))
    res = []
    for name, folder, pattern in rows:
        say(f"held-out perplexity: {name}")
        res.append({"name": name, "path": str(folder), "layers": pattern, **heldout(Path(folder), data)})
    summary = {"wall_seconds": round(time.perf_counter() - t0, 1), "ssm_train_seconds": round(train_s, 1),
               "evolve_seconds": round(evolve_s, 1), "evaluations": len(cands) + len(run.baselines),
               "baselines": {k: v["fitness"] for k, v in run.baselines.items()}, "best_fitness": run.best["fitness"],
               "ssm_parent": json.loads((Path(ssm) / "PARENT.json").read_text()), "models": res}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    lines = ["| model | layers (A attention, B SSM) | params | KJV | code | prose |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | `{r['layers']}` | {r['parameters'] / 1e6:.1f}M | {r['kjv']} | {r['code']} | "
              f"{r['prose']} |" for r in res]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    say(f"done in {summary['wall_seconds']:.0f} s: {out}/summary.json")


if __name__ == "__main__":
    main()
