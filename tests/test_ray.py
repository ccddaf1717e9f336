"""Distributed evaluation on Ray: same history as the serial run, survives a killed worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import darwin
from darwin.errors import DarwinError, RecipeError
from darwin.search.config import load_parents_config
from darwin.search.runfolder import read_history

pytest.importorskip("ray")

from helpers import FITNESS_FILE
from helpers import evolve_cfg as _cfg


def _same_history(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for ga, gb in zip(a, b):
        assert [c["x"] for c in ga["candidates"]] == [c["x"] for c in gb["candidates"]]
        assert [c["fitness"] for c in ga["candidates"]] == [c["fitness"] for c in gb["candidates"]]
        assert [c["components"] for c in ga["candidates"]] == [c["components"] for c in gb["candidates"]]
        assert ga["sigma"] == gb["sigma"]


@pytest.fixture(scope="module")
def serial_run(demo, tmp_path_factory):
    """Reference: the serial in-process run (3 generations × 6 candidates)."""
    mp = pytest.MonkeyPatch()  # module scope: undone after the module; Ray workers inherit it
    mp.setenv("DARWIN_TEST_A", str(demo["parent_a"]))
    mp.setenv("DARWIN_TEST_B", str(demo["parent_b"]))
    cfg = _cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=6, generations=3)
    out = tmp_path_factory.mktemp("serial") / "run"
    res = darwin.evolve(cfg, out, progress=False, write_outputs=False)
    yield cfg, res
    mp.undo()


def test_two_workers_give_the_serial_history(serial_run, tmp_path):
    cfg, serial = serial_run
    res = darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False, workers=2)
    hist = read_history(tmp_path / "run" / "history.jsonl")
    _same_history(serial.history, hist)
    assert res.baselines == {k: {**v, "worker": res.baselines[k]["worker"], "seconds": res.baselines[k]["seconds"]}
                             for k, v in serial.baselines.items()}
    workers = {c["worker"] for g in hist for c in g["candidates"]}
    assert len(workers) == 2 and all(w.startswith(("w0@", "w1@")) for w in workers)
    assert all(c["seconds"] > 0 for g in hist for c in g["candidates"])


def test_a_worker_killed_mid_generation_is_replaced(serial_run, tmp_path):
    cfg, serial = serial_run
    """Through the CLI, with outputs: the child is written after the pool is gone."""
    import subprocess
    import sys

    import yaml

    marker = tmp_path / "died"
    cfg_file = tmp_path / "parents.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "DARWIN_TEST_DIE_ONCE": str(marker)}  # inherited by the local Ray workers
    darwin_cli = Path(sys.executable).with_name("darwin")
    p = subprocess.run([darwin_cli, "evolve", cfg_file, "-o", tmp_path / "run", "--workers", "2"], env=env,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert marker.exists(), "no worker died: the test did not exercise the fault path"
    assert "best candidate" in p.stdout and (tmp_path / "run" / "child" / "config.json").exists()
    hist = read_history(tmp_path / "run" / "history.jsonl")
    assert all(c["error"] is None for g in hist for c in g["candidates"])  # every candidate scored
    _same_history(serial.history, hist)
    workers = {c["worker"].split("@")[0] for g in hist for c in g["candidates"]}
    assert any("." in w for w in workers), f"no replacement worker scored anything: {workers}"


def test_failing_candidates_on_workers_match_serial(demo, tmp_path, caplog):
    """Exceptions and NaN inside a worker score worst, are logged with the genome, like serially."""
    cfg = _cfg(demo, [{"python": f"{FITNESS_FILE}:fails_when_b_heavy"}], population=8, generations=2)
    serial = darwin.evolve(cfg, tmp_path / "serial", progress=False, write_outputs=False)
    res = darwin.evolve(cfg, tmp_path / "ray", progress=False, write_outputs=False, workers=2)
    _same_history(serial.history, res.history)
    failed = [c for h in res.history for c in h["candidates"] if c["error"]]
    assert failed and all(c["fitness"] is None and c["genes"] for c in failed)
    assert [c["error"] for h in serial.history for c in h["candidates"]] == \
        [c["error"] for h in res.history for c in h["candidates"]]
    assert "candidate failed" in caplog.text


def test_resume_with_other_worker_count(serial_run, tmp_path):
    """Where candidates are scored is not part of the run's identity: resume serially, same result."""
    cfg, serial = serial_run
    short = {**cfg, "search": {**cfg["search"], "generations": 2, "workers": 2}}
    darwin.evolve(short, tmp_path / "run", progress=False, write_outputs=False)
    with pytest.raises(RecipeError, match="differs"):  # the budget is part of it
        darwin.evolve(cfg, tmp_path / "run", resume=True, progress=False, write_outputs=False)
    import json

    run_json = tmp_path / "run" / "run.json"
    doc = json.loads(run_json.read_text())
    doc["search"]["generations"] = 3
    run_json.write_text(json.dumps(doc))
    res = darwin.evolve(cfg, tmp_path / "run", resume=True, progress=False, write_outputs=False)
    _same_history(serial.history, res.history)


def test_bad_worker_settings(demo, tmp_path):
    cfg = _cfg(demo, [{"python": f"{FITNESS_FILE}:distance_to_target"}], population=4, generations=1)
    with pytest.raises(RecipeError, match="workers"):
        load_parents_config({**cfg, "search": {**cfg["search"], "workers": 0}})
    with pytest.raises(RecipeError, match="unknown key 'worker'"):
        load_parents_config({**cfg, "search": {**cfg["search"], "worker": 2}})
    with pytest.raises(DarwinError, match="workers must be >= 1"):
        darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False, workers=0)
    assert not (tmp_path / "run").exists()
