"""Golden values (by hand, or an independent NumPy formula) and properties of the issue-15 kernels:
Multi-SLERP, Karcher mean, NearSwap, SCE, Arcee Fusion, RAM and RAM+."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darwin.kernels.selective import arcee_fusion, nearswap, ram, sce
from darwin.kernels.spherical import karcher, multislerp

R2 = 1 / math.sqrt(2)


def _x(*rows):  # [1, N, n]
    return torch.tensor([rows], dtype=torch.float32)


def test_multislerp_of_two_orthogonal_directions_is_the_geodesic_midpoint_scaled_by_the_mean_norm():
    out = multislerp(_x([2.0, 0.0], [0.0, 4.0]), torch.tensor([[0.5, 0.5]]), None)
    torch.testing.assert_close(out, torch.tensor([[3 * R2, 3 * R2]]))


def test_multislerp_of_three_axes_and_with_a_base():
    e = torch.eye(3)
    out = multislerp(e.unsqueeze(0), torch.tensor([[1.0, 1.0, 1.0]]), None)
    torch.testing.assert_close(out, torch.full((1, 3), 1 / math.sqrt(3)))
    base = torch.tensor([[1.0, 1.0, 1.0]])
    torch.testing.assert_close(multislerp(e.unsqueeze(0) + base.unsqueeze(1), torch.tensor([[1.0, 1.0, 1.0]]), base),
                               base + 1 / math.sqrt(3))


def test_multislerp_cancelling_directions_fall_back_to_the_weighted_sum():
    out = multislerp(_x([1.0, 0.0], [-1.0, 0.0], [0.0, 2.0]), torch.tensor([[0.5, 0.5, 0.0]]), None)
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.0]]))


def test_karcher_mean_of_two_directions_and_a_zero_vector():
    torch.testing.assert_close(karcher(_x([1.0, 0.0], [0.0, 3.0]), None), torch.tensor([[math.sqrt(2), math.sqrt(2)]]))
    # the zero vector has no direction but its norm counts in the scale: (1 + 3 + 0)/3
    torch.testing.assert_close(karcher(_x([1.0, 0.0], [0.0, 3.0], [0.0, 0.0]), None),
                               torch.tensor([[4 / 3 * R2, 4 / 3 * R2]]))
    torch.testing.assert_close(karcher(_x([0.0, 0.0], [0.0, 0.0]), None), torch.zeros(1, 2))


def test_karcher_base_is_one_more_input():
    base = torch.tensor([[0.0, 2.0]])
    torch.testing.assert_close(karcher(_x([2.0, 0.0]), base), torch.tensor([[2 * R2 * 1, 2 * R2]]) * 1.0)


def test_nearswap_golden():
    a = torch.tensor([[0.0, 0.0, 0.0]])
    b = torch.tensor([[0.0005, 0.002, 1.0]])
    # w = clamp(t/|a-b|, 0, 1) = [1, 0.5, 0.001]
    torch.testing.assert_close(nearswap(a, b, torch.tensor([0.001])), torch.tensor([[0.0005, 0.001, 0.001]]))


def test_ram_and_ram_plus_golden():
    x, base = _x([1.0, 0.0, 2.0, 0.0], [3.0, 4.0, 0.0, 0.0]), torch.zeros(1, 4)
    # contributions c = [2, 1, 1, 0]: shared element averaged, unique ones kept whole
    torch.testing.assert_close(ram(x, base, 0.5), torch.tensor([[2.0, 4.0, 2.0, 0.0]]))
    # each parent: 1 shared, 1 unique element -> rho = 1, lambda = 1 + 0.1 * min(1, 0.2) = 1.02
    torch.testing.assert_close(ram(x, base, 0.5, plus=True), torch.tensor([[2.0, 4.08, 2.04, 0.0]]))


def test_sce_golden():
    x, base = _x([1.0, -1.0], [3.0, 1.0]), torch.zeros(1, 2)
    # weights mean(d^2) = 1, 5 -> 1/6, 5/6; signs of the sum (+, +); element 1 keeps only parent 2
    torch.testing.assert_close(sce(x, base), torch.tensor([[16 / 6, 1.0]]))
    x = _x([1.0, -2.0, 0.0], [3.0, 1.0, 0.5])
    # variances [1, 2.25, 0.0625]: top 1 of 3 keeps element 1; weights 0.8/0.2; elected sign -
    torch.testing.assert_close(sce(x, torch.zeros(1, 3), 0.5), torch.tensor([[0.0, -2.0, 0.0]]))


def _arcee_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)
    p, q = softmax(b) + 1e-8, softmax(a) + 1e-8
    imp = np.abs(b - a) * (p * np.log(p / q)).sum(-1, keepdims=True)
    s = np.sort(imp.ravel())
    pick = [s[int(f * (s.size - 1))] for f in (0.25, 0.5, 0.75)]
    return a + (b - a) * (imp >= pick[1] + 1.5 * (pick[2] - pick[0]))


def test_arcee_fusion_matches_an_independent_formula():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(6, 40, generator=g)
    b = a + torch.randn(6, 40, generator=g) * torch.rand(6, 1, generator=g) * (torch.rand(6, 40, generator=g) > 0.1)
    got = arcee_fusion(a.unsqueeze(0), b.unsqueeze(0))[0]
    want = torch.from_numpy(_arcee_numpy(a.double().numpy(), b.double().numpy())).float()
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert 0 < int((got != a).sum()) < int((b != a).sum())


vec = st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=3, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(vec, min_size=2, max_size=4).filter(lambda v: len({len(r) for r in v}) == 1), st.randoms())
def test_parent_order_does_not_matter(rows, rnd):
    x = _x(*rows)
    w = torch.tensor([[1.0 + i for i in range(len(rows))]])
    perm = list(range(len(rows)))
    rnd.shuffle(perm)
    base = torch.zeros(1, x.shape[-1])
    for f in (lambda x, w: multislerp(x, w, None), lambda x, w: karcher(x, None),
              lambda x, w: ram(x, base, 0.1), lambda x, w: ram(x, base, 0.1, plus=True), lambda x, w: sce(x, base)):
        torch.testing.assert_close(f(x[:, perm], w[:, perm]), f(x, w), atol=1e-4, rtol=1e-4)


@settings(max_examples=60, deadline=None)
@given(vec, vec)
def test_one_parent_and_limits(a, b):
    n = min(len(a), len(b))
    xa, xb = torch.tensor([a[:n]]), torch.tensor([b[:n]])
    torch.testing.assert_close(sce(xb.unsqueeze(1), xa), xb)  # one parent: its whole task vector
    torch.testing.assert_close(multislerp(xb.unsqueeze(1), torch.ones(1, 1), None), xb)
    torch.testing.assert_close(nearswap(xa, xb, torch.tensor([0.0])), xa)
    torch.testing.assert_close(nearswap(xa, xb, torch.tensor([1e9])), xb)
    assert torch.isfinite(karcher(torch.stack([xa, xb], 1), None)).all()


@pytest.mark.parametrize("fn", [lambda x, b: sce(x, b, 0.5), lambda x, b: ram(x, b), arcee_fusion.__name__])
def test_batch_rows_are_independent(fn):
    g = torch.Generator().manual_seed(3)
    x, base = torch.randn(3, 2, 5, 7, generator=g), torch.randn(3, 5, 7, generator=g)
    f = (lambda x, b: arcee_fusion(b, x[:, 0])) if isinstance(fn, str) else fn
    whole = f(x, base)
    for i in range(3):
        torch.testing.assert_close(whole[i:i + 1], f(x[i:i + 1], base[i:i + 1]))
