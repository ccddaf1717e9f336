"""Checkpoint input/output: lazy readers for HF folders and atomic sharded writers."""

from darwin.io.checkpoint import Checkpoint, TensorMeta
from darwin.io.writer import ShardedWriter, atomic_output_dir, check_output_dir, parse_size

__all__ = ["Checkpoint", "TensorMeta", "ShardedWriter", "atomic_output_dir", "check_output_dir",
           "parse_size"]
