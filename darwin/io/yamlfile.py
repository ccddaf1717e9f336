"""Read a YAML file that must hold a mapping (recipes, genomes, parents.yaml)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from darwin.errors import RecipeError


def load_yaml_mapping(path: str | os.PathLike, what: str) -> dict[str, Any]:
    """Parse ``path`` with ``yaml.safe_load`` and check it is a mapping.

    Raises:
        RecipeError: naming the file: missing, a folder, unreadable, invalid YAML, or not a mapping.
    """
    p = Path(path)
    if not p.exists():
        raise RecipeError(f"{p}: no such {what} file")
    if p.is_dir():
        raise RecipeError(f"{p}: is a folder, not a {what} file")
    try:
        data = yaml.safe_load(p.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"{p}: cannot read ({e})") from e
    except yaml.YAMLError as e:
        raise RecipeError(f"{p}: invalid YAML ({e})") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{p}: a {what} must be a YAML mapping")
    return data


def resolve_beside(ref: Any, folder: Path) -> Any:
    """A relative path written in a YAML file, resolved against the file's ``folder`` when it exists
    there; anything else (absolute paths, hub ids, built-in names, non-strings) is returned as is."""
    if not isinstance(ref, str) or Path(ref).is_absolute():
        return ref
    cand = folder / ref
    return str(cand) if cand.exists() else ref


def absolute_if_local(ref: str) -> str:
    """A local folder or file as an absolute path (a saved recipe then replays from any working
    directory); a hub id as given."""
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else ref
