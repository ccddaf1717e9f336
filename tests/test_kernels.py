"""Merge kernels: golden values computed by hand, reference-sheet identities, properties."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darwin.kernels.linear import linear, passthrough
from darwin.kernels.model_stock import model_stock
from darwin.kernels.seeds import tensor_seed
from darwin.kernels.slerp import nuslerp, slerp
from darwin.kernels.sparsify import band_mask, della_drop, magnitude_mask, random_drop
from darwin.kernels.task_arithmetic import task_vector_merge

T = torch.tensor


def B1(*rows):
    """A batch of one tensor with the given parents: [1, N, n]."""
    return T([list(r) for r in rows], dtype=torch.float32).unsqueeze(0)


# ----------------------------------------------------------------------------- golden values
def test_linear_golden():
    out = linear(B1([1, 2], [3, 4]), T([[1.0, 3.0]]))
    assert torch.allclose(out, T([[2.5, 3.5]]))  # (1·1+3·3)/4, (1·2+3·4)/4
    out = linear(B1([1, 2], [3, 4]), T([[1.0, 3.0]]), normalize=False)
    assert torch.allclose(out, T([[10.0, 14.0]]))


def test_slerp_golden_orthogonal():
    # Ω = π/2, t = 0.5: both coefficients sin(π/4)/sin(π/2) = √2/2, applied to unnormalised tensors
    out = slerp(B1([1, 0], [0, 2]), T([0.5]))
    h = math.sqrt(0.5)
    assert torch.allclose(out, T([[h, 2 * h]]), atol=1e-6)


def test_slerp_golden_60_degrees():
    # cos Ω = 0.5 → Ω = π/3; t = 0.25: ca = sin(π/4)/sin(π/3), cb = sin(π/12)/sin(π/3)
    a, b = [1.0, 0.0], [0.5, math.sqrt(3) / 2]
    out = slerp(B1(a, b), T([0.25]))
    ca, cb = math.sin(math.pi / 4) / math.sin(math.pi / 3), math.sin(math.pi / 12) / math.sin(math.pi / 3)
    assert torch.allclose(out, T([[ca * a[0] + cb * b[0], ca * a[1] + cb * b[1]]]), atol=1e-6)
    # the result stays on the unit circle
    assert abs(out.norm().item() - 1.0) < 1e-6


def test_task_arithmetic_golden():
    base = T([[1.0, 1.0]])
    out = task_vector_merge(B1([2, 0], [1, 3]), base, "task_arithmetic", weight=T([[1.0, 0.5]]), lam=T([2.0]))
    # δ1 = [1,-1], δ2 = [0,2]; Σwδ = [1, 0]; ×2 → [2, 0]; + base → [3, 1]
    assert torch.allclose(out, T([[3.0, 1.0]]))


def test_ties_golden():
    base = torch.zeros(1, 4)
    x = B1([1, -2, 3, 0.1], [-1.5, -1, 1.2, 0.2])
    out = task_vector_merge(x, base, "ties", weight=T([[1.0, 1.0]]), density=T([[0.5, 0.5]]), normalize=True)
    # trim k=2: [0,-2,3,0] and [-1.5,0,1.2,0]; elected signs [-,-,+,+]; disjoint mean
    assert torch.allclose(out, T([[-1.5, -2.0, 2.1, 0.0]]))


def test_ties_weighted_election_uses_weighted_deltas():
    base = torch.zeros(1, 1)
    x = B1([1.0], [-3.0])
    # unweighted sum is negative, but weights 5 vs 1 make the positive side win
    out = task_vector_merge(x, base, "ties", weight=T([[5.0, 1.0]]), density=T([[1.0, 1.0]]), normalize=True)
    assert torch.allclose(out, T([[1.0]]))  # (5·1)/5


def test_magnitude_mask_keeps_top_k_and_at_least_one():
    d = T([[[0.1, -5.0, 2.0, 0.3]]])
    assert magnitude_mask(d, T([[0.5]])).tolist() == [[[0.0, 1.0, 1.0, 0.0]]]
    assert magnitude_mask(d, T([[0.1]])).tolist() == [[[0.0, 1.0, 0.0, 0.0]]]  # max(1, ⌊0.4⌋)
    assert magnitude_mask(d, T([[0.0]])).sum() == 0
    assert magnitude_mask(d, T([[1.0]])).sum() == 4


def test_band_mask_golden():
    d = torch.arange(1, 11, dtype=torch.float32).reshape(1, 1, 10)
    m = band_mask(d, T([[0.5]]), T([[0.1]]))
    # drop top ⌊0.1·10⌋=1 (10), keep 5 below it: 5..9
    assert d[m.bool()].tolist() == [5.0, 6.0, 7.0, 8.0, 9.0]


def test_breadcrumbs_small_tensor_is_not_zeroed():
    # fewer elements than 1/γ: ⌊γ·n⌋ = 0 outliers dropped; mergekit's old bug zeroed such deltas
    d = T([[[3.0, -1.0, 2.0]]])
    m = band_mask(d, T([[0.67]]), T([[0.01]]))
    assert m.tolist() == [[[1.0, 0.0, 1.0]]]
    out = task_vector_merge(d, torch.zeros(1, 3), "breadcrumbs", weight=T([[1.0]]), density=T([[0.67]]),
                            gamma=T([[0.01]]))
    assert out.abs().sum() > 0


def test_model_stock_golden():
    base = torch.zeros(1, 2)
    # orthogonal task vectors: cos = 0 → t = 0 → base
    assert torch.allclose(model_stock(B1([1, 0], [0, 1]), base), base)
    # cos = 1/√2, N = 2: t = 2c/(1+c)
    c = 1 / math.sqrt(2)
    t = 2 * c / (1 + c)
    out = model_stock(B1([1, 0], [1, 1]), base)
    assert torch.allclose(out, t * T([[1.0, 0.5]]), atol=1e-6)


def test_passthrough_scale():
    assert torch.allclose(passthrough(B1([1, -2]), T([3.0])), T([[3.0, -6.0]]))


def test_della_keep_probability_grows_with_magnitude():
    n = 100
    row = torch.arange(1, n + 1, dtype=torch.float32)
    d = row.repeat(400, 1).reshape(400, 1, n)  # 400 tensors, each one row 1..100
    seeds = [[tensor_seed(0, f"t{i}", 0)] for i in range(400)]
    out = della_drop(d, torch.full((400, 1), 0.5), torch.full((400, 1), 0.2), seeds, None, n)
    kept = (out != 0).float().mean(0).squeeze()
    # p = 0.3 for the smallest, 0.7 for the largest
    assert abs(kept[0].item() - 0.3) < 0.08 and abs(kept[-1].item() - 0.7) < 0.08


# ----------------------------------------------------------------------------- identities
def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_linear_one_hot_returns_parent():
    x = _rand(3, 2, 5, 4).reshape(3, 2, 5, 4)
    assert torch.equal(linear(x, T([[0.0, 1.0]] * 3)), x[:, 1])


def test_slerp_endpoints():
    x = _rand(2, 2, 7)
    assert torch.allclose(slerp(x, T([0.0, 0.0])), x[:, 0], atol=1e-6)
    assert torch.allclose(slerp(x, T([1.0, 1.0])), x[:, 1], atol=1e-6)


def test_ties_density_one_single_parent_equals_task_arithmetic():
    x, base = _rand(2, 1, 50, seed=1), _rand(2, 50, seed=2)
    w = T([[0.7], [1.3]])
    ties = task_vector_merge(x, base, "ties", weight=w, density=torch.ones(2, 1), normalize=False)
    ta = task_vector_merge(x, base, "task_arithmetic", weight=w)
    assert torch.allclose(ties, ta, atol=1e-6)


@pytest.mark.parametrize("dare,plain", [("dare_linear", "task_arithmetic"), ("dare_ties", "ties")])
def test_dare_density_one_equals_base_method(dare, plain):
    x, base = _rand(2, 3, 40, seed=3), _rand(2, 40, seed=4)
    w = T([[0.2, 0.5, 0.3], [1.0, 1.0, 1.0]])
    seeds = [[1, 2, 3], [4, 5, 6]]
    for rescale in ("paper", "l1", None):
        a = task_vector_merge(x, base, dare, weight=w, density=torch.ones(2, 3), seeds=seeds, rescale=rescale)
        b = task_vector_merge(x, base, plain, weight=w, density=torch.ones(2, 3))
        assert torch.allclose(a, b, atol=1e-6)


def test_task_arithmetic_lambda_zero_returns_base():
    x, base = _rand(1, 2, 9, seed=5), _rand(1, 9, seed=6)
    out = task_vector_merge(x, base, "task_arithmetic", weight=T([[1.0, 1.0]]), lam=T([0.0]))
    assert torch.equal(out, base)


def test_model_stock_identical_parents_returns_parent():
    p, base = _rand(1, 30, seed=7), _rand(1, 30, seed=8)
    out = model_stock(torch.stack([p, p, p], 1), base)
    assert torch.allclose(out, p, atol=1e-6)


def test_nuslerp_equal_weights_no_base_equals_slerp_half():
    x = _rand(2, 2, 16, seed=9)
    assert torch.allclose(nuslerp(x, torch.ones(2, 2)), slerp(x, T([0.5, 0.5])), atol=1e-6)


def test_nuslerp_with_base_slerps_task_vectors():
    x, base = _rand(1, 2, 8, seed=10), _rand(1, 8, seed=11)
    out = nuslerp(x, T([[1.0, 3.0]]), base)
    ref = base + slerp(x - base.unsqueeze(1), T([0.75]))
    assert torch.allclose(out, ref, atol=1e-6)


def test_nuslerp_unflattened_interpolates_each_row_and_row_wise_each_column():
    """mergekit's convention: ``row_wise: false`` slerps the vectors along the last dimension (each
    row of a 2-D weight), ``row_wise: true`` the vectors along the first dimension (each column)."""
    x = _rand(1, 2, 3, 4, seed=12)
    rows = nuslerp(x, T([[1.0, 3.0]]), flatten=False, row_wise=False)
    cols = nuslerp(x, T([[1.0, 3.0]]), flatten=False, row_wise=True)
    for r in range(3):
        assert torch.allclose(rows[:, r], slerp(x[:, :, r], T([0.75])), atol=1e-6)
    for c in range(4):
        assert torch.allclose(cols[:, :, c], slerp(x[:, :, :, c], T([0.75])), atol=1e-6)
    assert not torch.allclose(rows, cols, atol=1e-4)


def test_nuslerp_zero_weight_sum_takes_the_midpoint():
    x = _rand(1, 2, 8, seed=14)
    assert torch.allclose(nuslerp(x, T([[1.0, -1.0]])), slerp(x, T([0.5])), atol=1e-6)


# ----------------------------------------------------------------------------- DARE rescale conventions
def test_dare_rescale_conventions():
    d = _rand(1, 1, 20000, seed=13)
    seeds = [[tensor_seed(0, "w", 0)]]
    paper = random_drop(d, T([[0.25]]), seeds, "paper")
    l1 = random_drop(d, T([[0.25]]), seeds, "l1")
    none = random_drop(d, T([[0.25]]), seeds, None)
    kept = none != 0
    assert torch.allclose(paper[kept], d[kept] / 0.25)  # paper: δ·m/ρ
    assert torch.allclose(l1.abs().sum(), d.abs().sum(), rtol=1e-5)  # mergekit: ‖·‖₁ preserved
    assert abs(kept.float().mean().item() - 0.25) < 0.02
    assert torch.equal(paper != 0, kept) and torch.equal(l1 != 0, kept)


def test_dare_masks_deterministic_per_tensor_and_seed():
    d = _rand(1, 1, 1000, seed=14)
    s1 = [[tensor_seed(0, "model.layers.0.mlp.up_proj.weight", 0)]]
    s2 = [[tensor_seed(0, "model.layers.1.mlp.up_proj.weight", 0)]]
    s3 = [[tensor_seed(1, "model.layers.0.mlp.up_proj.weight", 0)]]
    a = random_drop(d, T([[0.5]]), s1, None)
    assert torch.equal(a, random_drop(d, T([[0.5]]), s1, None))
    assert not torch.equal(a, random_drop(d, T([[0.5]]), s2, None))
    assert not torch.equal(a, random_drop(d, T([[0.5]]), s3, None))
    assert tensor_seed(0, "x", 0) != tensor_seed(0, "x", 1)


# ----------------------------------------------------------------------------- properties
finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@st.composite
def parents(draw, n_parents=2, max_len=24):
    n = draw(st.integers(1, max_len))
    vals = draw(st.lists(st.lists(finite, min_size=n, max_size=n), min_size=n_parents, max_size=n_parents))
    return torch.tensor(vals, dtype=torch.float32).unsqueeze(0)


@settings(max_examples=60, deadline=None)
@given(parents(), st.floats(0, 1))
def test_slerp_always_finite(x, t):
    assert torch.isfinite(slerp(x, T([t]))).all()


@settings(max_examples=30, deadline=None)
@given(parents(n_parents=1), st.floats(0, 1), st.floats(-3, 3).filter(lambda s: abs(s) > 1e-3))
def test_slerp_degenerate_pairs(x, t, scale):
    a = x[:, 0]
    for b in (a, a * abs(scale), -a * abs(scale), torch.zeros_like(a)):
        out = slerp(torch.stack([a, b], 1), T([t]))
        assert torch.isfinite(out).all()
    # identical inputs return the input
    assert torch.allclose(slerp(torch.stack([a, a], 1), T([t])), a, atol=1e-3, rtol=1e-5)
    # zero-norm partner: linear interpolation
    z = torch.zeros_like(a)
    assert torch.allclose(slerp(torch.stack([a, z], 1), T([t])), (1 - t) * a, atol=1e-3, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(parents(n_parents=3), st.sampled_from(["task_arithmetic", "ties", "dare_linear", "dare_ties",
                                              "breadcrumbs", "breadcrumbs_ties", "della", "della_linear"]),
       st.floats(0.3, 0.7))
def test_task_vector_family_finite(x, method, density):
    base, ps = x[:, 0], x[:, 1:]
    out = task_vector_merge(ps, base, method, weight=T([[0.6, 0.4]]), density=T([[density, density]]),
                            gamma=T([[0.1, 0.1]]), epsilon=T([[0.2, 0.2]]), seeds=[[1, 2]], rescale="paper",
                            normalize=True)
    assert out.shape == base.shape and torch.isfinite(out).all()


@settings(max_examples=40, deadline=None)
@given(parents(n_parents=3))
def test_model_stock_and_linear_finite(x):
    assert torch.isfinite(model_stock(x[:, 1:], x[:, 0])).all()
    assert torch.isfinite(linear(x, T([[0.2, 0.3, 0.5]]))).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 40), st.floats(0.0, 1.0), st.floats(0.0, 0.3))
def test_breadcrumbs_mask_size(n, density, gamma):
    d = _rand(1, 1, n, seed=n)
    m = band_mask(d, torch.tensor([[density]], dtype=torch.float64), torch.tensor([[gamma]], dtype=torch.float64))
    expected = n if density >= 1 else math.floor(density * n)
    assert int(m.sum()) == expected
    if density < 1 and math.floor(density * n) + math.floor(gamma * n) <= n and m.sum() > 0:
        # the ⌊γ·n⌋ largest magnitudes are never kept
        top = torch.topk(d.abs().flatten(), max(math.floor(gamma * n), 0)).indices
        assert m.flatten()[top].sum() == 0


def test_magnitude_mask_keeps_all_ties_at_threshold():
    # k = 2, but three elements share the 2nd-largest magnitude: all are kept (order-independent)
    d = T([[[1.0, -1.0, 1.0, 0.5]]])
    assert magnitude_mask(d, T([[0.5]])).tolist() == [[[1.0, 1.0, 1.0, 0.0]]]


def test_darwin_blend_without_base_equals_base_a():
    from darwin.kernels.blend import darwin_blend

    x = _rand(3, 2, 500, seed=21)
    r, lam = T([0.3, 0.5, 0.8]), T([0.2, 0.0, 0.6])
    dens = torch.tensor([[0.9, 0.7]] * 3, dtype=torch.float64)
    seeds = [[1, 2], [3, 4], [5, 6]]
    for rescale in ("l1", "paper"):
        fast = darwin_blend(x, None, r, lam, dens, seeds, rescale)
        general = darwin_blend(x, x[:, 0].clone(), r, lam, dens, seeds, rescale)
        assert torch.allclose(fast, general, atol=1e-6)
    # λ = 1: pure SLERP; λ = 0, ρ = 1: exact linear interpolation A + r(B − A)
    assert torch.allclose(darwin_blend(x, None, r, torch.ones(3), dens, seeds), slerp(x, r))
    lin = darwin_blend(x, None, r, torch.zeros(3), torch.ones(3, 2, dtype=torch.float64), seeds)
    assert torch.allclose(lin, x[:, 0] + r.unsqueeze(-1) * (x[:, 1] - x[:, 0]), atol=1e-6)
