"""Atomic output folders and a streaming sharded safetensors writer.

Children are written into a hidden temporary folder beside the destination and renamed into place
only when complete, so an interrupted merge never leaves a half-written model and never damages an
existing one. Tensors stream to disk shard by shard: memory is bounded by one shard.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

from darwin.errors import DarwinError, OutputExistsError

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str | int) -> int:
    """Parse a size such as ``"5GB"``, ``"500M"``, ``"2GiB"`` or ``1000000`` into bytes.

    Decimal suffixes (KB, MB, GB) use powers of 1000, binary ones (KiB, MiB, GiB) powers of 1024,
    as the Hugging Face ``max_shard_size`` does.

    Raises:
        DarwinError: the text is not a size.
    """
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if not m:
        raise DarwinError(f"not a size: {text!r} (expected e.g. 500MB, 2GiB or a byte count)")
    value, unit, binary = float(m.group(1)), m.group(2).upper(), (m.group(3) or "").lower().startswith("i")
    base = 1024 if binary else 1000
    return int(value * base ** " KMGT".index(unit or " "))


def check_output_dir(out_dir: str | os.PathLike, *, force: bool = False) -> Path:
    """Resolve ``out_dir`` and refuse an existing one unless ``force`` (call before any work).

    Raises:
        OutputExistsError: ``out_dir`` exists and ``force`` is false, is a file, lies under a file,
            is empty, or is the current folder or one above it (never replaced, even with ``force``).
    """
    if not str(out_dir).strip():
        raise OutputExistsError("the output folder is empty (''); name a folder to write")
    out = Path(out_dir).expanduser().resolve()
    here = Path.cwd().resolve()
    if out == here or out in here.parents:
        raise OutputExistsError(f"{out_dir}: the output folder is the current folder or one above it; replacing it "
                                "would delete the folder you work in; name a new folder")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: is a file, not a folder; choose another output path")
    if out.exists() and not force:
        raise OutputExistsError(f"{out}: output folder exists; pass --force (force=True in Python) to replace it")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputExistsError(f"{out}: {parent} is a file, so the output folder cannot be created there")
            break
    return out


def refuse_input_overlap(out_dir: str | os.PathLike, inputs: Mapping[str, str | os.PathLike]) -> None:
    """Refuse an output folder that is, or contains, one of the inputs (replacing it would destroy them).

    Args:
        out_dir: the output folder about to be written (and maybe replaced).
        inputs: label (e.g. ``parent A``, the reference) → local path; paths that do not exist
            (hub ids) are skipped.

    Raises:
        RecipeError: naming the output and the input it would destroy.
    """
    from darwin.errors import RecipeError

    out = Path(out_dir).expanduser().resolve()
    for label, p in inputs.items():
        path = Path(p).expanduser()
        if not path.exists():
            continue
        path = path.resolve()
        if path == out:
            raise RecipeError(f"{out_dir}: the output folder is {label}; choose another folder")
        if out in path.parents:
            raise RecipeError(f"{out_dir}: the output folder contains {label} ({path}); replacing it would delete "
                              "it; choose another folder")


@contextlib.contextmanager
def atomic_output_dir(out_dir: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``out_dir`` only if the block finishes.

    Args:
        out_dir: final destination.
        force: replace an existing ``out_dir``. The old folder is removed only after the new one
            is complete.

    Raises:
        OutputExistsError: ``out_dir`` exists and ``force`` is false (checked before any work).
    """
    out = check_output_dir(out_dir, force=force)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; a model folder is as readable as any new folder
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
    os.rename(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class ShardedWriter:
    """Stream tensors into safetensors shards of at most ``max_shard_bytes`` each.

    Shards are named ``model-00001-of-0000N.safetensors`` and indexed by
    ``model.safetensors.index.json`` (HF conventions); a child that fits in one shard is written
    as a single ``model.safetensors`` with no index.

    Args:
        folder: destination folder (normally the temporary folder of :func:`atomic_output_dir`).
        max_shard_bytes: shard size limit in bytes; a single tensor larger than it gets a shard
            of its own.
    """

    def __init__(self, folder: str | os.PathLike, max_shard_bytes: int = 5 * 10**9) -> None:
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = 0
        self._shards: list[list[str]] = []
        self._total = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor; flushes a shard when the size limit would be exceeded."""
        if name in self._pending or any(name in s for s in self._shards):
            raise DarwinError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._pending and self._pending_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        t = tensor.detach().to("cpu").contiguous()
        if t.untyped_storage().nbytes() != nbytes:  # a view into a larger buffer: own its bytes
            t = t.clone()
        self._pending[name] = t
        self._pending_bytes += nbytes
        self._total += nbytes

    def _flush(self) -> None:
        if not self._pending:
            return
        idx = len(self._shards)
        save_file(self._pending, str(self.folder / f".shard-{idx:05d}.safetensors"),
                  metadata={"format": "pt"})
        self._shards.append(list(self._pending))
        self._pending, self._pending_bytes = {}, 0

    def finish(self) -> list[str]:
        """Write the last shard, give shards their final names and write the index.

        Returns:
            the shard file names written.
        """
        self._flush()
        n = len(self._shards)
        if n == 0:
            raise DarwinError("no tensors to write")
        if n == 1:
            os.rename(self.folder / ".shard-00000.safetensors", self.folder / "model.safetensors")
            return ["model.safetensors"]
        names, weight_map = [], {}
        for i, tensors in enumerate(self._shards):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.rename(self.folder / f".shard-{i:05d}.safetensors", self.folder / fname)
            names.append(fname)
            weight_map.update({t: fname for t in tensors})
        index = {"metadata": {"total_size": self._total}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        return names
