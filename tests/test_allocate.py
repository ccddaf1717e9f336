"""Per-layer width allocation: the DP is exact, the level-switch search keeps the budget and beats
uniform widths where one layer is far more sensitive (a planted tiny model)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darwin.plan.allocate import dp_allocation, level_switch_search


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 4), K=st.integers(1, 4), budget=st.integers(0, 12), least=st.integers(0, 1),
       seed=st.integers(0, 10**6))
def test_dp_is_the_brute_force_optimum(L, K, budget, least, seed):
    cost = torch.rand(L, K + 1, generator=torch.Generator().manual_seed(seed))
    feasible = [c for c in itertools.product(range(least, K + 1), repeat=L) if sum(c) <= budget]
    if not feasible:
        with pytest.raises(ValueError, match="no allocation"):
            dp_allocation(cost, budget, least)
        return
    got = dp_allocation(cost, budget, least)
    best = min(sum(float(cost[i, k]) for i, k in enumerate(c)) for c in feasible)
    assert sum(got) <= budget and min(got) >= least
    assert math.isclose(sum(float(cost[i, k]) for i, k in enumerate(got)), best, rel_tol=1e-12)


def test_dp_golden_gives_the_sensitive_layer_more():
    # layer 0 loses 10 per missing unit, layer 1 loses 1: with 4 units, layer 0 takes all it can (3)
    cost = torch.tensor([[30.0, 20, 10, 0], [3, 2, 1, 0]])
    assert dp_allocation(cost, 4) == [3, 1]
    assert dp_allocation(cost, 6) == [3, 3]
    with pytest.raises(ValueError, match="layers, levels"):
        dp_allocation(cost[0], 4)


def test_level_switch_search_keeps_the_total_and_beats_uniform_on_a_planted_loss():
    sens = [50.0, 1, 1, 1, 1, 1]  # layer 0 is far more sensitive

    def loss(levels):
        return sum(s * math.exp(-k / 2) for s, k in zip(sens, levels)) + 0.1 * (levels[1] - levels[2]) ** 2

    start = [4] * 6
    seen = []
    res = level_switch_search(lambda lv: seen.append(sum(lv)) or loss(lv), start, 8, generations=30, offspring=6,
                              seed=1)
    assert set(seen) == {24}  # every evaluated allocation has exactly the uniform total
    assert sum(res.levels) == 24 and res.fitness < 0.5 * loss(start) and res.levels[0] == 8
    assert res.start_fitness == loss(start) and res.trace == sorted(res.trace, reverse=True)
    again = level_switch_search(loss, start, 8, generations=30, offspring=6, seed=1)
    assert again.levels == res.levels  # seeded
    with pytest.raises(ValueError, match="outside"):
        level_switch_search(loss, [9] * 6, 8)


def test_allocator_on_a_tiny_model_with_one_planted_sensitive_layer(demo):
    from transformers import AutoModelForCausalLM

    from darwin.diagnosis.calibrate import collect_stats
    from darwin.search.allocate import FfnAllocator, Levels

    model = AutoModelForCausalLM.from_pretrained(demo["parent_a"], dtype=torch.float32).eval()
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.mul_(8.0)  # layer 1's FFN now dominates the residual stream
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    calib = [torch.randint(0, vocab, (1, 64), generator=g) for _ in range(8)]
    fit = [torch.randint(0, vocab, (1, 64), generator=g) for _ in range(2)]
    stats = collect_stats(model, calib, roles=("ffn",))["ffn"]
    width = model.config.intermediate_size
    levels = Levels(uniform=width // 2, step=width // 8, span=3)
    alloc = FfnAllocator(model, stats, fit, levels)
    L = model.config.num_hidden_layers
    dense_logits = model(fit[0]).logits
    assert alloc.kl([None] * L) == pytest.approx(0.0, abs=1e-6)
    assert alloc.kl([levels.span] * L) > 0 and alloc.widths([levels.span] * L) == [width // 2] * L
    alloc.restore()
    torch.testing.assert_close(model(fit[0]).logits, dense_logits)  # the dense weights are back
    uniform = alloc.kl([levels.span] * L)
    res = level_switch_search(alloc.kl, [levels.span] * L, levels.top, generations=12, offspring=4, seed=0)
    assert sum(res.levels) == L * levels.span and res.fitness < uniform
    assert alloc.widths(res.levels)[1] > width // 2  # the planted layer gets more neurons
    table = alloc.sensitivity()
    assert table.shape == (L, levels.top + 1)
    assert int((table[:, 0] - table[:, levels.top]).argmax()) == 1  # cutting layer 1 costs the most
    dp = dp_allocation(table, L * levels.span)
    assert dp[1] == max(dp) and alloc.kl(dp) < uniform
