"""Architecture mapper: canonical components per tensor, child configs, pre-flight checks."""

from darwin.arch.mapper import COMPONENTS, ArchMap, TensorRole, classify

__all__ = ["COMPONENTS", "ArchMap", "TensorRole", "classify"]
