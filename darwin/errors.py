"""Typed errors raised by darwin.

Every error names the file, tensor or key at fault so that a user can act on it without a
traceback. The CLI turns them into a one-line message and a non-zero exit status.
"""

from __future__ import annotations

import re
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


_TYPE_TAGS = {"str": "a string", "bool": "true/false", "int": "an integer", "float": "a number",
              "list": "a list", "dict": "a mapping"}


def _is_branch(part: Any) -> bool:
    """A pydantic location part naming a union branch (a model class or a type), not a key."""
    text = str(part)
    return text in _TYPE_TAGS or (text[:1].isupper() and text.isidentifier() and not text.isupper())


def _split(loc: tuple) -> tuple[str, str | None, str]:
    """(key path before the first union branch, that branch or None, key path after it)."""
    before: list[str] = []
    after: list[str] = []
    branch = None
    for p in loc:
        text = str(p)
        wrapped = re.fullmatch(r"function-\w+\[.*, (\w+)\]", text)  # a model with a validator
        if wrapped and _is_branch(wrapped.group(1)):
            text = p = wrapped.group(1)
        elif text.startswith(("function-", "union[", "list[")) or text == "[key]":
            continue
        if branch is None and _is_branch(p):
            branch = text
        else:
            (after if branch is not None else before).append(text)
    return ".".join(before), branch, ".".join(after)


def _message(e: dict) -> str:
    msg = re.sub(r" or instance of \w+", "", e["msg"])
    msg = re.sub(r"^(Value|Assertion) error, ", "", msg)  # our validators' own words, without pydantic's prefix
    return msg.replace("Input should be a valid dictionary", "should be a mapping (key: value)")


def describe_validation_error(where: str, what: str, err) -> RecipeError:
    """A :class:`RecipeError` from a pydantic ``ValidationError``, naming each bad or unknown key.

    Errors from the branches of a union field are folded: when some error at a key comes from no
    branch, only those are shown; when every branch of plain types failed, one line says which
    types the key takes; otherwise the branch with the fewest errors (the form the user most
    likely meant) is shown.

    Args:
        where: the file (or "recipe") the data came from.
        what: what was being read ("recipe", "genome", "parents config").
        err: the ``pydantic.ValidationError``.
    """
    groups: dict[str, list[tuple[str | None, str, dict]]] = {}
    for e in err.errors():
        before, branch, after = _split(e["loc"])
        groups.setdefault(before, []).append((branch, after, e))
    lines = []
    for key, errs in groups.items():
        if key and all(e.get("input", 0) is None for _, _, e in errs):
            lines.append(f"{key}: is empty (null); give it a value or leave the key out")
            continue
        typed = [(b, a, e) for b, a, e in errs if b in _TYPE_TAGS and not a]
        plain: list[tuple[str | None, str, dict]] = [(b, a, e) for b, a, e in errs if b is None]
        if typed and all(e["type"].endswith("_type") for _, _, e in plain) and len(typed) + len(plain) == len(errs):
            kinds = [_TYPE_TAGS[b] for b, _, _ in typed if b] + [_TYPE_TAGS.get(e["type"][:-5], e["type"][:-5])
                                                                 for _, _, e in plain]
            lines.append(f"{key or what}: should be {' or '.join(dict.fromkeys(kinds))}; got {errs[0][2].get('input')!r}")
            continue
        if not plain:
            by_branch: dict[str, list[tuple[str | None, str, dict]]] = {}
            for item in errs:
                by_branch.setdefault(str(item[0]), []).append(item)
            shaped = {b: v for b, v in by_branch.items() if b not in _TYPE_TAGS} or by_branch
            plain = min(shaped.values(), key=len)
        for _, after, e in plain:
            full = ".".join(k for k in (key, after) if k)
            if e["type"] == "extra_forbidden":
                at = full.rsplit(".", 1)[0] if "." in full else ""
                lines.append(f"unknown key {e['loc'][-1]!r}" + (f" at {at}" if at else ""))
            elif "[key]" in [str(p) for p in e["loc"]]:
                lines.append(f"{full or what}: key {e['loc'][-2]!r}: {_message(e)}")
            else:
                msg = _message(e)
                lines.append(msg if full and msg.startswith(f"{full}: ") else f"{full or what}: {msg}")
    return RecipeError(f"{where}: invalid {what}: " + "; ".join(list(dict.fromkeys(lines))[:5]))
