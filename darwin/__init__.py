"""darwin: breed better language models from existing checkpoints without gradient training.

The public functions (:mod:`darwin.api`): :func:`merge`, :func:`evolve`, :func:`golf`,
:func:`trim_vocab`, :func:`crossover`, :func:`mri`. No subpackage shares a name with them (the
MRI code lives in :mod:`darwin.diagnosis`), so importing any submodule leaves them in place.
"""

from darwin.api import MergeResult, TrimResult, crossover, evolve, golf, merge, mri, prune, trim_vocab
from darwin.errors import CheckpointError, CompatibilityError, DarwinError, OutputExistsError, RecipeError

__version__ = "0.1.0"
__all__ = ["merge", "evolve", "golf", "trim_vocab", "prune", "crossover", "mri", "MergeResult", "TrimResult",
           "DarwinError", "CheckpointError", "CompatibilityError", "OutputExistsError", "RecipeError",
           "__version__"]
