"""The code's shape: layering, short search functions, one decoder registry, package data, public API, plots."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import FITNESS_FILE, evolve_cfg
from safetensors.torch import load_file

import darwin
from darwin.errors import DarwinError, RecipeError

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "darwin"
DATA = Path(__file__).parent / "data"

# rank of each top-level part of the package: an import may only point to a lower rank (or stay
# inside its own part). cli → api → search → genome / diagnosis / fitness → plan → kernels → arch → io
RANKS = {"errors": -1, "io": 0, "arch": 1, "kernels": 2, "plan": 3, "genome": 4, "diagnosis": 4, "fitness": 4,
         "search": 5, "api": 6, "zoo": 7, "demo": 7, "cli": 8, "__main__": 9, "__init__": 9}


def _darwin_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level part) of every ``darwin.<part>`` import in a file, lazy ones included."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "darwin" and len(parts) > 1:
                out.append((node.lineno, parts[1]))
    return out


def _part(path: Path) -> str:
    rel = path.relative_to(PKG).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


def test_imports_only_point_down():
    bad = []
    for f in sorted(PKG.rglob("*.py")):
        own = _part(f)
        for line, target in _darwin_imports(f):
            if target != own and RANKS[target] >= RANKS[own]:
                bad.append(f"{f.relative_to(REPO)}:{line} ({own}) imports darwin.{target}")
    assert not bad, "\n".join(bad)


def test_search_functions_are_short():
    """No function in darwin/search/ over 60 lines or 6 parameters (self/cls not counted)."""
    long = []
    for f in sorted((PKG / "search").glob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                params = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                lines = node.end_lineno - node.lineno + 1
                if lines > 60 or len(params) > 6:
                    long.append(f"{f.name}:{node.lineno} {node.name}: {lines} lines, {len(params)} parameters")
    assert not long, long


def test_every_subpackage_has_an_init():
    missing = [str(d.relative_to(REPO)) for d in PKG.iterdir()
               if d.is_dir() and not d.name.startswith("__") and any(d.glob("*.py")) and not (d / "__init__.py").exists()]
    assert not missing


def test_public_functions_survive_importing_every_submodule():
    """No module or subpackage shares a name with a public function (darwin.mri, darwin.merge …)."""
    funcs = ["merge", "evolve", "golf", "trim_vocab", "crossover", "mri"]
    clashes = [n for n in funcs if (PKG / n).exists() or (PKG / f"{n}.py").exists()]
    assert not clashes
    for mod in pkgutil.walk_packages(darwin.__path__, "darwin."):
        if mod.name in ("darwin.__main__", "darwin.search.ray_pool"):
            continue  # runs the CLI / needs the optional ray extra
        importlib.import_module(mod.name)
    for n in funcs:
        assert callable(getattr(darwin, n)) and getattr(darwin, n).__module__ in ("darwin.api", "darwin.plan.trim",
                                                                                 "darwin.plan.crossover"), n


def test_trim_vocab_and_crossover_are_the_api_functions():
    from darwin.plan.crossover import crossover
    from darwin.plan.trim import trim_vocab

    assert darwin.trim_vocab is trim_vocab and darwin.crossover is crossover


# ----------------------------------------------------------------------------- genomes
def _builtin_names() -> list[str]:
    from darwin.genome.spec import builtin_genomes

    return builtin_genomes()


def test_builtin_genomes_are_package_files_not_links():
    from darwin.genome.spec import builtin_dir

    d = builtin_dir()
    assert d == PKG / "genome" / "builtin" and not d.is_symlink()
    assert {f.stem for f in d.glob("*.yaml")} == {"darwin14", "zones", "layerwise", "my-genome", "crossover",
                                                   "ffn-transplant", "golf"}
    assert all(not f.is_symlink() for f in d.iterdir())
    assert not (REPO / "genomes").exists()  # no second copy to drift


@pytest.fixture(scope="module")
def families(demo, tmp_path_factory):
    """A tiny bamba with the demo llamas' FFN shape, vocabulary and tokenizer (for ffn-transplant)."""
    from tiny_families import make_model, save
    from transformers import AutoTokenizer

    cfg = __import__("json").loads((demo["parent_a"] / "config.json").read_text())
    bamba = save(make_model("bamba", 5, vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                            intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_hidden_layers"]),
                 tmp_path_factory.mktemp("bamba") / "bamba")
    AutoTokenizer.from_pretrained(demo["parent_a"]).save_pretrained(bamba)
    return {"bamba": bamba}


def _parents_for(name: str, demo, families) -> tuple[list[str], str | None, int | None]:
    a, b = str(demo["parent_a"]), str(demo["parent_b"])
    return {"crossover": ([a, str(demo["ssm"])], None, None),
            "ffn-transplant": ([a, str(families["bamba"])], None, None),
            "golf": ([a], None, 45_000)}.get(name, ([a, b], str(demo["base"]), None))


@pytest.mark.parametrize("name", _builtin_names())
def test_every_builtin_genome_loads_and_decodes(name, demo, families):
    from darwin.genome.breeder import make_breeder
    from darwin.genome.decode import start_vector, vector_to_values
    from darwin.genome.registry import get_decoder
    from darwin.genome.spec import load_genome
    from darwin.io.checkpoint import Checkpoint
    from darwin.search.resident import check_plan_shapes

    spec = load_genome(name)
    parents, base, budget = _parents_for(name, demo, families)
    ckpts = {r: Checkpoint(r) for r in parents + ([base] if base else [])}
    breeder = make_breeder(spec, ckpts, parents, base, torch.float32, budget)
    n = breeder.num_layers
    plan = breeder.decode(spec, vector_to_values(spec, start_vector(spec, n), n), seed=0)
    check_plan_shapes(plan)
    assert plan.tasks and (budget is None or plan.num_parameters <= budget)
    declared = get_decoder(spec.decoder).baselines
    for label in breeder.baselines():
        assert any(label.startswith(d) for d in declared), (label, declared)


def test_decoder_declares_everything(demo):
    from darwin.genome.registry import Decoder, decoder_names, get_decoder

    assert set(decoder_names()) >= {"crossover", "darwin14", "ffn_transplant", "golf", "layerwise"}
    assert get_decoder("golf").mri_prior == "layer" and get_decoder("crossover").mri_prior is None
    assert "density_a" in get_decoder("darwin14").required_genes
    with pytest.raises(ValueError, match="exactly one"):
        Decoder(name="x")
    with pytest.raises(RecipeError, match="unknown decoder 'nope'"):
        get_decoder("nope")
    with pytest.raises(RecipeError, match="cannot import"):
        get_decoder("no_such_module_xyz:THING")
    with pytest.raises(RecipeError, match="not a darwin.genome.registry.Decoder"):
        get_decoder("darwin.genome.registry:BLEND_GENES")


def test_a_genome_naming_an_unknown_decoder_fails_at_load(tmp_path):
    from darwin.genome.spec import load_genome

    (tmp_path / "g.yaml").write_text("name: g\ndecoder: darwin15\ngenes: [{name: a}]\n")
    with pytest.raises(RecipeError, match="g.yaml.*unknown decoder 'darwin15'"):
        load_genome(tmp_path / "g.yaml")


def test_toy_decoder_registered_from_outside_evolves_and_replays(demo, tmp_path, monkeypatch):
    """tests/data/toy_decoder.py (shown in docs/genome.md) breeds a child; the recipe replays bit for bit,
    in this process through darwin.merge and in a fresh one through the CLI."""
    monkeypatch.syspath_prepend(str(DATA))
    monkeypatch.setenv("DARWIN_TEST_A", str(demo["parent_a"]))
    monkeypatch.setenv("DARWIN_TEST_B", str(demo["parent_b"]))
    cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=6, generations=4,
                     genome=str(DATA / "toy-genome.yaml"))
    res = darwin.evolve(cfg, tmp_path / "run", progress=False)
    assert set(res.baselines) == {"parent A", "parent B", "uniform 0.5"}
    assert set(res.best["genes"]) == {"ratio", "density_a", "density_b", "mri_trust", "merge_method_weight"}
    # the known optimum 0.7·A + 0.3·B is a ratio of 0.3: the search moves towards it
    assert res.best["fitness"] > res.baselines["uniform 0.5"]["fitness"]
    assert abs(res.best["genes"]["ratio"] - 0.3) < abs(0.5 - 0.3)
    child = load_file(str(res.child_dir / "model.safetensors"))
    again = darwin.merge(tmp_path / "run" / "recipe.yaml", tmp_path / "api-replay", progress=False)
    replay = load_file(str(again.out_dir / "model.safetensors"))
    assert child.keys() == replay.keys() and all(torch.equal(child[k], replay[k]) for k in child)
    env = {"PYTHONPATH": str(DATA), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, "-m", "darwin", "merge", str(tmp_path / "run" / "recipe.yaml"), "-o",
                    str(tmp_path / "cli-replay")], check=True, env=env, capture_output=True, cwd=tmp_path)
    cli = load_file(str(tmp_path / "cli-replay" / "model.safetensors"))
    assert all(torch.equal(child[k], cli[k]) for k in child)


def test_docs_show_the_toy_decoder_verbatim():
    doc = (REPO / "docs" / "genome.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    code = (DATA / "toy_decoder.py").read_text()
    body = code.split('"""', 2)[2].lstrip("\n")  # without the module docstring
    assert any(b.strip() == body.strip() for b in blocks)
    genome = (DATA / "toy-genome.yaml").read_text()
    assert any(b.strip() == genome.strip() for b in re.findall(r"```yaml\n(.*?)```", doc, flags=re.S))


# ----------------------------------------------------------------------------- public functions
def test_golf_function_writes_a_checked_child_that_replays(demo, tmp_path):
    """darwin.golf (what `darwin golf` calls; its CLI run is in test_golf.py): a child under the budget,
    measured from its files, whose recipe replays through darwin.merge bit for bit."""
    res = darwin.golf(demo["parent_a"], tmp_path / "api", max_params="45K", min_context=200, population=2,
                      generations=1, progress=False, method="depth")
    assert res.constraints["parameters"] <= 45_000 and res.constraints["params_ok"]
    assert res.child_dir == tmp_path / "api" / "child"
    a = load_file(str(res.child_dir / "model.safetensors"))
    r = load_file(str(darwin.merge(tmp_path / "api" / "recipe.yaml", tmp_path / "r", progress=False).out_dir
                      / "model.safetensors"))
    assert a.keys() == r.keys() and all(torch.equal(a[k], r[k]) for k in a)
    with pytest.raises(RecipeError, match="max_params"):
        darwin.golf(demo["parent_a"], tmp_path / "bad", max_params="lots", progress=False)
    assert not (tmp_path / "bad").exists()


def test_mri_device_follows_the_device_rule(demo):
    """``cuda:1`` (or any unavailable device) is an error, never a silent CPU fallback."""
    from darwin.diagnosis.scan import scan_model

    if torch.cuda.device_count() > 1:
        pytest.skip("this machine has a second GPU")
    with pytest.raises(DarwinError, match="cuda:1"):
        scan_model(str(demo["parent_a"]), device="cuda:1")
    with pytest.raises(DarwinError, match="cuda:1"):
        darwin.mri(str(demo["parent_a"]), None, device="cuda:1")


def test_plots_leave_the_matplotlib_backend_alone(tmp_path):
    import matplotlib

    from darwin.search.plot import plot_history

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's backend
    try:
        hist = [{"generation": 0, "candidates": [{"fitness": -1.0}, {"fitness": -0.5}]},
                {"generation": 1, "candidates": [{"fitness": -0.2}, {"fitness": None}]}]
        plot_history(hist, {"uniform 0.5": -0.7, "failed": None}, tmp_path / "f.png")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
        import matplotlib.pyplot as plt

        assert plt.get_fignums() == []  # nothing left in pyplot's registry
    finally:
        matplotlib.use(before)


# ----------------------------------------------------------------------------- docs agree with the code
def _commands() -> list[str]:
    from darwin.cli import app

    return sorted(c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands)


def _builtin_decoders() -> list[str]:
    from darwin.genome.registry import decoder_names, get_decoder

    def module(d):
        return (get_decoder(d).ratio_rule or get_decoder(d).breeder).__module__

    return [d for d in decoder_names() if module(d).startswith("darwin.")]  # not a test's own decoder


def test_readme_lists_every_command_genome_and_baseline():
    from darwin.genome.registry import get_decoder

    readme = (REPO / "README.md").read_text()
    genome_doc = (REPO / "docs" / "genome.md").read_text()
    evolve_doc = (REPO / "docs" / "evolve.md").read_text()
    missing = [f"command {c}" for c in _commands() if f"darwin {c}" not in readme]
    missing += [f"genome {g}" for g in _builtin_names() if f"`{g}`" not in genome_doc or g not in readme]
    missing += [f"decoder {d}" for d in _builtin_decoders() if f"`{d}`" not in genome_doc]
    missing += [f"baseline {b} ({d})" for d in _builtin_decoders() for b in get_decoder(d).baselines
                if b not in evolve_doc]
    assert not missing, missing
    shell = "\n".join(re.findall(r"```bash\n(.*?)```", readme, flags=re.S))
    documented = set(re.findall(r"^darwin ([a-z-]+)", shell, flags=re.M))
    documented |= set(re.findall(r"`darwin ([a-z-]+)`", readme))
    assert documented <= set(_commands()) | {"merge"}, documented - set(_commands())


def test_readme_layout_names_every_module():
    """README's Development section names every subpackage and every search module."""
    readme = (REPO / "README.md").read_text()
    subs = [d.name for d in PKG.iterdir() if (d / "__init__.py").exists()]
    missing = [s for s in subs if f"darwin/{s}/" not in readme]
    missing += [m.stem for m in (PKG / "search").glob("*.py") if m.stem != "__init__" and f"`{m.stem}`" not in readme]
    assert not missing, missing


def test_no_test_module_imports_another():
    bad = []
    for f in sorted(Path(__file__).parent.glob("test_*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[-1].startswith("test_"):
                bad.append(f"{f.name}: from {node.module}")
    assert not bad, bad


def test_wheel_check_script_exists_and_is_run_by_the_test_command():
    script = (REPO / "scripts" / "test").read_text()
    assert "check-wheel" in script and "ruff" in script and "mypy" in script
    assert shutil.which("bash") and (REPO / "scripts" / "check-wheel").exists()
