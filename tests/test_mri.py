"""MRI: static statistics, probe importance, pair fusion, CLI outputs."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from darwin.cli import app
from darwin.diagnosis.fuse import pair_ratios
from darwin.diagnosis.probe import FAMILIES, load_probes
from darwin.diagnosis.scan import scan_model
from darwin.diagnosis.static import tensor_stats, v5_score


def test_probe_sets_ship_with_16_prompts_each():
    probes = load_probes()
    assert set(probes) == set(FAMILIES)
    assert all(len(p) == 16 for p in probes.values())
    assert any("\n" in p for p in probes["code"])  # multi-line code prompts survive


def test_static_stats_golden():
    # |w| = 1 everywhere: one histogram bin → entropy 0; std of ±1 is 1; ‖·‖ = 2
    s = tensor_stats(torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert s["entropy"] == 0.0 and s["std"] == pytest.approx(1.0) and s["l2"] == pytest.approx(2.0)
    assert s["v5"] == pytest.approx(0.5 * 0 + 0.3 * 1 + 0.002 * 2)
    # two equally filled extreme bins → 1 bit
    s = tensor_stats(torch.tensor([0.0, 0.0, 1.0, 1.0]), bins=4)
    assert s["entropy"] == pytest.approx(1.0)
    assert v5_score(2.0, 0.5, 1000.0) == pytest.approx(1.0 + 0.15 + 0.2)  # ‖T‖ capped at 100
    assert tensor_stats(torch.zeros(5))["entropy"] == 0.0


def test_pair_ratios_formula():
    r = pair_ratios({"w": 1.0, "n": 3.0}, {"w": 3.0, "n": 1.0}, {"w": 0, "n": None}, [0.1], [0.3])
    assert r["w"] == pytest.approx(0.4 * 0.75 + 0.6 * 0.75)
    assert r["n"] == pytest.approx(0.25)  # outside layers: static only
    assert pair_ratios({"z": 0.0}, {"z": 0.0}, {"z": None}, None, None)["z"] == 0.5


def test_identity_layer_scores_lowest(demo, tmp_path):
    """Zeroing a layer's output projections makes it an identity map: lowest Block Influence."""
    m = tmp_path / "m"
    shutil.copytree(demo["parent_a"], m)
    sd = load_file(str(m / "model.safetensors"))
    for k in ("self_attn.o_proj.weight", "mlp.down_proj.weight"):
        sd[f"model.layers.2.{k}"] = torch.zeros_like(sd[f"model.layers.2.{k}"])
    save_file(sd, str(m / "model.safetensors"), metadata={"format": "pt"})
    scan = scan_model(str(m))
    for metric in ("bi", "angular"):
        for fam, vals in scan.probe[metric].items():
            assert min(range(4), key=lambda i: vals[i]) == 2, (metric, fam, vals)
            assert vals[2] == pytest.approx(0.0, abs=1e-5 if metric == "bi" else 1e-3)  # arccos is steep at 1


def test_mri_cli_pair(demo, tmp_path):
    out = tmp_path / "mri"
    res = CliRunner().invoke(app, ["mri", str(demo["parent_a"]), "--against", str(demo["parent_b"]), "-o", str(out)])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "mri.json").read_text())
    assert doc["version"] == 1 and set(doc["models"]) == {"A", "B"}
    assert len(doc["r_mri"]) == 39 and all(0 <= v <= 1 for v in doc["r_mri"].values())
    t = doc["models"]["A"]["tensors"]["model.layers.1.mlp.up_proj.weight"]
    assert t["layer"] == 1 and t["component"] == "ffn" and math.isfinite(t["v5"])
    assert len(doc["models"]["B"]["probe"]["bi"]["overall"]) == 4
    assert (out / "mri.png").stat().st_size > 1000
    assert "MRI per layer" in res.output
    res = CliRunner().invoke(app, ["mri", str(tmp_path / "missing"), "-o", str(tmp_path / "x")])
    assert res.exit_code == 2 and "missing" in res.output and not (tmp_path / "x").exists()


def test_heatmap_scale_tells_the_middle_layers_apart():
    """Layer 0 ≈ 1.0 and layers 1-3 at 0.02-0.15 (as on SmolLM2): on the log scale neighbouring
    layers are ≥ 0.2 apart in colour position; a linear scale would put them within 0.1."""
    from darwin.diagnosis.report import bi_norm

    m = [1.0, 0.02, 0.05, 0.15]
    norm = bi_norm(m)
    pos = [float(norm(v)) for v in m]
    assert pos[0] == pytest.approx(1.0) and pos[1] == pytest.approx(0.0)
    assert min(b - a for a, b in zip(pos[1:], pos[2:])) > 0.2
    assert (0.05 - 0.02) / (1.0 - 0.02) < 0.1  # the linear scale's gap, for contrast
    assert bi_norm([0.0, 0.0]).vmax == 1.0  # no positive value: a valid scale all the same
