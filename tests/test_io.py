"""Checkpoint reading (lazy, sharded, .bin with weights_only) and atomic sharded writing."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from darwin.errors import CheckpointError, OutputExistsError
from darwin.io import Checkpoint, ShardedWriter, atomic_output_dir, parse_size


def _tensors(n=6):
    g = torch.Generator().manual_seed(0)
    return {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(8, 4, generator=g) for i in range(n)}


def test_sharded_write_then_lazy_read(tmp_path):
    ts = _tensors()
    w = ShardedWriter(tmp_path, max_shard_bytes=300)  # 128 B per tensor → 2 per shard
    for k, v in ts.items():
        w.add(k, v)
    files = w.finish()
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 6 * 128
    assert set(index["weight_map"]) == set(ts)
    ck = Checkpoint(tmp_path)
    assert set(ck.tensor_names) == set(ts)
    assert ck.meta["model.layers.0.mlp.up_proj.weight"].shape == (8, 4)
    for k, v in ts.items():
        assert torch.equal(ck.get(k), v)


def test_single_shard_has_no_index(tmp_path):
    w = ShardedWriter(tmp_path)
    w.add("a", torch.ones(3))
    assert w.finish() == ["model.safetensors"]
    assert not (tmp_path / "model.safetensors.index.json").exists()


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9
    assert parse_size("2GiB") == 2 * 2**30
    assert parse_size("500M") == 500 * 10**6
    assert parse_size(1234) == 1234
    with pytest.raises(Exception, match="not a size"):
        parse_size("lots")


def _sharded(tmp_path):
    w = ShardedWriter(tmp_path, max_shard_bytes=300)
    for k, v in _tensors().items():
        w.add(k, v)
    w.finish()
    return tmp_path


def test_index_names_missing_shard(tmp_path):
    d = _sharded(tmp_path)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00002-of-00003.safetensors"):
        Checkpoint(d)


def test_index_names_missing_tensor(tmp_path):
    d = _sharded(tmp_path)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.ghost.weight"] = "model-00001-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="model.ghost.weight"):
        Checkpoint(d)


@pytest.mark.parametrize("stray", ["model-00009-of-00009.safetensors", "model.safetensors"])
def test_the_index_is_authoritative_over_stray_files(tmp_path, stray):
    from darwin.errors import DarwinWarning

    d = _sharded(tmp_path)
    save_file({"x": torch.ones(1)}, str(d / stray))
    with pytest.warns(DarwinWarning, match=f"{stray} is not named by model.safetensors.index.json and ignored"):
        ck = Checkpoint(d)
    assert sorted(ck.tensor_names) == sorted(_tensors()) and "x" not in ck


def test_an_index_listing_the_tied_head_resolves_through_the_tie(tmp_path):
    from darwin.errors import DarwinWarning

    d = _sharded(tmp_path)
    idx = json.loads((d / "model.safetensors.index.json").read_text())
    idx["weight_map"]["lm_head.weight"] = "model-00001-of-00003.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.warns(DarwinWarning, match="'lm_head.weight'.*tied"):
        ck = Checkpoint(d)
    assert "lm_head.weight" not in ck


def test_names_without_the_base_prefix_are_canonicalised(tmp_path):
    ts = {k.removeprefix("model."): v for k, v in _tensors(2).items()}
    ts["embed_tokens.weight"], ts["lm_head.weight"] = torch.ones(3, 4), torch.zeros(3, 4)
    save_file(ts, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    ck = Checkpoint(tmp_path)
    assert sorted(ck.tensor_names) == sorted(["model.layers.0.mlp.up_proj.weight", "model.layers.1.mlp.up_proj.weight",
                                              "model.embed_tokens.weight", "lm_head.weight"])
    torch.testing.assert_close(ck.get("model.embed_tokens.weight"), torch.ones(3, 4))
    torch.testing.assert_close(ck.get("model.layers.1.mlp.up_proj.weight"), ts["layers.1.mlp.up_proj.weight"])


def test_truncated_safetensors(tmp_path):
    save_file(_tensors(), str(tmp_path / "model.safetensors"))
    p = tmp_path / "model.safetensors"
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        Checkpoint(tmp_path)


def test_missing_folder_and_empty_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        Checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no model weights"):
        Checkpoint(tmp_path)


def test_bin_weights_only(tmp_path):
    ts = _tensors(2)
    torch.save(ts, tmp_path / "pytorch_model.bin")
    ck = Checkpoint(tmp_path)
    assert torch.equal(ck.get("model.layers.1.mlp.up_proj.weight"), ts["model.layers.1.mlp.up_proj.weight"])


class _Evil:
    def __reduce__(self):  # would run code if unpickled without weights_only
        return (print, ("pwned",))


def test_bin_with_arbitrary_pickle_is_refused(tmp_path):
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"w": _Evil()}, f)
    with pytest.raises(CheckpointError, match="weights_only"):
        Checkpoint(tmp_path)


def test_atomic_output_dir_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "child"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_dir_refuses_existing_and_replaces_with_force(tmp_path):
    out = tmp_path / "child"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="child"):
        with atomic_output_dir(out):
            pass
    # a failing forced write keeps the old folder intact
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=True) as tmp:
            raise RuntimeError("boom")
    assert (out / "old.txt").read_text() == "old"
    with atomic_output_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child"]


def test_writer_output_roundtrips_through_safetensors(tmp_path):
    w = ShardedWriter(tmp_path)
    t = torch.randn(5, 3).to(torch.bfloat16)
    w.add("w", t)
    w.finish()
    assert torch.equal(load_file(str(tmp_path / "model.safetensors"))["w"], t)
