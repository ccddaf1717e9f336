"""Model card (``README.md``) for a child checkpoint."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def hub_id(ref: str) -> str | None:
    """``ref`` if it names a hub repository (``org/name``, not an existing local path), else None:
    local paths never go into the card's publishing metadata."""
    if Path(ref).expanduser().exists() or not _HUB_ID.match(ref):
        return None
    return ref


def shown(ref: str) -> str:
    """How the card names a model: its hub id, or ``local folder <name>`` (the path stays private)."""
    return f"`{ref}`" if hub_id(ref) else f"local folder `{Path(ref).name}`"


def write_model_card(folder: Path, *, parents: list[str], method: str, parameters: dict[str, Any],
                     num_parameters: int, dtype: str, extra_sections: list[str] | None = None,
                     base: str | None = None, title: str = "Merged model") -> Path:
    """Write ``folder/README.md`` with a YAML header (tags, base models) and the merge details.

    The header's ``base_model`` holds only hub ids (parents and base); local folders appear in the
    body by folder name, never by path.

    Args:
        folder: child folder.
        parents: parent references (paths or hub ids), the base excluded.
        base: the common ancestor (task-vector methods), listed on its own.
        method: merge method (or ``darwin-evolve``).
        parameters: recipe / genome as plain data, embedded as YAML.
        num_parameters: stored element count of the child.
        dtype: storage dtype name.
        extra_sections: further markdown sections (fitness tables, lineage…).
        title: the card's heading.

    Returns:
        the card path.
    """
    hub = [h for h in (hub_id(p) for p in parents + ([base] if base else [])) if h]
    header: dict[str, Any] = {"tags": ["merge", "darwin", method], "library_name": "transformers"}
    if hub:
        header["base_model"] = hub
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {title}", "",
             f"Made with [darwin](https://github.com/darwin-merge/darwin) using **{method}**.", "",
             "## Parents", ""]
    lines += [f"- {shown(p)}" for p in parents]
    if base:
        lines += ["", "## Base", "", f"- {shown(base)} (task vectors are taken against it)"]
    lines += ["", "## Details", "", f"- parameters: {num_parameters:,}", f"- dtype: {dtype}", "",
              "## Recipe", "", "```yaml", yaml.safe_dump(parameters, sort_keys=False).strip(), "```", ""]
    for sec in extra_sections or []:
        lines += [sec, ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path
