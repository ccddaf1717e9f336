"""User fitness functions given as ``module:function`` or ``path/to/file.py:function``."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from darwin.errors import RecipeError


def load_callable(spec: str) -> Callable[[Any, Any], float]:
    """Import ``module:function`` (or ``file.py:function``) and return the callable.

    Raises:
        RecipeError: malformed spec, import failure, missing or non-callable attribute.
    """
    if ":" not in spec:
        raise RecipeError(f"python fitness {spec!r}: expected 'module:function' or 'file.py:function'")
    mod_name, _, attr = spec.rpartition(":")
    try:
        if mod_name.endswith(".py"):
            path = Path(mod_name).resolve()
            if not path.exists():
                raise RecipeError(f"python fitness {spec!r}: {path} does not exist")
            s = importlib.util.spec_from_file_location(f"darwin_user_fitness_{path.stem}", path)
            assert s is not None and s.loader is not None  # a .py path always gets a source-file spec and loader
            module = importlib.util.module_from_spec(s)
            s.loader.exec_module(module)
        else:
            module = importlib.import_module(mod_name)
    except RecipeError:
        raise
    except Exception as e:
        raise RecipeError(f"python fitness {spec!r}: cannot import {mod_name!r} ({type(e).__name__}: {e})") from e
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RecipeError(f"python fitness {spec!r}: {mod_name!r} has no callable {attr!r}")
    return fn
