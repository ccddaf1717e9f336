"""Execute a merge plan: the batched hot path.

Tasks of equal method, shape, input count and static parameters are stacked into one
``[B, N, *S]`` float32 batch (B tensors, N parents) and merged by one kernel call with per-tensor
coefficient vectors, on CUDA when available. The batch size is bounded by a byte budget, so memory
stays flat whatever the model size. Results are cast to the output dtype and yielded one tensor
at a time, in plan order within each batch, to a writer or into a resident model.

Methods with a streamed form (:class:`darwin.kernels.methods.StreamKernel`, e.g. the Darwin blend
with counter-based masks) are run one tensor at a time instead: their genome-invariant part comes
from an :class:`InvariantCache` when one is given (an evolve run keeps one for all candidates) and
their per-candidate part is one tiled pass that writes straight into the destination tensor.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

import torch

from darwin.errors import DarwinError
from darwin.kernels.methods import get_method, run_kernel
from darwin.kernels.reduce import Workspace
from darwin.plan.plan import MergePlan, TensorTask
from darwin.plan.vocab_rows import merge_vocab_task

DEFAULT_BATCH_BYTES = 1 << 30  # CUDA: big batches amortise launches over many small tensors
CPU_BATCH_BYTES = 16 << 20  # CPU: bigger batches only add memory traffic (benchmarks/RESULTS.md)
_COUNT_PARAMS = ("density", "gamma", "epsilon")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/None → CUDA when available, else CPU; other values pass to ``torch.device``.

    Raises:
        DarwinError: an unknown device string, or CUDA asked for where there is none.
    """
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DarwinError(f"device {device!r}: not a device (use auto, cpu, cuda or cuda:N)") from e
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise DarwinError(f"device {device!r}: CUDA is not available here "
                          f"({torch.cuda.device_count()} GPU(s)); use --device cpu or auto")
    if dev.type not in ("cpu", "cuda", "mps", "xpu"):
        raise DarwinError(f"device {device!r}: unsupported device type {dev.type!r}")
    backend = {"mps": getattr(torch.backends, "mps", None), "xpu": getattr(torch, "xpu", None)}.get(dev.type)
    if dev.type in ("mps", "xpu") and (backend is None or not backend.is_available()):
        raise DarwinError(f"device {device!r}: {dev.type} is not available here; use --device cpu or auto")
    return dev


def default_batch_bytes(device: torch.device) -> int:
    """Working-set budget of one kernel call: 1 GiB on CUDA, 16 MiB on CPU (measured: larger CPU
    batches are not faster, see benchmarks/RESULTS.md)."""
    return DEFAULT_BATCH_BYTES if device.type == "cuda" else CPU_BATCH_BYTES


#: elements per tile of a streamed kernel: big enough to amortise per-op dispatch, small enough
#: that a tile's float32 temporaries stay in the CPU's cache (measured, benchmarks/RESULTS.md)
CPU_TILE = 1 << 19
CUDA_TILE = 1 << 24


def default_tile(device: torch.device) -> int:
    """Elements per tile of a streamed kernel on ``device``."""
    return CUDA_TILE if device.type == "cuda" else CPU_TILE


def _stream_of(task: TensorTask):
    if task.units > 1:  # fused experts run through the batched kernels, one unit per batch row
        return None
    spec = get_method(task.method)
    return spec.stream if spec.stream is not None and spec.stream.applies(task.shared) else None


def _static_params(task: TensorTask) -> tuple:
    """The task's non-float (genome-independent) shared parameters, sorted."""
    return tuple(sorted((k, v) for k, v in task.shared.items() if not isinstance(v, float)))


def task_key(task: TensorTask) -> tuple:
    """What a streamed kernel's invariants depend on: method, sources, seeds and static parameters."""
    return (task.method, tuple(task.inputs), task.base, tuple(task.seeds or ()), _static_params(task))


class InvariantCache:
    """Genome-invariant inputs of streamed kernels (SLERP norms, mask levels, L1 tables), per task key.

    One cache serves every candidate of an evolve run: a tensor's invariants are computed the first
    time a plan needs them and reused afterwards (a transplanted tensor simply does not read them).

    Args:
        keep_levels: store each random mask's levels (2 bytes per element and sparsified parent);
            False recomputes them per tile (cheap on GPUs, slow on CPUs; the memory plan decides).
    """

    def __init__(self, keep_levels: bool = True):
        self.keep_levels = keep_levels
        self._entries: dict[tuple, Any] = {}
        self.workspace = Workspace()  # tile temporaries reused by every candidate

    def get(self, task: TensorTask, build: Callable[[bool], Any]) -> Any:
        """The invariants of ``task``, built with ``build(keep_levels)`` on first use."""
        key = task_key(task)
        if key not in self._entries:
            self._entries[key] = build(self.keep_levels)
        return self._entries[key]

    def nbytes(self) -> int:
        """Bytes held by every cached entry."""
        return sum(e.nbytes() for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def run_streamed(task: TensorTask, load: Callable[[str, str], torch.Tensor], out: torch.Tensor,
                 cache: InvariantCache | None = None, tile: int | None = None) -> torch.Tensor:
    """Merge one task with its method's streamed kernel into ``out`` (``task.shape``, contiguous).

    Inputs are read in their storage dtype wherever ``load`` keeps them (device or host memory:
    tiles are copied to ``out``'s device); invariants come from ``cache`` or are computed for this
    call only.
    """
    stream = _stream_of(task)
    assert stream is not None  # callers route only streamed tasks here
    xs = [load(s.model, s.tensor) for s in task.inputs]
    base = load(task.base.model, task.base.tensor) if task.base is not None else None

    def build(keep_levels: bool) -> Any:
        return stream.prepare(xs, base, task.shared, task.seeds, keep_levels)

    inv = cache.get(task, build) if cache is not None else build(True)
    return stream.apply(xs, base, inv, task.shared, task.parent, task.seeds, out, tile or default_tile(out.device),
                        cache.workspace if cache is not None else None)


def _static_key(task: TensorTask) -> tuple:
    return (task.method, task.shape, task.units, len(task.inputs), task.base is not None, _static_params(task))


def batches(tasks: list[TensorTask], batch_bytes: int = DEFAULT_BATCH_BYTES) -> list[list[TensorTask]]:
    """Group tasks that one kernel call can merge together, each group within ``batch_bytes``.

    The working set of a batch is estimated as ``B·(N + 3)·numel·4`` bytes (inputs, base, result
    and one temporary, float32).
    """
    groups: dict[tuple, list[TensorTask]] = defaultdict(list)
    for i, t in enumerate(tasks):
        # a streamed or vocabulary task is its own group (it runs tensor by tensor)
        alone = t.vocab or _stream_of(t) is not None
        groups[("alone", i) if alone else _static_key(t)].append(t)
    out: list[list[TensorTask]] = []
    for group in groups.values():
        per = (len(group[0].inputs) + 3) * group[0].numel * 4
        cap = max(1, batch_bytes // max(per, 1))
        out.extend(group[i:i + cap] for i in range(0, len(group), cap))
    return out


def peak_bytes_estimate(plan: MergePlan, batch_bytes: int = DEFAULT_BATCH_BYTES) -> int:
    """Largest batch working set of the plan, in bytes (see :func:`batches`)."""
    return max(((len(b[0].inputs) + 3) * b[0].numel * 4 * len(b) for b in batches(plan.tasks, batch_bytes)),
               default=0)


def merge_batch(batch: list[TensorTask], load: Callable[[str, str], torch.Tensor],
                device: torch.device) -> torch.Tensor:
    """Merge one batch of compatible tasks.

    Args:
        batch: tasks sharing method, shape, input count and static parameters.
        load: ``(model, tensor name) → tensor`` (any dtype, CPU).
        device: where the kernel runs.

    Returns:
        ``[B, *S]`` float32 on ``device``.
    """
    spec = get_method(batch[0].method)
    f32: dict[str, Any] = dict(dtype=torch.float32, device=device)
    shape = batch[0].shape
    # copy each input straight into its slot of the float32 batch: no per-tensor float32 copy, no stack
    x = torch.empty((len(batch), len(batch[0].inputs), *shape), **f32)
    for b, t in enumerate(batch):
        for i, s in enumerate(t.inputs):
            x[b, i].copy_(load(s.model, s.tensor))
    base = None
    if batch[0].base is not None:
        base = torch.empty((len(batch), *shape), **f32)
        for b, t in enumerate(batch):
            assert t.base is not None  # base presence is part of the batch key
            base[b].copy_(load(t.base.model, t.base.tensor))
    shared: dict[str, Any] = {}
    for k, v in batch[0].shared.items():
        shared[k] = torch.tensor([t.shared[k] for t in batch], **f32) if isinstance(v, float) else v
    # fractions that become element counts stay float64 so ⌊ρ·n⌋ matches the recipe's arithmetic
    parent = {k: torch.tensor([t.parent[k] for t in batch], device=device,
                              dtype=torch.float64 if k in _COUNT_PARAMS else torch.float32)
              for k in batch[0].parent}
    # seeds are set by method (spec.random), and the method is part of the batch key: all or none have them
    seeds = [cast("list[int]", t.seeds) for t in batch] if batch[0].seeds is not None else None
    units = batch[0].units
    if units == 1:
        return run_kernel(spec, x, base, shared, parent, seeds)
    return _run_units(spec, units, x, base, shared, parent, seeds)


def _run_units(spec, units: int, x: torch.Tensor, base: torch.Tensor | None, shared: dict[str, Any],
               parent: dict[str, torch.Tensor], seeds: list[list[int]] | None) -> torch.Tensor:
    """The kernel over ``units`` independent tensors per batch row: ``x [B, N, *S]`` is viewed as
    ``[B·U, N, numel/U]`` (unit ``u`` is the ``u``-th contiguous block), parameters repeat per unit,
    and unit ``u`` of a parent seeded ``s`` draws its mask from seed ``s·U + u``."""
    b, n, shape = x.shape[0], x.shape[1], x.shape[2:]
    xu = x.reshape(b, n, units, -1).transpose(1, 2).reshape(b * units, n, -1)
    bu = base.reshape(b * units, -1) if base is not None else None
    su = {k: v.repeat_interleave(units) if isinstance(v, torch.Tensor) else v for k, v in shared.items()}
    pu = {k: v.repeat_interleave(units, dim=0) for k, v in parent.items()}
    seeds_u = [[(s * units + u) % (1 << 63) for s in row] for row in seeds for u in range(units)] if seeds else None
    return run_kernel(spec, xu, bu, su, pu, seeds_u).reshape(b, *shape)


def check_range(names: list[str], merged: torch.Tensor, dtype: torch.dtype) -> None:
    """Refuse merged values that ``dtype`` cannot hold (float16 beyond ±65504, or inf/NaN anywhere),
    so a child never stores inf or NaN.

    Args:
        names: the child tensor names of ``merged``'s rows (one per batch row).
        merged: ``[B, *S]`` float32 results (or one tensor in ``dtype``).
        dtype: the storage dtype.

    Raises:
        DarwinError: naming the first offending tensor, its largest magnitude and what to change.
    """
    if dtype not in (torch.float16, torch.bfloat16) and merged.dtype not in (torch.float16, torch.bfloat16):
        return
    limit = torch.finfo(dtype).max
    flat = merged.reshape(len(names), -1)
    peak = flat.abs().amax(1) if flat.shape[1] else torch.zeros(flat.shape[0], device=flat.device)
    bad = (~torch.isfinite(peak)) | (peak > limit)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise DarwinError(f"{names[i]}: merged values reach {float(peak[i]):.4g}, "
                          f"beyond what {str(dtype).removeprefix('torch.')} holds ({limit:.4g}); write float32 or "
                          "bfloat16 (dtype:), or lower the weights or the DARE/DELLA rescale")


def execute(plan: MergePlan, checkpoints: Mapping[str, Any], *, device: str | torch.device | None = "auto",
            batch_bytes: int | None = None, out_dtype: torch.dtype | None = None, to_cpu: bool = True,
            on_batch: Callable[[int], None] | None = None, invariants: InvariantCache | None = None,
            into: Mapping[str, torch.Tensor] | None = None, check_values: bool = True
            ) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(child tensor name, tensor)`` for every task.

    Args:
        plan: the merge plan.
        checkpoints: model reference → tensor source with ``get(name)`` (a :class:`Checkpoint`,
            or a plain ``dict`` of tensors held in memory).
        device: kernel device (``"auto"``: CUDA if available).
        batch_bytes: working-set budget of one kernel call (default: :func:`default_batch_bytes`).
        out_dtype: result dtype (default: the plan's output dtype).
        to_cpu: move results to the CPU; otherwise they stay on the kernel device.
        on_batch: called with the number of tensors after each batch (progress bars).
        invariants: cache of streamed kernels' genome-invariant inputs (evolve keeps one per run).
        into: child tensor name → destination tensor on the kernel device (a resident model's
            parameters): streamed kernels write there directly and yield that tensor.
        check_values: refuse float16/bfloat16 results out of the dtype's range (:func:`check_range`);
            an evolve candidate scored in memory skips it (a bad candidate scores badly).

    Yields tensors that may be views of a shared batch buffer: copy them (writers do) before the
    next item if they must outlive the iteration.
    """
    dev = resolve_device(device)
    dtype = out_dtype or plan.out_dtype
    batch_bytes = batch_bytes or default_batch_bytes(dev)

    def load(model: str, name: str) -> torch.Tensor:
        return checkpoints[model].get(name)

    for batch in batches(plan.tasks, batch_bytes):
        if batch[0].vocab:
            if plan.vocab is None:
                raise DarwinError(f"{batch[0].out_name}: a vocabulary task in a plan without a child vocabulary")
            merged = merge_vocab_task(batch[0], plan.vocab, load, dev, merge_batch)
            if check_values:
                check_range([batch[0].out_name], merged, dtype)
            merged = merged.to(dtype)
            yield batch[0].out_name, (merged.cpu() if to_cpu else merged)
            if on_batch:
                on_batch(1)
            continue
        if _stream_of(batch[0]) is not None:
            task = batch[0]
            dest = into.get(task.out_name) if into is not None else None
            if dest is None or not dest.is_contiguous():
                dest = torch.empty(task.shape, dtype=dtype, device=dev)
            out = run_streamed(task, load, dest, invariants)
            if check_values:
                check_range([task.out_name], out, out.dtype)
            yield task.out_name, (out.cpu() if to_cpu and out.device.type != "cpu" else out)
            if on_batch:
                on_batch(1)
            continue
        merged = merge_batch(batch, load, dev)
        if check_values:
            check_range([t.out_name for t in batch], merged, dtype)
        merged = merged.to(dtype)
        if to_cpu and merged.device.type != "cpu":
            merged = merged.cpu()
        for task, tensor in zip(batch, merged):
            yield task.out_name, tensor
        if on_batch:
            on_batch(len(batch))
