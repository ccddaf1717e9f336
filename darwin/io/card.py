"""Model card (``README.md``) for a child checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def write_model_card(folder: Path, *, parents: list[str], method: str, parameters: dict[str, Any],
                     num_parameters: int, dtype: str, extra_sections: list[str] | None = None) -> Path:
    """Write ``folder/README.md`` with a YAML header (tags, base models) and the merge details.

    Args:
        folder: child folder.
        parents: parent references (paths or hub ids).
        method: merge method (or ``darwin-evolve``).
        parameters: recipe / genome as plain data, embedded as YAML.
        num_parameters: stored element count of the child.
        dtype: storage dtype name.
        extra_sections: further markdown sections (fitness tables, lineage…).

    Returns:
        the card path.
    """
    header = {"tags": ["merge", "darwin", method], "library_name": "transformers",
              "base_model": [p for p in parents]}
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             "# Merged model", "",
             f"Made with [darwin](https://github.com/darwin-merge/darwin) using **{method}**.", "",
             "## Parents", ""]
    lines += [f"- `{p}`" for p in parents]
    lines += ["", "## Details", "", f"- parameters: {num_parameters:,}", f"- dtype: {dtype}", "",
              "## Recipe", "", "```yaml", yaml.safe_dump(parameters, sort_keys=False).strip(), "```", ""]
    for sec in extra_sections or []:
        lines += [sec, ""]
    path = folder / "README.md"
    path.write_text("\n".join(lines))
    return path
