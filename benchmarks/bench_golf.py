"""Benchmark: model golf at 100M parameters from SmolLM2-135M, darwin vs ShortGPT pruning.

Held-out bits per byte (1024-token windows, 2 windows per text) on KJV (Ruth 3–4), stdlib code
(shlex + fractions) and Python-docs prose, for:

* SmolLM2-135M itself (reference; over budget);
* ShortGPT pruning to the same budget: drop the layers with the lowest Block Influence on the MRI
  probe prompts (arXiv 2403.03853), no search;
* the darwin golf child: ``darwin golf``'s genome (Block-Influence prior fused with searched keep
  scores, LaCo layer collapse) searched with CMA-ES on the *search* split (one 1024-token window
  each of Ruth 1–2, zipimport.py and five Python-docs topics; bits per byte), never on the
  held-out texts;
* with ``--trim``: the vocabulary is first trimmed to the tokens of the training texts (KJV
  without Ruth, the stdlib training code, Python-docs topics other than the held-out and search
  ones), and ShortGPT and golf both start from the trimmed parent.

Usage::

    .venv/bin/python benchmarks/bench_golf.py [--max-params 100M] [--population 8] [--generations 6]

Needs the zoo model and the text splits of ``examples/smollm2-bible-code`` (built if missing).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "examples" / "smollm2-bible-code"))
sys.path.insert(0, str(HERE))


def heldout_bpb(folder: Path, data: Path, work: Path) -> dict:
    """Bits per byte and nats per token on each held-out text (the out-of-corpus US Constitution
    too when installed), the parameter count and the layers: the scoring of ``bench_width.py``."""
    from bench_width import bpb, texts

    return {**bpb(folder, texts(data, work)), "layers": json.loads((folder / "config.json").read_text())
            ["num_hidden_layers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-params", default="100M")
    ap.add_argument("--population", type=int, default=8)
    ap.add_argument("--generations", type=int, default=6)
    ap.add_argument("--parents", choices=["base", "specialists"], default="base",
                    help="base: SmolLM2 alone; specialists: the two fine-tuned parents of the SmolLM2 example")
    ap.add_argument("--trim", action="store_true",
                    help="width operator first: keep only the tokens of the training texts (KJV without Ruth, stdlib "
                         "code, Python-docs topics except the held-out ones)")
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "golf")
    args = ap.parse_args()
    from data import write_splits
    from transformers.utils import logging as hf_logging

    import darwin
    from darwin.io.checkpoint import Checkpoint
    from darwin.search.config import parse_count
    from darwin.zoo import build as zoo_build

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    cache = REPO / ".cache"
    smol = zoo_build("smollm2", cache / "zoo" / "smollm2")
    data = cache / "smollm2-bible-code" / "data"
    if not (data / "heldout_prose.txt").exists():
        write_splits(data)
    parents = [str(smol)]
    if args.parents == "specialists":
        from build_parents import build_parents

        ps = build_parents(smol, data, cache / "smollm2-bible-code" / "parents")
        parents = [str(ps["kjv"]), str(ps["code"])]
    budget = parse_count(args.max_params, "max_params")
    args.work.mkdir(parents=True, exist_ok=True)
    tag = args.parents + ("-trim" if args.trim else "")
    corpus = None
    if args.trim:
        from data import golf_corpus

        corpus = [str(p) for p in golf_corpus(data, args.work)]
    # search split: one 1024-token window each of KJV (Ruth 1-2), code (zipimport.py) and prose (Python-docs
    # topics that are neither held out nor ... used elsewhere), equally weighted
    prose = args.work / "search_prose.txt"
    from pydoc_data.topics import topics

    prose.write_text("\n\n".join(topics[k] for k in ("try", "class", "function", "import", "return")))
    fitness = [{"bits_per_byte": {"files": [str(f)], "max_tokens": 1024, "window": 1024, "batch_size": 1}}
               for f in (data / "search_kjv.txt", data / "search_code.txt", prose)]
    t0 = time.perf_counter()
    # darwin.golf trims the parents (with --trim) into run-<tag>-trimmed-<i> and evolves the golf genome
    run = darwin.golf(parents, args.work / f"run-{tag}", max_params=budget, min_context=1028, fitness=fitness,
                      population=args.population, generations=args.generations, seed=0, trim_corpus=corpus,
                      device="cpu", force=True, progress=sys.stderr.isatty(), method="depth")
    search_s = time.perf_counter() - t0
    parents = json.loads((run.out_dir / "run.json").read_text())["parents"]  # the trimmed ones with --trim

    import torch

    from darwin.genome.golf import GolfBreeder

    ck = {p: Checkpoint(p) for p in parents}
    br = GolfBreeder(ck, parents[:1], budget, torch.float32)
    br.set_prior(json.loads((run.out_dir / "layer_prior.json").read_text())["block_influence"])
    shortgpt = darwin.merge((br.shortgpt(), ck), args.work / f"shortgpt-{tag}", force=True, progress=False).out_dir
    rows = [("SmolLM2-135M (reference, over budget)", smol),
            (f"ShortGPT to {args.max_params}" + (" (trimmed vocab)" if args.trim else ""), shortgpt),
            (f"darwin golf ({tag})", run.child_dir)]
    res = []
    for name, folder in rows:
        res.append({"name": name, **heldout_bpb(Path(folder), data, args.work)})
    ref = res[0]
    for r in res[1:]:
        r["vs_reference"] = {k: round(r[k] / ref[k] - 1, 4) for k in ("kjv", "code", "prose", "constitution")
                             if k in ref}
    best_genes = run.best["genes"]
    summary = {"budget": budget, "search_seconds": round(search_s, 1),
               "evaluations": sum(len(h["candidates"]) for h in run.history), "best_fitness": run.best["fitness"],
               "baselines": {k: v["fitness"] for k, v in run.baselines.items()},
               "mri_trust": best_genes["mri_trust"], "collapse": best_genes["collapse"],
               "constraints": run.constraints, "models": res}
    (args.work / f"summary-{tag}.json").write_text(json.dumps(summary, indent=2))
    add_card_table(Path(run.child_dir), res)
    print(json.dumps(summary, indent=2))


def add_card_table(child: Path, rows: list[dict]) -> None:
    """Append the held-out evaluation table to the child's model card."""
    lines = ["", "## Evaluation: held-out bits per byte (1024-token windows; lower is better)", "",
             "| model | parameters | layers | KJV | code | prose |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['parameters']:,} | {r['layers']} | {r['kjv']} | {r['code']} | {r['prose']} |"
              for r in rows]
    card = child / "README.md"
    card.write_text(card.read_text().rstrip() + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
