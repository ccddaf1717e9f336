"""Non-weight files a child inherits: tokenizer, generation config, chat template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                   "merges.txt", "tokenizer.model", "added_tokens.json", "chat_template.jinja",
                   "chat_template.json", "vocab.txt")


#: files any one of which makes a folder's tokenizer loadable
TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer.model", "vocab.json", "tokenizer_config.json")


def has_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds tokenizer files."""
    return any((folder / f).is_file() for f in TOKENIZER_MARKERS)


def require_tokenizer(folder: Path, why: str) -> None:
    """Stop before any work when a step needs a tokenizer the folder does not have.

    Raises:
        CheckpointError: naming the folder, the files looked for and ``why`` (what needs it and
            what to do instead).
    """
    from darwin.errors import CheckpointError

    if not has_tokenizer(folder):
        raise CheckpointError(f"{folder}: no tokenizer files ({', '.join(TOKENIZER_MARKERS)}); {why}")


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer and chat-template files present in ``src`` to ``dst``; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
            copied.append(name)
    return copied


def copy_generation_config(src: Path, dst: Path) -> bool:
    """Copy ``generation_config.json`` if ``src`` has one."""
    if (src / "generation_config.json").is_file():
        shutil.copy2(src / "generation_config.json", dst / "generation_config.json")
        return True
    return False


def write_chat_template(dst: Path, template: str) -> Path:
    """Write a chat template (Jinja text) as ``chat_template.jinja``, the transformers convention, and
    remove every other copy of a template in ``dst`` (``chat_template.json``, the ``chat_template``
    key of ``tokenizer_config.json``), so no loader can pick an older one."""
    (dst / "chat_template.json").unlink(missing_ok=True)
    cfg_path = dst / "tokenizer_config.json"
    if cfg_path.is_file():
        cfg = json.loads(cfg_path.read_text())
        if isinstance(cfg, dict) and cfg.pop("chat_template", None) is not None:
            cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False))
    path = dst / "chat_template.jinja"
    path.write_text(template)
    return path
