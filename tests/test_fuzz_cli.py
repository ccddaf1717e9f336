"""Fuzz: random recipes, parents.yaml and genome recipes through the CLI never end in a traceback.

Documents mix real keys with random ones, random types, values, nesting and encodings (bounded
example counts keep the suite fast). Every run exits 0 or 2; a failure prints one ``error:`` line
and leaves no output folder behind.
"""

from __future__ import annotations

import os
import shutil

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from darwin.cli import app

RECIPE_KEYS = ["merge_method", "models", "slices", "base_model", "parameters", "dtype", "out_dtype",
               "tokenizer_source", "tokenizer", "chat_template", "seed", "name", "normalize", "genome", "values",
               "parents", "model", "weight", "density", "t", "sources", "layer_range", "filter", "value", "source",
               "tokens", "force", "pad_to_multiple_of", "kind", "token", "token_id"]
PARENTS_KEYS = ["parents", "genome", "mri", "fitness", "search", "baselines", "selection", "test", "base",
                "fitness_dtype", "device", "perplexity", "files", "python", "lm_eval", "population", "generations",
                "sigma0", "seed", "enabled", "budget", "patience", "workers"]
METHODS = ["linear", "slerp", "ties", "dare_ties", "task_arithmetic", "passthrough", "model_stock", "nuslerp",
           "multislerp", "karcher", "sce", "ram", "nearswap", "arcee_fusion", "della", "breadcrumbs", "darwin_blend"]


def _values(paths: list[str]):
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 10 ** 6), st.floats(allow_nan=True),
                        st.text(max_size=12), st.sampled_from(paths + METHODS + ["union", "base", "auto", "bfloat16",
                                                                                 "float16", "chatml", "-1", "{{"]))
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(RECIPE_KEYS + PARENTS_KEYS), st.text(max_size=6)), inner,
                        max_size=5)), max_leaves=14)


def _documents(keys: list[str], paths: list[str]):
    return st.dictionaries(st.one_of(st.sampled_from(keys), st.text(max_size=8)), _values(paths), max_size=7)


ENCODINGS = st.sampled_from(["utf-8", "utf-16", "latin-1", "raw"])


def _write(path, doc, encoding, junk: bytes) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True)
    path.write_bytes(junk + text.encode("utf-8", "surrogatepass") if encoding == "raw"
                     else text.encode(encoding, "replace"))


def _check(res, out) -> None:
    assert res.exit_code in (0, 2), f"exit {res.exit_code}: {res.output[-2000:]!r} {res.exception!r}"
    assert "Traceback" not in res.output
    if res.exit_code == 2:
        assert sum(1 for line in res.output.splitlines() if line.startswith("error:")) == 1, res.output
        assert not out.exists(), f"{out} left behind"
    shutil.rmtree(out, ignore_errors=True)


#: examples per target in the suite; ``DARWIN_FUZZ_EXAMPLES=2000`` for a long local hunt
EXAMPLES = int(os.environ.get("DARWIN_FUZZ_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])


@SETTINGS
@given(data=st.data())
def test_fuzzed_recipes_through_darwin_merge(demo, tmp_path, data):
    paths = [str(demo[k]) for k in ("base", "parent_a", "parent_b")]
    doc = data.draw(_documents(RECIPE_KEYS, paths))
    if data.draw(st.booleans()):  # often a nearly valid recipe with one random part
        doc = {"merge_method": data.draw(st.sampled_from(METHODS)),
               "models": [{"model": p, "parameters": data.draw(_values(paths))} for p in paths[1:]], **doc}
    recipe = tmp_path / "r.yaml"
    _write(recipe, doc, data.draw(ENCODINGS), data.draw(st.binary(max_size=6)))
    out = tmp_path / "out"
    _check(CliRunner().invoke(app, ["merge", str(recipe), "-o", str(out)]), out)


@SETTINGS
@given(data=st.data())
def test_fuzzed_parents_configs_through_darwin_evolve(demo, tmp_path, data):
    paths = [str(demo[k]) for k in ("base", "parent_a", "parent_b")]
    doc = data.draw(_documents(PARENTS_KEYS, paths))
    if data.draw(st.booleans()):
        doc = {"parents": paths[1:], "genome": data.draw(st.sampled_from(["darwin14", "zones", "nope", 3])), **doc,
               "fitness": data.draw(_values(paths))}
    cfg = tmp_path / "p.yaml"
    _write(cfg, doc, data.draw(ENCODINGS), data.draw(st.binary(max_size=6)))
    out = tmp_path / "run"
    _check(CliRunner().invoke(app, ["evolve", str(cfg), "-o", str(out)]), out)


@SETTINGS
@given(data=st.data())
def test_fuzzed_genome_recipes_through_darwin_merge(demo, tmp_path, data):
    paths = [str(demo[k]) for k in ("parent_a", "parent_b")]
    doc = {"genome": data.draw(st.one_of(st.sampled_from(["darwin14", "zones"]), _values(paths))),
           "parents": data.draw(st.one_of(st.just(paths), _values(paths))),
           **data.draw(_documents(["values", "seed", "base", "mri", "r_mri"], paths))}
    recipe = tmp_path / "g.yaml"
    _write(recipe, doc, "utf-8", b"")
    out = tmp_path / "out"
    _check(CliRunner().invoke(app, ["merge", str(recipe), "-o", str(out)]), out)
