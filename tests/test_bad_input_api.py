"""Bad input on the public functions and the decoder registry: a clear DarwinError, and nothing lost."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import yaml
from helpers import FITNESS_FILE, evolve_cfg

import darwin
from darwin.errors import DarwinError, OutputExistsError, RecipeError


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ----------------------------------------------------------------------------- nothing is lost
def test_force_never_deletes_a_folder_that_is_not_a_run_or_holds_a_parent(demo, tmp_path):
    models = tmp_path / "models"
    a = _copy(demo["parent_a"], models / "a")
    b = _copy(demo["parent_b"], models / "b")
    before = _files(models)
    cfg = evolve_cfg({"parent_a": a, "parent_b": b}, [{"python": f"{FITNESS_FILE}:distance_to_target"}],
                     population=2, generations=1)
    with pytest.raises(RecipeError, match="contains parent"):
        darwin.evolve(cfg, models, force=True, progress=False)
    with pytest.raises(RecipeError, match="is parent"):
        darwin.evolve(cfg, a, force=True, progress=False)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a darwin run folder"):
        darwin.evolve(cfg, other, force=True, progress=False)
    assert (other / "keep.txt").read_text() == "mine" and _files(models) == before
    with pytest.raises(RecipeError, match="contains parent"):
        darwin.merge({"merge_method": "linear", "models": [{"model": str(a), "parameters": {"weight": 1.0}},
                                                           {"model": str(b), "parameters": {"weight": 1.0}}]},
                     models, force=True, progress=False)
    with pytest.raises(RecipeError, match="scanned model"):
        darwin.mri(str(a), a, force=True, probes=False)
    with pytest.raises(RecipeError, match="model being trimmed"):
        darwin.trim_vocab(a, [str(FITNESS_FILE)], models, force=True)
    assert _files(models) == before


def test_failed_golf_restart_keeps_the_previous_trimmed_parent(demo, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog " * 20)
    out = tmp_path / "golf"
    darwin.golf(demo["parent_a"], out, max_params="45K", min_context=200, population=2, generations=1,
                trim_corpus=corpus, progress=False, method="depth")  # one path, not a list: accepted as one file
    trimmed = tmp_path / "golf-trimmed-0"
    before = (trimmed / "tokenizer.json").read_bytes()
    other = tmp_path / "other.txt"
    other.write_text("zebra xylophone quartz " * 20)
    with pytest.raises(RecipeError, match="min_context"):
        darwin.golf(demo["parent_a"], out, max_params="45K", min_context=100_000, population=2, generations=1,
                    trim_corpus=[other], force=True, progress=False, method="depth")
    assert (trimmed / "tokenizer.json").read_bytes() == before  # restored, not replaced
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".golf-trimmed")]


# ----------------------------------------------------------------------------- decoders
def test_broken_decoder_modules_and_rules_are_named(demo, tmp_path, monkeypatch):
    from darwin.genome.registry import Decoder, get_decoder, register_decoder

    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "zde_decoder.py").write_text("1 / 0\n")
    (mods / "bad_rules.py").write_text(
        "from darwin.genome.registry import Decoder\n"
        "NAN = Decoder(name='nan_rule', ratio_rule=lambda v, r, n, x: float('nan'), genes=('ratio',))\n"
        "RAISES = Decoder(name='raising_rule', ratio_rule=lambda v, r, n, x: v['nope'], genes=('ratio',))\n"
        "NOT_A_BREEDER = Decoder(name='int_breeder', breeder=lambda req: 42)\n")
    monkeypatch.syspath_prepend(str(mods))
    with pytest.raises(RecipeError, match="zde_decoder:X.*ZeroDivisionError"):
        get_decoder("zde_decoder:X")
    with pytest.raises(RecipeError, match="module:attribute"):
        get_decoder(":")
    with pytest.raises(RecipeError, match="built in"):
        register_decoder(Decoder(name="golf", ratio_rule=lambda v, r, n, x: 0.5))
    with pytest.raises(ValueError, match="exactly two parents"):
        Decoder(name="one", ratio_rule=lambda v, r, n, x: 0.5, min_parents=1)
    with pytest.raises(ValueError, match="tuple of names"):
        Decoder(name="str_genes", ratio_rule=lambda v, r, n, x: 0.5, genes="ratio")  # type: ignore[arg-type]
    genes = [{"name": g} for g in ("ratio", "density_a", "density_b", "mri_trust", "merge_method_weight")]
    for attr, match in (("NAN", "gave nan"), ("RAISES", "ratio rule failed.*KeyError"),
                        ("NOT_A_BREEDER", "returned a int")):
        g = tmp_path / f"{attr}.yaml"
        g.write_text(yaml.safe_dump({"name": attr, "decoder": f"bad_rules:{attr}",
                                     "genes": genes if attr != "NOT_A_BREEDER" else []}))
        cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=2, generations=1,
                         genome=str(g))
        with pytest.raises(RecipeError, match=match):
            darwin.evolve(cfg, tmp_path / f"run-{attr}", progress=False)
        assert not (tmp_path / f"run-{attr}").exists()


@pytest.mark.parametrize("change, match", [
    ({"high": float("inf")}, "finite"),
    ({"options": {"transplant_low": 0.9, "transplant_high": 0.1}}, "transplant_low <= transplant_high"),
    ({"options": {"rescale": "bogus"}}, "rescale"),
    ({"per_layer_genes": [{"name": "x"}], "extra_gene": "layer_0_x"}, "defined twice"),
])
def test_genome_files_are_checked_before_the_run(demo, tmp_path, change, match):
    from darwin.genome.spec import builtin_dir

    g = yaml.safe_load((builtin_dir() / "darwin14.yaml").read_text())
    if "high" in change:
        g["genes"][0]["high"] = change["high"]
    if "options" in change:
        g["options"] = {**g.get("options", {}), **change["options"]}
    if "per_layer_genes" in change:
        g["per_layer_genes"] = change["per_layer_genes"]
        g["genes"].append({"name": change["extra_gene"]})
    (tmp_path / "g.yaml").write_text(yaml.safe_dump(g))
    cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=2, generations=1,
                     genome=str(tmp_path / "g.yaml"))
    with pytest.raises(RecipeError, match=match):
        darwin.evolve(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- values
def test_genome_recipes_and_budgets_refuse_nonsense(demo, tmp_path):
    rec = {"genome": "darwin14", "parents": [str(demo["parent_a"]), str(demo["parent_b"])],
           "values": {}, "dtype": "float32"}
    for extra, match in (({"mri": {"model.embed_tokens.weight": float("nan")}}, "mri"),
                         ({"max_params": 1000}, "for the golf genome"),
                         ({"prior": [5.0, -3.0]}, "prior")):
        with pytest.raises(RecipeError, match=match):
            darwin.merge({**rec, **extra}, dry_run=True)
    from darwin.genome.spec import load_genome

    spec = load_genome("darwin14")
    values = {g.name: g.start for g in spec.genes}
    with pytest.raises(RecipeError, match="seed"):
        darwin.merge({**rec, "values": values}, dry_run=True, seed="abc")  # type: ignore[arg-type]
    for budget in ("1e400", float("inf")):
        with pytest.raises(RecipeError, match="max_params"):
            darwin.golf(demo["parent_a"], tmp_path / "g", max_params=budget, progress=False)
    with pytest.raises(RecipeError, match="out_dir"):
        darwin.merge(rec)
    assert not (tmp_path / "g").exists()


def test_unavailable_devices_are_errors_everywhere(demo, tmp_path):
    import torch

    if torch.backends.mps.is_available():
        pytest.skip("this machine has mps")
    with pytest.raises(DarwinError, match="mps"):
        darwin.mri(str(demo["parent_a"]), None, device="mps")
    cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=2, generations=1,
                     device="mps")
    with pytest.raises(DarwinError, match="mps"):
        darwin.evolve(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_bad_decoder_module_is_one_line(demo, tmp_path):
    import subprocess

    (tmp_path / "boom_decoder.py").write_text("raise SyntaxError('boom')\n")
    (tmp_path / "g.yaml").write_text("name: g\ndecoder: boom_decoder:X\ngenes: [{name: a}]\n")
    cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=2, generations=1,
                     genome=str(tmp_path / "g.yaml"))
    (tmp_path / "parents.yaml").write_text(yaml.safe_dump(cfg))
    p = subprocess.run([sys.executable, "-m", "darwin", "evolve", str(tmp_path / "parents.yaml"), "-o",
                        str(tmp_path / "run")], capture_output=True, text=True, cwd=tmp_path,
                       env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert p.returncode == 2 and "Traceback" not in p.stderr and "SyntaxError: boom" in p.stderr
    assert not (tmp_path / "run").exists()
