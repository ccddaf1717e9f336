"""Parents without tokenizer files: what needs no tokenizer works, the rest stops before any work."""

from __future__ import annotations

import shutil

import pytest
import yaml
from helpers import evolve_cfg
from typer.testing import CliRunner

from darwin.cli import app


@pytest.fixture(scope="module")
def bare(demo, tmp_path_factory):
    root = tmp_path_factory.mktemp("bare")
    out = {}
    for name in ("parent_a", "parent_b"):
        out[name] = root / name
        shutil.copytree(demo[name], out[name], ignore=shutil.ignore_patterns("tokenizer*", "special_tokens*", "*.jinja"))
    return out


def test_mri_needs_a_tokenizer_only_for_probes(bare, tmp_path):
    run = CliRunner().invoke(app, ["mri", str(bare["parent_a"]), "-o", str(tmp_path / "m")])
    assert run.exit_code == 2 and "no tokenizer files" in run.output and "--no-probes" in run.output
    assert "Traceback" not in run.output and not (tmp_path / "m").exists()
    run = CliRunner().invoke(app, ["mri", str(bare["parent_a"]), "-o", str(tmp_path / "m"), "--no-probes"])
    assert run.exit_code == 0, run.output


def test_evolve_with_a_text_fitness_stops_before_the_run_folder(bare, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("some text to score " * 50)
    cfg = evolve_cfg(bare, [{"perplexity": {"files": [str(text)], "max_tokens": 64}}], population=4, generations=1)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    run = CliRunner().invoke(app, ["evolve", str(tmp_path / "p.yaml"), "-o", str(tmp_path / "run")])
    assert run.exit_code == 2 and "no tokenizer files" in run.output and "python fitness" in run.output
    assert "Traceback" not in run.output and not (tmp_path / "run").exists()
