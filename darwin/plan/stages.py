"""Multi-stage recipes, as ``mergekit-multi`` reads them: one YAML file of several documents.

Each document is a recipe; a ``name:`` makes it a stage that later documents use as a model
(``model: my-stage``, ``base_model: my-stage``, a slice source, a tokenizer source). Stages run in
dependency order. The unnamed document (at most one), or else the last stage, is the final child
and goes to the output folder; every other stage is written to the intermediate folder under its
name (default ``<output>-stages/``). A stage whose folder already holds the child of the same
recipe and inputs (``darwin-stage.json`` records their hash) is not merged again; one that darwin
wrote for an older version of the recipe is replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from darwin.errors import OutputExistsError, RecipeError
from darwin.io.yamlfile import resolve_beside

STAGE_RECORD = "darwin-stage.json"


@dataclass(frozen=True)
class Stage:
    """One document of a multi-stage recipe: its ``name`` (None for the final, unnamed one) and recipe."""

    name: str | None
    recipe: dict[str, Any]


def read_stages(path: str | os.PathLike) -> list[Stage] | None:
    """The stages of a multi-document recipe file, or None when the file holds one document.

    Raises:
        RecipeError: unreadable YAML, a document that is not a mapping, a stage name that is not
            a string or is used twice, or more than one unnamed document (the message names them).
    """
    p = Path(path)
    try:
        docs = [d for d in yaml.safe_load_all(p.read_text()) if d is not None]
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{p}: cannot read ({e})") from e
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: invalid YAML ({e})") from e
    if len(docs) <= 1:
        return None
    stages, names = [], set()
    for i, d in enumerate(docs):
        if not isinstance(d, dict):
            raise RecipeError(f"{p}: document {i + 1} is not a mapping (a recipe)")
        body = dict(d)
        name = body.pop("name", None)
        if name is not None and (not isinstance(name, str) or not name.strip() or "/" in name):
            raise RecipeError(f"{p}: document {i + 1}: name must be a plain string (a folder name), got {name!r}")
        if name is None and None in names:
            raise RecipeError(f"{p}: more than one document has no name; only the final stage may be unnamed")
        if name in names:
            raise RecipeError(f"{p}: document {i + 1}: stage name {name!r} is used twice")
        names.add(name)
        stages.append(Stage(name, {k: _beside(k, v, p.parent) for k, v in body.items()}))
    return order_stages(stages, str(p))


def _beside(key: str, value: Any, folder: Path) -> Any:
    """Model references of a document resolved against the recipe file's folder."""
    return _map_refs({key: value}, lambda r: resolve_beside(r, folder))[key]


def _map_refs(recipe: dict[str, Any], fn: Callable[[str], str]) -> dict[str, Any]:
    """A copy of ``recipe`` with ``fn`` applied to every model reference."""
    out = json.loads(json.dumps(recipe, default=str))
    for key in ("base_model", "tokenizer_source"):
        if isinstance(out.get(key), str):
            out[key] = fn(out[key])
    for m in out.get("models") or []:
        if isinstance(m, dict) and isinstance(m.get("model"), str):
            m["model"] = fn(m["model"])
    for sl in out.get("slices") or []:
        if isinstance(sl, dict):
            if isinstance(sl.get("base_model"), str):
                sl["base_model"] = fn(sl["base_model"])
            for src in sl.get("sources") or []:
                if isinstance(src, dict) and isinstance(src.get("model"), str):
                    src["model"] = fn(src["model"])
    tk = out.get("tokenizer")
    if isinstance(tk, dict) and isinstance(tk.get("source"), str):
        tk["source"] = fn(tk["source"])
    return out


def _uses(stage: Stage, names: set[str]) -> set[str]:
    used: set[str] = set()

    def note(ref: str) -> str:
        if ref in names:
            used.add(ref)
        return ref
    _map_refs(stage.recipe, note)
    return used


def order_stages(stages: list[Stage], where: str) -> list[Stage]:
    """Stages in dependency order (a stage after every stage it uses); the final one last.

    Raises:
        RecipeError: a cycle, or a stage that uses the unnamed final one.
    """
    names = {s.name for s in stages if s.name is not None}
    deps = {s.name: _uses(s, names) for s in stages}
    done: list[Stage] = []
    left = list(stages)
    while left:
        ready = [s for s in left if deps[s.name] <= {d.name for d in done}]
        if not ready:
            raise RecipeError(f"{where}: stages {sorted(str(s.name) for s in left)} use each other in a cycle")
        done.extend(ready)
        left = [s for s in left if s not in ready]
    final = next((s for s in done if s.name is None), done[-1])
    return [s for s in done if s is not final] + [final]


def recipe_hash(recipe: dict[str, Any], inputs: list[str]) -> str:
    """SHA-256 of the recipe as canonical JSON and of the hashes of the stages it uses: a stage
    is done only if neither it nor anything upstream changed."""
    return hashlib.sha256(json.dumps([recipe, sorted(inputs)], sort_keys=True, default=str).encode()).hexdigest()


def stage_done(folder: Path, digest: str) -> bool:
    """Whether ``folder`` holds the child whose :func:`recipe_hash` is ``digest``."""
    try:
        return json.loads((folder / STAGE_RECORD).read_text()).get("recipe_sha256") == digest
    except (OSError, ValueError, AttributeError):
        return False


def run_stages(stages: list[Stage], out_dir: Path, *, intermediate_dir: Path | None, force: bool,
               merge: Callable[[dict[str, Any], Path, bool], Any], log: Callable[[str], None] = lambda _: None
               ) -> tuple[Any, dict[str, Any]]:
    """Merge every stage in order.

    Returns:
        ``(what merge returned for the final stage or None if it was already done, the final
        stage's recipe with stage names replaced by their folders)``.

    Args:
        stages: from :func:`read_stages` (dependency order, final last).
        out_dir: the final child's folder.
        intermediate_dir: the other stages' parent folder (default ``<out_dir>-stages``).
        force: replace an existing final folder that is not this recipe's child.
        merge: ``(recipe dict, folder, force) → result``, the single-recipe merge.
        log: receives one line per stage.

    Raises:
        OutputExistsError: the final folder exists, holds something else, and ``force`` is off.
    """
    inter = intermediate_dir or out_dir.with_name(out_dir.name + "-stages")
    paths = {s.name: inter / s.name for s in stages[:-1] if s.name is not None}
    if stages[-1].name is not None:
        paths[stages[-1].name] = out_dir
    result, recipe = None, stages[-1].recipe
    names = {s.name for s in stages if s.name is not None}
    digests: dict[str | None, str] = {}
    for i, st in enumerate(stages):
        recipe = _map_refs(st.recipe, lambda r: str(paths.get(r, r)))
        digest = digests[st.name] = recipe_hash(recipe, [digests[u] for u in _uses(st, names)])
        folder = out_dir if i == len(stages) - 1 else paths[str(st.name)]
        label = st.name or "final"
        if stage_done(folder, digest):
            log(f"stage {label}: already done ({folder})")
            continue
        if i == len(stages) - 1 and folder.exists() and not force and not (folder / STAGE_RECORD).is_file():
            raise OutputExistsError(f"{folder}: exists and is not a stage darwin wrote; use --force to replace it")
        log(f"stage {label} → {folder}")
        result = merge(recipe, folder, True)
        (folder / STAGE_RECORD).write_text(json.dumps({"stage": st.name, "recipe_sha256": digest}))
    return result, recipe
