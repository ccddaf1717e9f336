"""Multi-stage recipes (mergekit-multi style): stages by name, dependency order, done stages kept."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import darwin
from darwin.cli import app
from darwin.errors import RecipeError
from darwin.plan.stages import STAGE_RECORD, read_stages

MULTI = """\
merge_method: linear
models:
  - model: soup
    parameters: {{weight: 0.5}}
  - model: {b}
    parameters: {{weight: 0.5}}
dtype: float32
---
name: soup
merge_method: linear
models:
  - model: {base}
    parameters: {{weight: 0.25}}
  - model: {a}
    parameters: {{weight: 0.75}}
dtype: float32
"""


def _w(folder, k="model.layers.0.mlp.up_proj.weight"):
    return load_file(str(folder / "model.safetensors"))[k]


def test_stages_run_in_dependency_order_and_compose(demo, tmp_path):
    path = tmp_path / "multi.yaml"
    path.write_text(MULTI.format(base=demo["base"], a=demo["parent_a"], b=demo["parent_b"]))
    stages = read_stages(path)
    assert [s.name for s in stages] == ["soup", None]
    res = darwin.merge(path, tmp_path / "final", progress=False)
    soup = tmp_path / "final-stages" / "soup"
    torch.testing.assert_close(_w(soup), 0.25 * _w(demo["base"]) + 0.75 * _w(demo["parent_a"]))
    torch.testing.assert_close(_w(tmp_path / "final"), 0.5 * _w(soup) + 0.5 * _w(demo["parent_b"]))
    assert res.out_dir == (tmp_path / "final").resolve()
    # a second run redoes nothing; a changed upstream stage redoes it and everything after it
    stamp = (soup / "model.safetensors").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["merge", str(path), "-o", str(tmp_path / "final")])
    assert res.exit_code == 0, res.output
    assert (soup / "model.safetensors").stat().st_mtime_ns == stamp
    path.write_text(path.read_text().replace("weight: 0.25", "weight: 0.5"))
    darwin.merge(path, tmp_path / "final", progress=False)
    torch.testing.assert_close(_w(soup), (0.5 * _w(demo["base"]) + 0.75 * _w(demo["parent_a"])) / 1.25)
    torch.testing.assert_close(_w(tmp_path / "final"), 0.5 * _w(soup) + 0.5 * _w(demo["parent_b"]))
    assert json.loads((soup / STAGE_RECORD).read_text())["stage"] == "soup"


@pytest.mark.parametrize("text, match", [
    ("name: x\nmerge_method: linear\nmodels: [{model: y}]\n---\nname: y\nmerge_method: linear\nmodels: [{model: x}]\n",
     "cycle"),
    ("name: x\nmerge_method: linear\nmodels: [{model: a}]\n---\nname: x\nmerge_method: linear\nmodels: [{model: a}]\n",
     "used twice"),
    ("merge_method: linear\nmodels: [{model: a}]\n---\nmerge_method: linear\nmodels: [{model: a}]\n", "more than one"),
    ("name: [1]\nmerge_method: linear\nmodels: [{model: a}]\n---\n- 1\n", "name must be a plain string"),
    ("merge_method: linear\nmodels: [{model: a}]\n---\n- 1\n", "document 2 is not a mapping"),
])
def test_bad_stage_files_are_refused(tmp_path, text, match):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=match):
        darwin.merge(path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
