"""Typed errors raised by darwin.

Every error names the file, tensor or key at fault so that a user can act on it without a
traceback. The CLI turns them into a one-line message and a non-zero exit status.
"""

from __future__ import annotations


class DarwinError(Exception):
    """Base class of every error darwin raises on bad input."""


class CheckpointError(DarwinError):
    """A checkpoint folder, shard, index or tensor is missing, corrupt or inconsistent."""


class RecipeError(DarwinError):
    """A merge recipe is malformed: unknown key, bad value, unknown model or method."""


class CompatibilityError(DarwinError):
    """Parents cannot be merged as asked (shape, vocabulary, layer-count or tokenizer mismatch)."""


class OutputExistsError(DarwinError):
    """The output folder exists and overwriting was not requested."""
