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
