"""Typed errors raised by darwin.

Every error names the file, tensor or key at fault so that a user can act on it without a
traceback. The CLI turns them into a one-line message and a non-zero exit status.
"""

from __future__ import annotations

from typing import Any


class DarwinError(Exception):
    """Base class of every error darwin raises on bad input."""


class DarwinWarning(UserWarning):
    """Input darwin accepts that probably does not do what was meant (a key or parameter with no
    effect, as mergekit would silently ignore it). The CLI prints it as one ``warning:`` line."""


class CheckpointError(DarwinError):
    """A checkpoint folder, shard, index or tensor is missing, corrupt or inconsistent."""


class RecipeError(DarwinError):
    """A merge recipe is malformed: unknown key, bad value, unknown model or method."""


class CompatibilityError(DarwinError):
    """Parents cannot be merged as asked (shape, vocabulary, layer-count or tokenizer mismatch)."""

    #: the plan built so far (a :class:`darwin.plan.plan.MergePlan`), attached by the planner so the
    #: CLI can print its report; typed ``Any`` because errors sit below every other module
    plan: Any = None


class OutputExistsError(DarwinError):
    """The output folder exists and overwriting was not requested."""


def describe_validation_error(where: str, what: str, err) -> RecipeError:
    """A :class:`RecipeError` from a pydantic ``ValidationError``, naming each bad or unknown key.

    Args:
        where: the file (or "recipe") the data came from.
        what: what was being read ("recipe", "genome", "parents config").
        err: the ``pydantic.ValidationError``.
    """
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("function-", "union[", "list[")))
        if e["type"] == "extra_forbidden":
            parent = loc.rsplit(".", 1)[0] if "." in loc else ""
            lines.append(f"unknown key {e['loc'][-1]!r}" + (f" at {parent}" if parent else ""))
        else:
            lines.append(f"{loc or what}: {e['msg']}")
    return RecipeError(f"{where}: invalid {what}: " + "; ".join(list(dict.fromkeys(lines))[:5]))
