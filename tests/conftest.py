"""Shared fixtures: tiny random parents built once per session (CPU, seconds, no network)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """``darwin demo-models`` output: tiny llama ``base``, ``parent_a``, ``parent_b`` and recipes."""
    from darwin.demo import build_demo_models

    return build_demo_models(tmp_path_factory.mktemp("demo"), seed=0)
