"""Lenient where mergekit is lenient, loud about it: harmless mergekit keys warn, typos stay fatal."""

from __future__ import annotations

import warnings

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

import darwin
from darwin.cli import app
from darwin.errors import DarwinWarning, RecipeError
from darwin.plan.recipe import load_recipe


def _linear(demo, **extra):
    r = {"merge_method": "linear", "dtype": "float32",
         "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 0.3}},
                    {"model": str(demo["parent_b"]), "parameters": {"weight": 0.7}}]}
    r.update(extra)
    return r


def _slerp(demo):
    # mergekit's own tests give slerp models a per-model weight, which slerp does not read
    return {"merge_method": "slerp", "base_model": str(demo["parent_a"]), "dtype": "float32",
            "parameters": {"t": 0.4},
            "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 0.5}},
                       {"model": str(demo["parent_b"]), "parameters": {"weight": 0.5}}]}


def _warned(fn):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        result = fn()
    return result, [str(w.message) for w in got if issubclass(w.category, DarwinWarning)]


def test_format_keys_warn_and_the_result_is_the_plain_recipe(demo, tmp_path):
    noisy = _linear(demo, name="stage-1", normalize=False)
    noisy["models"][0]["name"] = "a"
    _, msgs = _warned(lambda: darwin.merge(noisy, tmp_path / "noisy"))
    assert any(m.startswith("name has no effect") for m in msgs), msgs
    assert any("models[0].name has no effect" in m for m in msgs), msgs
    assert any("normalize has no effect outside 'parameters'" in m and "parameters.normalize" in m for m in msgs)
    darwin.merge(_linear(demo), tmp_path / "plain")
    a, b = load_file(str(tmp_path / "noisy" / "model.safetensors")), load_file(str(tmp_path / "plain" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # top-level normalize: no effect


def test_a_model_level_weight_outside_parameters_warns(demo):
    r = _linear(demo)
    r["models"][1]["weight"] = 0.9
    _, msgs = _warned(lambda: load_recipe(r))
    assert msgs == ["models[1].weight has no effect outside 'parameters' (mergekit ignores it too); "
                    "ignored. Probably meant models[1].parameters.weight"]


def test_a_parameter_the_method_does_not_read_warns_and_is_ignored(demo, tmp_path):
    _, msgs = _warned(lambda: darwin.merge(_slerp(demo), tmp_path / "w"))
    assert len(msgs) == 2 and all("weight has no effect with merge_method 'slerp'" in m for m in msgs), msgs
    clean = _slerp(demo)
    for m in clean["models"]:
        del m["parameters"]
    darwin.merge(clean, tmp_path / "clean")
    a, b = load_file(str(tmp_path / "w" / "model.safetensors")), load_file(str(tmp_path / "clean" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("key, hint", [("modelz", "models"), ("merge_methd", "merge_method"),
                                       ("base_modle", "base_model")])
def test_unknown_top_level_keys_are_errors_with_a_hint(demo, key, hint):
    r = _linear(demo)
    r[key] = r.pop("models") if key == "modelz" else "x"
    with pytest.raises(RecipeError, match=f"unknown key '{key}'; did you mean '{hint}'"):
        load_recipe(r)


def test_unknown_nested_keys_and_parameters_are_errors(demo):
    r = _linear(demo)
    r["models"][0]["modle"] = "x"
    with pytest.raises(RecipeError, match=r"models\[0\].modle: unknown key 'modle'; did you mean 'model'"):
        load_recipe(r)
    r = {"merge_method": "passthrough", "dtype": "float32",
         "slices": [{"sources": [{"model": str(demo["parent_a"]), "layer_range": [0, 2], "layer_rang": 1}]}]}
    with pytest.raises(RecipeError, match="sources.0.?.layer_rang|layer_rang': unknown key|unknown key 'layer_rang'"):
        load_recipe(r)
    r = _linear(demo)
    r["models"][0]["parameters"]["wieght"] = 0.1
    with pytest.raises(RecipeError, match="unknown parameter 'wieght' .*did you mean 'weight'"):
        darwin.merge(r, dry_run=True)


def test_cli_prints_one_warning_line_and_merges(demo, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_linear(demo, name="soup")))
    res = CliRunner().invoke(app, ["merge", str(path), "-o", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "warning: name has no effect" in res.output
    assert "Traceback" not in res.output and (tmp_path / "out" / "model.safetensors").exists()
    path.write_text(yaml.safe_dump({**_linear(demo), "merge_methd": "linear"}))
    res = CliRunner().invoke(app, ["merge", str(path), "-o", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "did you mean 'merge_method'" in res.output and not (tmp_path / "bad").exists()
