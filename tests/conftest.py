"""Test configuration: float64 for gradient checks, 4 forced CPU devices for the sharding tests.

Both must be set before JAX's first operation, hence at the very top of this file.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
