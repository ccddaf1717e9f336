"""Run recipes through ``mergekit-yaml`` (the independent reference) and darwin side by side.

mergekit runs in one subprocess for all recipes (its import cost, seconds, is paid once) while
darwin merges the same recipes in this process. darwin never imports mergekit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

_DRIVER = """
import sys
from mergekit.scripts.run_yaml import main
flags = sys.argv[1].split()
for recipe, out in zip(sys.argv[2::2], sys.argv[3::2]):
    print("=== mergekit-yaml", recipe, flush=True)
    main([recipe, out, "--quiet", "--no-write-model-card", *flags], standalone_mode=False)
"""


def merge_both(recipes: dict[str, str], root: Path, *, copy_tokenizer: bool = True) -> dict[str, tuple[Path, Path]]:
    """Write each recipe (YAML or JSON text) under ``root`` and merge it with both tools.

    Returns:
        name → (darwin child folder, mergekit child folder).
    """
    import darwin
    from darwin.errors import DarwinWarning

    pytest.importorskip("mergekit.scripts.run_yaml", reason="mergekit not installed")
    out, argv = {}, []
    for name, text in recipes.items():
        (root / f"{name}.yaml").write_text(text)
        out[name] = (root / f"darwin-{name}", root / f"mergekit-{name}")
        argv += [str(root / f"{name}.yaml"), str(out[name][1])]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false")
    flags = "" if copy_tokenizer else "--no-copy-tokenizer"
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, flags, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, env=env)
    try:
        for name in out:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DarwinWarning)
                darwin.merge(str(root / f"{name}.yaml"), out[name][0], progress=False, device="cpu")
    finally:
        log = proc.communicate(timeout=600)[0].decode(errors="replace")
    assert proc.returncode == 0, f"mergekit-yaml failed:\n{log[-4000:]}"
    return out
