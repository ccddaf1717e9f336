"""The run folder's files: ``run.json``, ``history.jsonl``, cached artefacts, atomic writes.

Nothing here knows about genomes or CMA-ES: records are plain JSON data. Every file is written
atomically (a temporary file renamed into place) or appended and fsynced line by line, so a run
killed at any moment leaves a folder that ``--resume`` continues.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darwin.errors import DarwinError, OutputExistsError, RecipeError
from darwin.io.writer import check_output_dir, refuse_input_overlap
from darwin.search.config import ParentsConfig

#: search settings that say where candidates are scored, not what is searched (not part of the run's identity)
PLACEMENT_KEYS = ("workers", "address")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: Any, indent: int = 2) -> None:
    """:func:`write_text_atomic` of ``json.dumps(data)``."""
    write_text_atomic(path, json.dumps(data, indent=indent))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line and fsync it (a kill leaves at most a torn last line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_history(path: Path) -> list[dict[str, Any]]:
    """Records of ``history.jsonl``; a torn last line (killed mid-write) is dropped.

    Raises:
        DarwinError: a line other than the last is not JSON.
    """
    if not path.exists():
        return []
    out = []
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise DarwinError(f"{path}: line {i + 1} is corrupt") from None
    return out


def load_history(path: Path) -> list[dict[str, Any]]:
    """:func:`read_history`, rewriting the file without a torn last line if it has one."""
    history = read_history(path)
    if history and path.read_text().count("\n") != len(history):
        write_text_atomic(path, "".join(json.dumps(h) + "\n" for h in history))
    return history


def cached_json(path: Path, compute: Callable[[], Any], indent: int = 1) -> Any:
    """The JSON in ``path`` if it exists, else ``compute()`` written there atomically."""
    if path.exists():
        return json.loads(path.read_text())
    data = compute()
    write_json_atomic(path, data, indent)
    return data


def config_snapshot(cfg: ParentsConfig) -> dict[str, Any]:
    """The configuration a resumed run must match (where candidates are scored does not count)."""
    snap = json.loads(cfg.model_dump_json())
    for key in PLACEMENT_KEYS:
        snap["search"].pop(key, None)
    snap.pop("placement", None)
    return snap


def _check_resumable(out: Path, snapshot: dict[str, Any]) -> None:
    run_file = out / "run.json"
    if not run_file.exists():
        raise DarwinError(f"{out}: nothing to resume (no run.json)")
    old = json.loads(run_file.read_text())
    for key in PLACEMENT_KEYS:
        old.get("search", {}).pop(key, None)
    old.pop("placement", None)
    if "fitness_dtype" not in old:  # started before the fast path: other masks, float32 scores
        raise RecipeError(f"{out}/run.json: this run was started by an older darwin (cpu_generator masks, float32 "
                          "scoring); its remaining candidates would be merged differently. Finish it with that "
                          "version, or start it again with --force")
    # keys added since (defaults reproduce what those runs did: no selection data, cached baselines)
    for key, default in (("baselines", snapshot.get("baselines")), ("selection", []), ("test", [])):
        old.setdefault(key, default)
    for key in ("selection_top_k", "patience", "pull", "fixed", "holdout_share"):
        old.get("search", {}).setdefault(key, snapshot["search"].get(key))
    if "start" not in old.get("search", {"start": None}):  # started before search.start: at the genome's start
        old["search"]["start"] = "genome"
    if old != snapshot:
        keys = sorted(k for k in set(old) | set(snapshot) if old.get(k) != snapshot.get(k))
        sub = sorted(f"search.{k}" for k in set(old.get("search", {})) | set(snapshot.get("search", {}))
                     if old.get("search", {}).get(k) != snapshot.get("search", {}).get(k))
        hint = " (a run started before search.start existed began at the genome's start values: resume it " \
            "with search.start: genome and its sigma0)" if "search.start" in sub else ""
        raise RecipeError(f"{out}/run.json: the configuration differs from the one this run started with "
                          f"(keys {keys}{', ' + ', '.join(sub) if sub else ''}); resume needs the same "
                          f"parents.yaml{hint}")


def prepare_run_folder(out: Path, cfg: ParentsConfig, *, resume: bool, force: bool) -> None:
    """Create ``out`` with ``run.json`` (new run), or check it holds this configuration (resume).

    ``force`` replaces only a darwin run folder (one with ``run.json``) or an empty folder, never a
    folder that is or holds a parent: anything else is refused, so nothing the user has is lost.

    Raises:
        DarwinError: both or neither-but-needed of resume/force; nothing to resume.
        OutputExistsError: ``out`` is a file, holds a run and neither flag is given, or holds
            something that is not a run.
        RecipeError: resuming with another configuration (naming the keys that differ); ``out``
            is or contains a parent.
    """
    snapshot = config_snapshot(cfg)
    if resume and force:
        raise DarwinError("choose one of --resume (continue the run) and --force (start it again)")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file, not a run folder")
    if resume:
        _check_resumable(out, snapshot)
        return
    check_output_dir(out, force=True)  # refuses a path under a file
    refuse_input_overlap(out, {f"parent {r}": r for r in cfg.parents + ([cfg.base] if cfg.base else [])})
    if out.exists() and any(out.iterdir()):
        if not (out / "run.json").exists():
            raise OutputExistsError(f"{out}: exists and is not a darwin run folder (no run.json); choose another "
                                    "output folder (--force only restarts a run)")
        if not force:
            raise OutputExistsError(f"{out}: run folder exists; pass --resume to continue it or --force to restart")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "run.json", snapshot)
