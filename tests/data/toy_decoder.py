"""A decoder defined outside darwin: one gene sets every tensor's fraction from parent B.

docs/genome.md shows this file verbatim (a test checks they agree).
"""

from darwin.genome.registry import Decoder, register_decoder


def uniform_ratio(values, role, num_layers, neutral):
    """Every tensor, whatever its component or layer, takes the fraction ``ratio`` from parent B."""
    return values["ratio"]


UNIFORM = register_decoder(Decoder(
    name="uniform_ratio",
    ratio_rule=uniform_ratio,        # same-family parents: PairBreeder applies the rule per tensor
    genes=("ratio",),                # + density_a, density_b, mri_trust, merge_method_weight
    mri_prior="tensor",              # r = τ·r_MRI + (1 − τ)·ratio when MRI is enabled
    takes_base=True,
    baselines=("parent A", "parent B", "uniform 0.5"),
    description="one global ratio",
))
