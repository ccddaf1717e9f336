"""Deterministic seeds for random masks (DARE, DELLA).

A mask depends only on (run seed, tensor name, parent index), never on global RNG state, on the
order tensors are merged in, or on the device: the same genome and seed give the same child.
"""

from __future__ import annotations

import hashlib


def tensor_seed(run_seed: int, tensor_name: str, parent_index: int) -> int:
    """A 63-bit seed from the run seed, the output tensor name and the parent's index.

    Args:
        run_seed: the merge's ``seed`` (recipe key ``parameters.seed`` or ``--seed``).
        tensor_name: output tensor name, e.g. ``model.layers.3.mlp.up_proj.weight``.
        parent_index: index of the parent among the tensor's non-base inputs.

    Returns:
        an integer in ``[0, 2**63)`` (BLAKE2b of the three values).
    """
    h = hashlib.blake2b(f"{run_seed}\x1f{tensor_name}\x1f{parent_index}".encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") >> 1
