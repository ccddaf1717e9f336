"""Data shipped inside the package (built-in genomes, probe prompts), found with :mod:`importlib.resources`.

The files live in real package folders (``darwin/genome/builtin/``, ``darwin/diagnosis/probes/``), are
listed as package data in ``pyproject.toml``, and are found the same way from a checkout, an editable
install or an installed wheel, whatever the working directory.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def package_dir(package: str, folder: str) -> Path:
    """The filesystem folder ``folder`` inside the installed package ``package``.

    Args:
        package: dotted package name, e.g. ``"darwin.genome"``.
        folder: sub-folder holding the data files, e.g. ``"builtin"``.

    Raises:
        FileNotFoundError: the package has no such folder (a broken install), naming both.
    """
    path = Path(str(files(package).joinpath(folder)))
    if not path.is_dir():
        raise FileNotFoundError(f"package data folder {folder!r} of {package} not found at {path} "
                                "(reinstall darwin-merge)")
    return path
