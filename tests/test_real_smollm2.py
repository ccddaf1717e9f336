"""The real path: SmolLM2-135M from the zoo, tiny fine-tuned parents, darwin mri and darwin evolve.

Needs the converted zoo model (``.ci/run`` builds it into ``.cache/zoo/smollm2``; elsewhere set
``DARWIN_ZOO_SMOLLM2`` or run ``darwin zoo smollm2 .cache/zoo/smollm2``). Skipped when absent.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
ZOO = Path(os.environ.get("DARWIN_ZOO_SMOLLM2", Path(os.environ.get("DARWIN_CACHE", REPO / ".cache")) / "zoo" / "smollm2"))
EXAMPLE = REPO / "examples" / "smollm2-bible-code"

pytestmark = pytest.mark.skipif(not (ZOO / "model.safetensors").exists(),
                                reason=f"zoo model not built at {ZOO} (darwin zoo smollm2 {ZOO})")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    sys.path.insert(0, str(EXAMPLE))
    from build_parents import finetune
    from data import write_splits

    root = tmp_path_factory.mktemp("real")
    data = root / "data"
    write_splits(data)
    # a few fine-tune steps: real (small) task vectors on real text
    a = finetune(ZOO, data / "train_kjv.txt", root / "kjv", steps=3, seq=64, batch=2, seed=1, log=lambda m: None)
    b = finetune(ZOO, data / "train_code.txt", root / "code", steps=3, seq=64, batch=2, seed=2, log=lambda m: None)
    return {"root": root, "data": data, "a": a, "b": b}


def test_zoo_is_a_noop_when_cached():
    from darwin.zoo import build, is_built

    assert is_built(ZOO)
    before = (ZOO / "model.safetensors").stat().st_mtime
    assert build("smollm2", ZOO) == ZOO.resolve()
    assert (ZOO / "model.safetensors").stat().st_mtime == before
    cfg = json.loads((ZOO / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_hidden_layers"] == 30 and cfg["hidden_size"] == 576


def test_parents_differ_from_base(real):
    from darwin.io.checkpoint import Checkpoint

    base, a = Checkpoint(ZOO), Checkpoint(real["a"])
    k = "model.layers.10.mlp.up_proj.weight"
    delta = (a.get(k).float() - base.get(k).float()).norm()
    assert 0 < float(delta) < 0.1 * float(base.get(k).float().norm())


def test_real_mri_and_evolve(real):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from typer.testing import CliRunner

    import darwin
    from darwin.cli import app

    root = real["root"]
    res = CliRunner().invoke(app, ["mri", str(real["a"]), "--against", str(real["b"]), "-o", str(root / "mri")])
    assert res.exit_code == 0, res.output
    doc = json.loads((root / "mri" / "mri.json").read_text())
    assert len(doc["models"]["A"]["probe"]["bi"]["overall"]) == 30
    assert len(doc["r_mri"]) == 272  # every stored tensor of SmolLM2 (tied head stored once)

    cfg = {"parents": [str(real["a"]), str(real["b"])], "base": str(ZOO), "genome": "darwin14",
           "mri": {"enabled": True, "probes": ["code", "language"]},
           "fitness": [{"perplexity": {"files": [str(real["data"] / "search_kjv.txt")], "max_tokens": 128,
                                       "window": 128}, "weight": 0.5},
                       {"perplexity": {"files": [str(real["data"] / "search_code.txt")], "max_tokens": 128,
                                       "window": 128}, "weight": 0.5}],
           "search": {"population": 3, "generations": 2, "sigma0": 0.5, "seed": 0},
           # small tuned-baseline grids: the defaults (42 merges with a base) would dominate the test's time
           "baselines": {"linear": [0.3, 0.7], "slerp": [], "task_arithmetic": [],
                         "ties": {"density": [0.5], "lambda": [1.0]}, "dare_ties": {"density": [], "lambda": []}}}
    (root / "parents.yaml").write_text(yaml.safe_dump(cfg))
    run = darwin.evolve(root / "parents.yaml", root / "run", progress=False)
    assert len(run.history) == 2 and run.best["fitness"] is not None
    base_fits = {k: v["fitness"] for k, v in run.baselines.items()}
    assert {"tuned linear", "tuned ties"} <= set(base_fits)
    assert all(v is not None and v < 0 for v in base_fits.values())
    model = AutoModelForCausalLM.from_pretrained(run.child_dir).eval()
    tok = AutoTokenizer.from_pretrained(run.child_dir)
    ids = tok("In the beginning", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    assert torch.isfinite(model(input_ids=ids).logits).all()
    health = json.loads((root / "run" / "health.json").read_text())
    assert health["finite"] and len(health["layers"]) == 30
