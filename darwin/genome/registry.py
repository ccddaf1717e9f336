"""The decoder registry: everything the search knows about a genome decoder, in one declaration.

A genome YAML names its ``decoder``. A :class:`Decoder` declares what that decoder needs and does:

* ``genes`` and ``per_layer_genes``: the gene names it reads (a genome missing one is refused,
  naming it, before any weight is read);
* either a ``ratio_rule`` (same-family parents: the rule gives each tensor its fraction from parent
  B and :class:`darwin.genome.breeder.PairBreeder` turns it into a transplant or a
  SLERP/DARE-TIES blend) or a ``breeder`` factory (anything else: crossover, depth pruning, your
  own);
* ``mri_prior``: ``"tensor"`` (r_MRI per tensor fused through ``mri_trust``), ``"layer"`` (per-layer
  Block Influence handed to :meth:`Breeder.set_prior`) or ``None`` (no MRI);
* ``baselines``: the names of the baselines its breeder scores before the search;
* how many parents it takes and whether it takes a base model.

Built-in decoders (``darwin14``, ``layerwise``, ``crossover``, ``ffn_transplant``, ``golf``) are
declared next to their code (:data:`REGISTRY` maps each name to that module, imported on the first
lookup). Your own decoder is one :func:`register_decoder` call
(docs/genome.md), or a genome YAML that names it as ``decoder: my_package.my_module:MY_DECODER``,
which is imported when the genome is loaded and so also works when ``darwin merge`` replays the
recipe in a new process.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch

from darwin.errors import RecipeError

if TYPE_CHECKING:
    from darwin.arch.mapper import TensorRole
    from darwin.genome.spec import GenomeSpec
    from darwin.io.checkpoint import Checkpoint
    from darwin.plan.plan import MergePlan

MriPrior = Literal["tensor", "layer"] | None
#: ``(gene values, tensor role, number of layers, neutral ratio) -> fraction from parent B in [0, 1]``
RatioRule = Callable[[Mapping[str, float], "TensorRole", int, float], float]

#: genes every ratio-rule decoder reads (DARE densities, MRI trust, SLERP vs DARE-TIES weight)
BLEND_GENES = ("density_a", "density_b", "mri_trust", "merge_method_weight")


@runtime_checkable
class Breeder(Protocol):
    """Parents prepared for a genome search: gene values → merge plans with no I/O.

    Everything :mod:`darwin.search` and genome-recipe replay call is declared here.
    """

    a: str
    b: str
    base: str | None
    num_layers: int

    @property
    def parents(self) -> list[str]:
        """The parents (no base), as a replayable recipe lists them."""
        ...

    @property
    def models(self) -> list[str]:
        """Every reference a plan may read (parents, then the base)."""
        ...

    def decode(self, spec: GenomeSpec, values: Mapping[str, float], *, r_mri: Mapping[str, float] | None = None,
               seed: int = 0) -> MergePlan:
        """Gene values → plan (``r_mri``: tensor → MRI ratio, used by ``mri_prior="tensor"`` decoders)."""
        ...

    def baselines(self) -> dict[str, MergePlan]:
        """Name → plan of each baseline (scored before the search)."""
        ...

    def needed(self) -> dict[str, list[str]]:
        """Reference → tensor names any plan may read (what the resident model keeps in memory)."""
        ...

    def health_map(self, plan: MergePlan) -> dict[str, Any]:
        """Keyword arguments of :func:`darwin.diagnosis.health.health_check` mapping child layers to parents'."""
        ...

    def set_prior(self, block_influence: list[float]) -> None:
        """Per-layer Block Influence from the MRI probe (``mri_prior="layer"`` decoders)."""
        ...

    def set_prior_ranks(self, ranks: list[float]) -> None:
        """An already ranked per-layer prior, as a saved genome recipe records it."""
        ...


@dataclass(frozen=True, kw_only=True)
class BreedRequest:
    """What a breeder factory is given.

    Attributes:
        spec: the genome.
        checkpoints: reference → opened checkpoint (headers and configs only; no weights read).
        parents: parent references, A first.
        base: base model reference, or None.
        out_dtype: child storage dtype.
        max_params: ``search.constraints.max_params`` (None: no budget).
    """

    spec: GenomeSpec
    checkpoints: Mapping[str, Checkpoint]
    parents: list[str]
    base: str | None
    out_dtype: torch.dtype
    max_params: int | None = None


BreederFactory = Callable[[BreedRequest], Breeder]


@dataclass(frozen=True, kw_only=True)
class Decoder:
    """One genome decoder (see the module doc).

    Attributes:
        name: what a genome YAML's ``decoder:`` says.
        genes: scalar genes the decoder reads (a ratio-rule decoder also reads :data:`BLEND_GENES`,
            added by :attr:`required_genes`).
        per_layer_genes: per-layer genes (``layer_<i>_<name>``) the decoder reads.
        ratio_rule: same-family decoders: the per-tensor ratio rule (exclusive with ``breeder``).
        breeder: other decoders: builds the breeder from a :class:`BreedRequest`.
        mri_prior: ``"tensor"``, ``"layer"`` or None.
        baselines: names of the baselines the breeder scores (a golf parent over the budget is
            labelled ``parent A (over budget)``).
        min_parents, max_parents: how many parents it breeds.
        takes_base: whether a ``base:`` model is allowed.
        description: one line for docs and errors.
        blend: ratio-rule decoders: how a tensor between the transplant thresholds is made:
            ``"darwin_blend"`` (SLERP/DARE-TIES mix, reads :data:`BLEND_GENES`) or ``"linear"``
            (``(1 − r)·A + r·B``, no further genes).

    Raises:
        ValueError: neither or both of ``ratio_rule`` and ``breeder``; a ``mri_prior`` other than
            ``"tensor"``, ``"layer"`` or None.
    """

    name: str
    genes: tuple[str, ...] = ()
    per_layer_genes: tuple[str, ...] = ()
    ratio_rule: RatioRule | None = None
    breeder: BreederFactory | None = None
    mri_prior: MriPrior = None
    baselines: tuple[str, ...] = ()
    min_parents: int = 2
    max_parents: int = 2
    takes_base: bool = False
    description: str = ""
    blend: str = "darwin_blend"

    @property
    def required_genes(self) -> tuple[str, ...]:
        """Every scalar gene a genome for this decoder must define."""
        extra = (tuple(g for g in BLEND_GENES if g not in self.genes)
                 if self.ratio_rule is not None and self.blend == "darwin_blend" else ())
        return self.genes + extra

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name:
            raise ValueError(f"decoder name {self.name!r}: give a non-empty name without ':'")
        if (self.ratio_rule is None) == (self.breeder is None):
            raise ValueError(f"decoder {self.name!r}: give exactly one of ratio_rule and breeder")
        if not callable(self.ratio_rule or self.breeder):
            raise ValueError(f"decoder {self.name!r}: ratio_rule / breeder must be callable")
        for key in ("genes", "per_layer_genes", "baselines"):
            value = getattr(self, key)
            if not isinstance(value, tuple) or not all(isinstance(g, str) for g in value):
                raise ValueError(f"decoder {self.name!r}: {key} must be a tuple of names, got {value!r}")
        if self.blend not in ("darwin_blend", "linear"):
            raise ValueError(f"decoder {self.name!r}: blend must be 'darwin_blend' or 'linear'")
        if self.mri_prior not in ("tensor", "layer", None):
            raise ValueError(f"decoder {self.name!r}: mri_prior must be 'tensor', 'layer' or None")
        if not 1 <= self.min_parents <= self.max_parents:
            raise ValueError(f"decoder {self.name!r}: need 1 <= min_parents <= max_parents")
        if self.ratio_rule is not None and (self.min_parents, self.max_parents) != (2, 2):
            raise ValueError(f"decoder {self.name!r}: a ratio rule breeds exactly two parents")


@dataclass
class DecoderRegistry:
    """Name → :class:`Decoder`; each built-in is declared in the module ``builtins`` names for it,
    imported on first lookup. A built-in name cannot be taken by another module."""

    builtins: dict[str, str]
    decoders: dict[str, Decoder] = field(default_factory=dict)
    _loaded: bool = False

    def register(self, decoder: Decoder, *, replace: bool = False) -> Decoder:
        """Add ``decoder``; returns it (usable as ``MY = register_decoder(Decoder(...))``).

        Raises:
            RecipeError: the name is taken (a built-in one included) and ``replace`` is False, or
                ``decoder`` is not a :class:`Decoder`.
        """
        if not isinstance(decoder, Decoder):
            raise RecipeError(f"register_decoder: expected a darwin.genome.registry.Decoder, got {type(decoder).__name__}")
        owner = self.builtins.get(decoder.name)
        if owner is not None and getattr(decoder.ratio_rule or decoder.breeder, "__module__", None) != owner:
            raise RecipeError(f"decoder {decoder.name!r} is built in (declared in {owner}); choose another name")
        if decoder.name in self.decoders and not replace and self.decoders[decoder.name] is not decoder:
            raise RecipeError(f"decoder {decoder.name!r} is already registered (pass replace=True to override)")
        self.decoders[decoder.name] = decoder
        return decoder

    def _load_builtins(self) -> None:
        if not self._loaded:
            self._loaded = True
            for mod in dict.fromkeys(self.builtins.values()):
                importlib.import_module(mod)

    def get(self, name: str) -> Decoder:
        """The decoder called ``name``, or imported from ``module:attribute``.

        Raises:
            RecipeError: unknown name, or a ``module:attribute`` that cannot be imported or is not
                a :class:`Decoder`.
        """
        self._load_builtins()
        if name in self.decoders:
            return self.decoders[name]
        if ":" in name:
            return self._import(name)
        raise RecipeError(f"unknown decoder {name!r} (known: {sorted(self.decoders)}; or module:attribute)")

    def _import(self, ref: str) -> Decoder:
        mod, _, attr = ref.partition(":")
        if not mod or not attr or mod.startswith("."):
            raise RecipeError(f"decoder {ref!r}: give module:attribute with an absolute module name")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except Exception as e:  # any failure of the user's module (ImportError, SyntaxError, its own bugs)
            raise RecipeError(f"decoder {ref!r}: cannot import it ({type(e).__name__}: {e})") from None
        if not isinstance(obj, Decoder):
            raise RecipeError(f"decoder {ref!r}: is a {type(obj).__name__}, not a darwin.genome.registry.Decoder")
        return obj

    def names(self) -> list[str]:
        """Registered decoder names, sorted."""
        self._load_builtins()
        return sorted(self.decoders)


#: the process-wide registry (built-ins plus whatever :func:`register_decoder` adds)
REGISTRY = DecoderRegistry(builtins={"darwin14": "darwin.genome.decode", "layerwise": "darwin.genome.decode",
                                     "zones": "darwin.genome.decode",
                                     "crossover": "darwin.genome.breeder", "ffn_transplant": "darwin.genome.breeder",
                                     "golf": "darwin.genome.golf"})


def register_decoder(decoder: Decoder, *, replace: bool = False) -> Decoder:
    """Register a decoder so genomes can name it (see :meth:`DecoderRegistry.register`)."""
    return REGISTRY.register(decoder, replace=replace)


def get_decoder(name: str) -> Decoder:
    """Look a decoder up by name or ``module:attribute`` (see :meth:`DecoderRegistry.get`)."""
    return REGISTRY.get(name)


def decoder_names() -> list[str]:
    """Names of the registered decoders."""
    return REGISTRY.names()
