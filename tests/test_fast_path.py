"""The fast path: counter-based masks, the streamed Darwin blend and its invariant cache.

References are independent: the batched kernels of darwin.kernels (slerp_vectors,
elect_and_combine) applied to masks built from the same levels, or formulas written out here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from darwin.kernels.blend import BlendInvariants, blend_apply, blend_coefficients, blend_prepare, slerp_coefficients
from darwin.kernels.masks import MASK_LEVELS, keep_level, keep_probability, mask_levels
from darwin.kernels.slerp import slerp_vectors
from darwin.kernels.task_arithmetic import elect_and_combine


def _pair(n: int, seed: int, dtype=torch.bfloat16, base: bool = True):
    g = torch.Generator().manual_seed(seed)
    t0 = torch.randn(n, generator=g) * 0.02
    a = t0 + torch.randn(n, generator=g) * 0.004
    b = t0 + torch.randn(n, generator=g) * 0.004
    return a.to(dtype), b.to(dtype), (t0.to(dtype) if base else None)


# ----------------------------------------------------------------------------- masks

def test_mask_levels_golden_and_range():
    """Golden: the hash of the first elements of seed 0 (computed by hand-written Python ints)."""
    def fmix(x):
        x ^= x >> 16
        x = (x * 0x7FEB352D) & 0xFFFFFFFF
        x ^= x >> 15
        x = (x * 0x5BD1E995) & 0xFFFFFFFF
        return x ^ (x >> 16)

    seed = (123 << 32) | 456
    expect = [fmix(fmix(i ^ 456) ^ 0 ^ 123) >> 20 for i in range(8)]
    assert mask_levels(seed, 0, 8).tolist() == expect
    lv = mask_levels(seed, 0, 100_000)
    assert lv.dtype == torch.int16 and int(lv.min()) >= 0 and int(lv.max()) < MASK_LEVELS


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(0, 10_000), st.integers(1, 3000), st.integers(1, 3000))
def test_mask_levels_any_order_any_tiling(seed, start, n1, n2):
    """The levels of a range equal the slices of a longer range (tile size and order do not matter)."""
    whole = mask_levels(seed, start, n1 + n2)
    second, first = mask_levels(seed, start + n1, n2), mask_levels(seed, start, n1)
    assert torch.equal(torch.cat([first, second]), whole)


def test_mask_keep_rate_and_independence():
    """Keep rate q/4096 within 5 binomial σ; masks of two seeds uncorrelated (|r| < 5/√n)."""
    n = 400_000
    a, b = mask_levels(1, 0, n), mask_levels(2, 0, n)
    for rho in (0.1, 0.5, 0.9):
        p = keep_probability(rho)
        rate = float((a < keep_level(rho)).float().mean())
        assert abs(rate - p) < 5 * math.sqrt(p * (1 - p) / n)
    ma, mb = (a < 2048).float(), (b < 2048).float()
    corr = float(((ma - ma.mean()) * (mb - mb.mean())).mean() / (ma.std() * mb.std()))
    assert abs(corr) < 5 / math.sqrt(n)


def test_keep_level_edges():
    assert keep_level(1.0) == MASK_LEVELS and keep_level(1.7) == MASK_LEVELS
    assert keep_level(0.0) == 0 and keep_level(-0.2) == 0
    assert keep_level(0.5) == 2048 and keep_probability(0.25) == 0.25


# ----------------------------------------------------------------------------- SLERP coefficients

def test_slerp_coefficients_golden():
    # orthogonal unit vectors, t = 1/2: both coefficients sin(π/4)/sin(π/2) = √2/2
    ca, cb = slerp_coefficients(1.0, 1.0, 0.0, 0.5)
    assert ca == pytest.approx(math.sqrt(0.5)) and cb == pytest.approx(math.sqrt(0.5))
    # parallel or zero vectors: linear interpolation
    assert slerp_coefficients(1.0, 2.0, 2.0, 0.3) == (pytest.approx(0.7), pytest.approx(0.3))
    assert slerp_coefficients(0.0, 2.0, 0.0, 0.3) == (pytest.approx(0.7), pytest.approx(0.3))


# ----------------------------------------------------------------------------- the streamed blend

def _reference(a, b, base, seeds, r, lam, dens, rescale):
    """The blend from the batched kernels, on masks built from the same levels."""
    fa, fb = a.float().reshape(1, -1), b.float().reshape(1, -1)
    s = slerp_vectors(fa, fb, torch.tensor([r]))[0]
    t0 = base.float() if base is not None else a.float()
    sparse = [(a, 0), (b, 1)] if base is not None else [(b, 1)]
    weights = [1 - r, r] if base is not None else [r]
    kept = []
    for (src, i), w in zip(sparse, weights):
        d = src.float() - t0
        q = keep_level(dens[i])
        m = (mask_levels(seeds[i], 0, d.numel()) < q).float()
        scale = 1.0
        if rescale == "l1" and float((d * m).abs().sum()) >= 1e-7:
            scale = float(d.abs().sum()) / float((d * m).abs().sum())
        elif rescale == "paper" and q:
            scale = MASK_LEVELS / q
        kept.append(w * scale * d * m)
    if base is not None:
        mixed = elect_and_combine(torch.stack(kept).unsqueeze(0), torch.tensor([[1 - r, r]]), True, False)[0]
    else:
        mixed = kept[0]
    return lam * s + (1 - lam) * (t0 + mixed)


@pytest.mark.parametrize("with_base", [True, False])
@pytest.mark.parametrize("rescale", ["l1", "paper", None])
def test_blend_apply_matches_batched_reference(with_base, rescale):
    a, b, base = _pair(5000, 3, base=with_base)
    seeds = [11, 12]
    for r, lam, dens in [(0.3, 0.4, (0.6, 0.8)), (0.8, 0.0, (0.2, 1.0)), (0.5, 1.0, (0.5, 0.5))]:
        inv = blend_prepare(a, b, base, seeds, rescale)
        c = blend_coefficients(inv, r, lam, dens, rescale)
        out = blend_apply(a, b, base, inv, c, torch.empty(5000), tile=777)
        ref = _reference(a, b, base, seeds, r, lam, dens, rescale)
        assert torch.allclose(out, ref, atol=2e-6, rtol=1e-5), float((out - ref).abs().max())


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 5000), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1),
       st.floats(0, 1), st.booleans())
def test_blend_tiling_and_level_storage_do_not_change_bits(n, tile, r, lam, da, db, with_base):
    """Property: any tile size, levels stored or recomputed per tile: the same bits, and finite."""
    a, b, base = _pair(n, n, base=with_base)
    inv = blend_prepare(a, b, base, [5, 6], "l1")
    lean = blend_prepare(a, b, base, [5, 6], "l1", keep_levels=False)
    c = blend_coefficients(inv, r, lam, (da, db), "l1")
    one = blend_apply(a, b, base, inv, c, torch.empty(n), tile=1 << 19)
    tiled = blend_apply(a, b, base, lean, c, torch.empty(n), tile=tile)
    assert torch.equal(one, tiled) and bool(torch.isfinite(one).all())


def test_blend_extremes():
    """λ = 1 is SLERP; λ = 0 with ρ = 1 and a base: TIES of the full task vectors; r = 0 gives A."""
    a, b, base = _pair(3000, 9, dtype=torch.float32)
    inv = blend_prepare(a, b, base, [1, 2], "l1")
    out = blend_apply(a, b, base, inv, blend_coefficients(inv, 0.4, 1.0, (0.3, 0.3), "l1"), torch.empty(3000))
    assert torch.allclose(out, slerp_vectors(a[None], b[None], torch.tensor([0.4]))[0], atol=1e-7)
    out = blend_apply(a, b, base, inv, blend_coefficients(inv, 0.0, 0.0, (1.0, 1.0), "l1"), torch.empty(3000))
    assert torch.allclose(out, a, atol=1e-7)
    x, y = 0.5 * (a - base), 0.5 * (b - base)
    same = torch.sign(x) == torch.sign(y)
    ties = torch.where(same, x + y, torch.where((x + y) >= 0, torch.maximum(x, y), torch.minimum(x, y)))
    out = blend_apply(a, b, base, inv, blend_coefficients(inv, 0.5, 0.0, (1.0, 1.0), "l1"), torch.empty(3000))
    assert torch.allclose(out, base + ties, atol=1e-7)


def test_blend_writes_child_dtype_and_counts_bytes():
    a, b, base = _pair(4096, 1)
    inv = blend_prepare(a, b, base, [1, 2], "l1")
    assert isinstance(inv, BlendInvariants)
    assert inv.nbytes() == 2 * 4096 * 2 + 2 * (MASK_LEVELS + 1) * 8
    c = blend_coefficients(inv, 0.4, 0.5, (0.7, 0.7), "l1")
    f32 = blend_apply(a, b, base, inv, c, torch.empty(4096))
    bf = blend_apply(a, b, base, inv, c, torch.empty(4096, dtype=torch.bfloat16))
    assert torch.equal(bf, f32.to(torch.bfloat16))


# ----------------------------------------------------------------------------- plans, cache, resident model

def _genome_plans(demo, n=3, base=True):
    from darwin.genome import decode, load_genome, pair_layout, start_vector, vector_to_values
    from darwin.io.checkpoint import Checkpoint

    a, b = str(demo["parent_a"]), str(demo["parent_b"])
    refs = [a, b] + ([str(demo["base"])] if base else [])
    ck = {r: Checkpoint(r) for r in refs}
    layout = pair_layout(ck, a, b, base=str(demo["base"]) if base else None, out_dtype=torch.float32)
    spec = load_genome("darwin14")
    g = torch.Generator().manual_seed(1)
    x0 = start_vector(spec, layout.num_layers)
    plans = [decode(spec, vector_to_values(spec, [v + 0.4 * float(torch.randn(1, generator=g)) for v in x0],
                                           layout.num_layers), layout) for _ in range(n)]
    return ck, a, plans


def test_resident_candidates_equal_the_merge_path_and_reuse_invariants(demo):
    """Merging into the resident model (cached invariants, in-place writes) gives the bits of execute()."""
    from darwin.plan.execute import execute
    from darwin.search.resident import ResidentModel

    ck, a, plans = _genome_plans(demo)
    res = ResidentModel(ck, a, dtype=torch.float32, device="cpu")
    for p in plans:
        res.load_plan(p)
        state = res.model.state_dict()
        for name, t in execute(p, ck, device="cpu", out_dtype=torch.float32):
            assert torch.equal(state[name], t), name
    blends = {t.out_name for p in plans for t in p.tasks if t.method == "darwin_blend"}
    assert len(res.invariants) == len(blends) and res.invariant_bytes() > 0


def test_old_genome_recipe_replays_with_cpu_generator_masks(demo, tmp_path):
    """A genome recipe without mask_rng (written before it existed) decodes to the legacy masks."""
    import yaml

    from darwin.genome.recipe import plan_genome_recipe

    rec = {"genome": "darwin14", "parents": [str(demo["parent_a"]), str(demo["parent_b"])], "base": str(demo["base"]),
           "values": {"global_ratio": 0.5}, "seed": 3}
    from darwin.genome import load_genome

    spec = load_genome("darwin14")
    rec["values"] = {g.name: g.start for g in spec.expand(2)}
    f = tmp_path / "old.yaml"
    f.write_text(yaml.safe_dump(rec))
    plan, _ = plan_genome_recipe(str(f))
    assert {t.shared.get("mask_rng") for t in plan.tasks if t.method == "darwin_blend"} == {"cpu_generator"}
    f.write_text(yaml.safe_dump({**rec, "mask_rng": "counter"}))
    plan, _ = plan_genome_recipe(str(f))
    assert {t.shared.get("mask_rng") for t in plan.tasks if t.method == "darwin_blend"} == {"counter"}


def test_host_placement_gives_the_same_bits(demo):
    """Parents and invariants in host memory, streamed per tensor: the same child (CPU exercises the path)."""
    from darwin.search.resident import ResidentModel, choose_placement

    ck, a, plans = _genome_plans(demo, n=2)
    on_dev = ResidentModel(ck, a, dtype=torch.float32, device="cpu", placement="device")
    on_host = ResidentModel(ck, a, dtype=torch.float32, device="cpu", placement="host")
    lean = ResidentModel(ck, a, dtype=torch.float32, device="cpu", placement="device_lean")
    assert on_host.placement == "host" and on_host.estimate["parents"] > 0
    for p in plans:
        for r in (on_dev, on_host, lean):
            r.load_plan(p)
        for (n, x), y, z in zip(on_dev.model.state_dict().items(), on_host.model.state_dict().values(),
                                lean.model.state_dict().values()):
            assert torch.equal(x, y) and torch.equal(x, z), n
    assert lean.invariant_bytes() < on_dev.invariant_bytes()
    assert choose_placement("auto", torch.device("cpu"), on_dev.estimate) == "device"
    from darwin.errors import DarwinError

    with pytest.raises(DarwinError, match="placement"):
        choose_placement("gpu", torch.device("cpu"), on_dev.estimate)


def test_fitness_dtype_resolution():
    from darwin.errors import DarwinError
    from darwin.fitness.precision import cpu_has_native_bf16, resolve_fitness_dtype

    cpu = torch.device("cpu")
    assert resolve_fitness_dtype("float32", cpu) is torch.float32
    assert resolve_fitness_dtype("bfloat16", cpu) is torch.bfloat16
    assert resolve_fitness_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    with pytest.raises(DarwinError, match="fitness_dtype"):
        resolve_fitness_dtype("fp8", cpu)


def test_streamed_ties_matches_batched_kernel():
    """The streamed task-vector kernels (radix TIES trim, N-parent election) equal the batched ones."""
    from darwin.kernels.streamed_family import family_apply, kth_largest_abs
    from darwin.kernels.task_arithmetic import task_vector_merge

    g = torch.Generator().manual_seed(0)
    n = 20011
    base = (torch.randn(n, generator=g) * 0.02).bfloat16()
    xs = [(base.float() + torch.randn(n, generator=g) * 0.003).bfloat16() for _ in range(3)]
    mag = (xs[0].float() - base.float()).abs()
    for k in (1, 9, n // 3, n - 1, n):
        assert kth_largest_abs(xs[0], base, k, 1000) == float(torch.kthvalue(mag, n - k + 1).values)
    x = torch.stack([t.float() for t in xs])[None]
    for method in ("ties", "task_arithmetic"):
        for normalize in (True, False):
            w, dens = [0.5, 0.3, 0.2], [0.5, 0.3, 1.0]
            ref = task_vector_merge(x.clone(), base.float()[None], method, weight=torch.tensor([w]),
                                    density=torch.tensor([dens], dtype=torch.float64), lam=torch.tensor([0.8]),
                                    normalize=normalize)[0]
            out = family_apply(xs, base, method, weight=w, density=dens, lam=0.8, normalize=normalize, rescale=None,
                               seeds=None, out=torch.empty(n), tile=999)
            assert torch.allclose(out, ref, atol=1e-7), (method, normalize)


def test_evolve_scores_in_bfloat16_when_asked(demo, tmp_path):
    """fitness_dtype: bfloat16 scores candidates on a bf16 resident model: the best candidate's
    recorded fitness is the bf16 child's score; the float32 child stays the plan's bits."""
    from helpers import FITNESS_FILE, evolve_cfg
    from transformers import AutoModelForCausalLM

    import darwin
    from darwin.fitness.python import load_callable

    cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:nll_fixed_ids"}], population=4, generations=2)
    cfg["fitness_dtype"] = "bfloat16"
    res = darwin.evolve(cfg, tmp_path / "run", progress=False)
    fit = load_callable(f"{FITNESS_FILE}:nll_fixed_ids")
    child = AutoModelForCausalLM.from_pretrained(res.child_dir, dtype=torch.bfloat16).eval()
    assert fit(child, None) == pytest.approx(res.best["fitness"], abs=1e-6)
    assert json.loads((tmp_path / "run" / "run.json").read_text())["fitness_dtype"] == "bfloat16"


def test_bad_mask_rng_is_a_named_error(demo):
    import darwin
    from darwin.errors import RecipeError

    rec = {"merge_method": "dare_ties", "base_model": str(demo["base"]), "parameters": {"mask_rng": "mt19937"},
           "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 0.5, "density": 0.5}},
                      {"model": str(demo["parent_b"]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    with pytest.raises(RecipeError, match="mask_rng"):
        darwin.merge(rec, dry_run=True)


def test_dare_counter_masks_streamed_equal_batched(demo):
    """dare_ties with counter masks: the streamed kernel keeps the same elements as the batched one."""
    import darwin

    rec = {"merge_method": "dare_ties", "base_model": str(demo["base"]), "dtype": "float32",
           "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 0.6, "density": 0.3}},
                      {"model": str(demo["parent_b"]), "parameters": {"weight": 0.4, "density": 0.7}}]}
    from darwin.plan.execute import execute, merge_batch
    from darwin.plan.run import plan_recipe

    plan, ck = plan_recipe(rec)
    streamed = dict(execute(plan, ck, device="cpu"))
    for t in plan.tasks:  # the batched kernel on the same task (counter uniforms (level + ½)/4096 < ρ)
        ref = merge_batch([t], lambda m, n: ck[m].get(n), torch.device("cpu"))[0]
        assert torch.allclose(streamed[t.out_name], ref, atol=1e-6), t.out_name
    assert darwin.merge(rec, dry_run=True).plan.tasks[0].shared["mask_rng"] == "counter"


def test_della_out_of_range_is_a_plan_time_error(demo):
    import darwin
    from darwin.errors import RecipeError

    rec = {"merge_method": "della", "base_model": str(demo["base"]),
           "models": [{"model": str(demo["parent_a"]), "parameters": {"weight": 0.5, "density": 0.1}},
                      {"model": str(demo["parent_b"]), "parameters": {"weight": 0.5, "density": 0.5}}]}
    with pytest.raises(RecipeError, match="DELLA needs 0 < density − epsilon"):
        darwin.merge(rec, dry_run=True)


def test_resume_refuses_a_run_from_before_the_fast_path(demo, tmp_path):
    """run.json without fitness_dtype (an older darwin: other masks) cannot be resumed: a named error."""
    from helpers import FITNESS_FILE, evolve_cfg

    import darwin
    from darwin.errors import RecipeError

    cfg = evolve_cfg(demo, [{"python": f"{FITNESS_FILE}:nll_fixed_ids"}], population=2, generations=1)
    cfg["baselines"] = {"enabled": False}
    darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False)
    run = tmp_path / "run" / "run.json"
    old = json.loads(run.read_text())
    old.pop("fitness_dtype")
    run.write_text(json.dumps(old))
    with pytest.raises(RecipeError, match="older darwin"):
        darwin.evolve(cfg, tmp_path / "run", progress=False, write_outputs=False, resume=True)
