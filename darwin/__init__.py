"""darwin: breed better language models from existing checkpoints without gradient training."""

from darwin.errors import CheckpointError, CompatibilityError, DarwinError, OutputExistsError, RecipeError
from darwin.plan.run import MergeResult, merge

__version__ = "0.1.0"
__all__ = ["merge", "MergeResult", "DarwinError", "CheckpointError", "CompatibilityError",
           "OutputExistsError", "RecipeError", "__version__"]
