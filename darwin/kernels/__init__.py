"""Merge kernels: small pure batched functions, float32 in, float32 out (see :mod:`darwin.kernels.methods`)."""
