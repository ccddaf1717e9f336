"""darwin: breed better language models from existing checkpoints without gradient training."""

from darwin.errors import CheckpointError, CompatibilityError, DarwinError, OutputExistsError, RecipeError
from darwin.plan.crossover import crossover
from darwin.plan.run import MergeResult, merge

# Load the ``darwin.mri`` subpackage now: importing a submodule later would rebind the attribute
# ``darwin.mri`` to the package and shadow the ``mri`` function defined below.
import darwin.mri as _mri_package  # noqa: E402,F401


def evolve(config, out_dir, **kwargs):
    """Breed a child with CMA-ES (see :func:`darwin.search.evolve.evolve`)."""
    from darwin.search.evolve import evolve as _evolve

    return _evolve(config, out_dir, **kwargs)


def mri(model, out_dir=None, **kwargs):
    """MRI scan of a model or pair (see :func:`darwin.mri.run.run_mri`)."""
    from darwin.mri.run import run_mri

    return run_mri(model, out_dir, **kwargs)


__version__ = "0.1.0"
__all__ = ["merge", "evolve", "crossover", "mri", "MergeResult", "DarwinError", "CheckpointError", "CompatibilityError",
           "OutputExistsError", "RecipeError", "__version__"]
