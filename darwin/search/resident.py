"""In-memory candidate evaluation: parents stay resident, one model object is rewritten in place.

A candidate is merged with the same batched executor as ``darwin merge`` but from parent tensors
already in memory (storage dtype, on the search device) straight into the parameters of one resident
model (``copy_``): no disk I/O per candidate and no model re-instantiation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from darwin.errors import CompatibilityError
from darwin.io.checkpoint import Checkpoint
from darwin.io.extras import has_tokenizer
from darwin.plan.execute import InvariantCache, execute, resolve_device
from darwin.plan.plan import MergePlan


def _check_shapes(plan: MergePlan, state: Mapping[str, torch.Tensor]) -> None:
    for t in plan.tasks:
        p = state.get(t.out_name)
        if p is None:
            raise CompatibilityError(f"child tensor {t.out_name!r} has no parameter in the resident model")
        if tuple(p.shape) != tuple(t.shape):
            raise CompatibilityError(f"child tensor {t.out_name!r}: shape {list(t.shape)} vs resident "
                                     f"{list(p.shape)}")


def _instantiate(config: dict[str, Any], dtype: torch.dtype, device: str | torch.device | None = None):
    """A model of ``config`` with uninitialised weights (every parameter is about to be overwritten)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise normally (slower, same result)
        from contextlib import nullcontext as no_init_weights  # type: ignore[assignment]  # fallback: another type
    from darwin.arch.config import decode_special_floats

    cfg = AutoConfig.for_model(**decode_special_floats(config))
    with no_init_weights():
        if device == "meta":
            with torch.device("meta"):
                model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    model.tie_weights()
    return model.eval()


def check_plan_shapes(plan: MergePlan) -> None:
    """Check ``plan`` against the model its config describes, without allocating weights.

    The model is instantiated from ``plan.config`` on the meta device.

    Raises:
        CompatibilityError: naming the first child tensor that has no parameter or another shape,
            or a parameter no task writes.
    """
    model = _instantiate(plan.config, plan.out_dtype, "meta")
    state = model.state_dict(keep_vars=True)
    _check_shapes(plan, state)
    _check_covered(plan, model)


def _check_covered(plan: MergePlan, model) -> None:
    written = {t.out_name for t in plan.tasks}
    seen: set[int] = set()
    for name, p in model.named_parameters():  # tied parameters are listed once
        if name not in written and id(p) not in seen:
            raise CompatibilityError(f"parameter {name!r} of the child model is written by no task of the plan")
        seen.add(id(p))


def _placed(t: torch.Tensor, home: torch.device, pin: bool) -> torch.Tensor:
    t = t.to(home)
    return t.pin_memory() if pin else t


def memory_estimate(checkpoints: Mapping[str, Checkpoint], names: Mapping[str, list[str]],
                    child_dtype: torch.dtype) -> dict[str, int]:
    """Bytes an in-memory evolve run holds (docs/scaling.md): parents in their storage dtype, the
    invariants (mask levels: 2 bytes per element of each of two sparsified parents, the upper
    bound of the Darwin blend with a base) and the resident child."""
    parents = sum(ck.meta[n].nbytes for ref, ck in checkpoints.items() for n in names[ref])
    ref0 = next(iter(checkpoints))
    elements = sum(math.prod(checkpoints[ref0].meta[n].shape) for n in names[ref0])
    return {"parents": parents, "invariants": 2 * 2 * elements, "child": elements * child_dtype.itemsize}


PLACEMENTS = ("auto", "device", "device_lean", "host")


def choose_placement(placement: str, device: torch.device, estimate: Mapping[str, int]) -> str:
    """The placement of a run: ``auto`` keeps everything on the device when it fits with a 25 %
    margin for tiles and activations (``device``), else drops the stored mask levels
    (``device_lean``: recomputed per tile), else keeps the parents in host memory (``host``).
    On a CPU the device is the host: ``device``.

    Raises:
        DarwinError: an unknown placement.
    """
    from darwin.errors import DarwinError

    if placement not in PLACEMENTS:
        raise DarwinError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
    if placement != "auto":
        return placement
    if device.type != "cuda":
        return "device"
    free = torch.cuda.mem_get_info(device)[0] / 1.25
    core = estimate["parents"] + estimate["child"]
    if core + estimate["invariants"] <= free:
        return "device"
    return "device_lean" if core <= free else "host"


class ResidentModel:
    """Parents in memory plus one resident model that candidates are written into.

    Args:
        checkpoints: parent reference → opened checkpoint (every model a plan may read).
        model_ref: folder the resident model is instantiated from (normally parent A).
        dtype: resident model dtype (child tensors are cast to it).
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"``…
        tensors: restrict the resident parent tensors to these names per parent (default: all).
        placement: where parents and invariants live: ``"device"`` (next to the child, mask levels
            stored), ``"device_lean"`` (same, levels recomputed per tile), ``"host"`` (host memory,
            pinned for CUDA; each tensor streams to the device when merged; levels recomputed on
            a CUDA device) or ``"auto"`` (:func:`choose_placement` from the memory estimate).
    """

    def __init__(self, checkpoints: Mapping[str, Checkpoint], model_ref: str, *, dtype: torch.dtype = torch.float32,
                 device: str = "auto", tensors: Mapping[str, list[str]] | None = None, placement: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = resolve_device(device)
        self.dtype = dtype
        self.parents: dict[str, dict[str, torch.Tensor]] = {}
        names_of = {ref: (tensors[ref] if tensors is not None else ck.tensor_names) for ref, ck in checkpoints.items()}
        self.estimate = memory_estimate(checkpoints, names_of, dtype)
        self.placement = choose_placement(placement, self.device, self.estimate)
        keep_levels = self.placement == "device" or (self.placement == "host" and self.device.type != "cuda")
        home = torch.device("cpu") if self.placement == "host" else self.device
        pin = self.placement == "host" and self.device.type == "cuda"
        for ref, ck in checkpoints.items():
            # storage dtype: half the memory and bandwidth of float32 for bf16/fp16 parents; the
            # kernels widen tile by tile
            self.parents[ref] = {n: _placed(ck.get(n), home, pin) for n in names_of[ref]}
        path = checkpoints[model_ref].path
        # transformers stubs type from_pretrained(...).to as a decorator wrapper (wants a model)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(self.device).eval()  # type: ignore[arg-type]
        # a checkpoint without tokenizer files can still be scored by tokenizer-free fitnesses
        self.tokenizer = AutoTokenizer.from_pretrained(path) if has_tokenizer(path) else None
        self.state = self.model.state_dict(keep_vars=True)
        self._arch: str | None = None  # config of the current model once a plan has set it
        self.invariants = InvariantCache(keep_levels=keep_levels)

    def check_plan(self, plan: MergePlan) -> None:
        """Every child tensor of ``plan`` exists in the resident model with the same shape.

        Raises:
            CompatibilityError: naming the first tensor that does not fit.
        """
        _check_shapes(plan, self.state)

    def _ensure_architecture(self, plan: MergePlan) -> None:
        """Rebuild the resident model when ``plan`` describes another architecture.

        Same-family genomes keep one model for the whole search; a crossover candidate with another
        layer pattern (or a baseline that rebuilds an SSM parent) gets a fresh model built from
        its config with uninitialised weights (milliseconds once the classes are imported).
        """
        import json

        arch = json.dumps({k: v for k, v in plan.config.items() if k not in ("dtype", "torch_dtype")},
                          sort_keys=True, default=str)
        if self._arch is None:
            self._arch = arch  # the model built from model_ref serves the first plan if it fits
            if not self._fits(plan):
                self._arch = None
        if arch != self._arch:
            self.model = _instantiate(plan.config, self.dtype).to(self.device)
            self.state = self.model.state_dict(keep_vars=True)
            _check_covered(plan, self.model)
            self._arch = arch

    def _fits(self, plan: MergePlan) -> bool:
        try:
            _check_shapes(plan, self.state)
            _check_covered(plan, self.model)
        except CompatibilityError:
            return False
        return plan.config.get("model_type") == self.model.config.model_type

    @torch.no_grad()
    def load_plan(self, plan: MergePlan, batch_bytes: int | None = None) -> None:
        """Merge ``plan`` from the resident parents into the resident model's parameters."""
        self._ensure_architecture(plan)
        for name, tensor in execute(plan, self.parents, device=self.device, batch_bytes=batch_bytes,
                                    out_dtype=self.dtype, to_cpu=False, invariants=self.invariants,
                                    into=self.state, check_values=False):
            param = self.state[name]
            if tensor is not param:  # streamed kernels wrote into the parameter already
                param.copy_(tensor)

    def invariant_bytes(self) -> int:
        """Bytes held by the genome-invariant precompute (mask levels, L1 tables) so far."""
        return self.invariants.nbytes()

    def score(self, plan: MergePlan, fitness) -> Any:
        """Load ``plan`` and return ``fitness(model, tokenizer)``."""
        self.load_plan(plan)
        return fitness(self.model, self.tokenizer)


@dataclass(frozen=True)
class ResidentSpec:
    """What a :class:`ResidentModel` is built from, in a form that can be sent to another process.

    Attributes:
        paths: parent reference (as plans name it) → local checkpoint folder.
        model_ref: reference whose folder the resident model is instantiated from.
        dtype: resident model dtype.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``…
        tensors: parent reference → tensor names to keep resident (None: all).
        placement: ``auto``, ``device``, ``device_lean`` or ``host`` (see :class:`ResidentModel`).
    """

    paths: dict[str, str]
    model_ref: str
    dtype: torch.dtype
    device: str
    tensors: dict[str, list[str]] | None = None
    placement: str = "auto"

    def build(self, device: str | None = None) -> ResidentModel:
        """Open the checkpoints and load the resident model (on ``device`` if given)."""
        ckpts = {ref: Checkpoint(path) for ref, path in self.paths.items()}
        return ResidentModel(ckpts, self.model_ref, dtype=self.dtype, device=device or self.device,
                             tensors=self.tensors, placement=self.placement)
