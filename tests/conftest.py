"""Test configuration: float64 for gradient checks, 4 forced CPU devices for the sharding tests; the fixtures
shared by several test files.

Both settings must be made before JAX's first operation, hence at the very top of this file.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("MPLBACKEND", "Agg")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="session")
def readme_quickstart():
    """The namespace of the README's quickstart block, executed verbatim once per session (test_packaging checks
    it, test_outer continues it with the loop section), on a 50-image slice of the packaged data to stay quick:
    the checks do not depend on the data's size, and the block's own loader is patched only while it runs."""
    from helpers import readme_block

    import hgkit.datasets
    from hgkit.datasets.mnist import Split

    full = hgkit.datasets.hyper_cleaning_mnist()
    small = Split(*(a[:50] for a in full))
    namespace: dict = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(hgkit.datasets, "hyper_cleaning_mnist", lambda: small)
        exec(compile(readme_block("## Quickstart"), "README.md", "exec"), namespace)
    assert len(namespace["x_train"]) == 50  # the block used the slice
    return namespace


@pytest.fixture(scope="session")
def mnist_idx(tmp_path_factory):
    """Full MNIST as a folder of the four IDX files (Config.mnist_dir), from the shared copy beside the project."""
    import numpy as np
    from shared_data import SHARED_MNIST

    from hgkit.datasets import encode_idx
    from hgkit.datasets.idx import STANDARD_NAMES

    if not SHARED_MNIST.exists():
        pytest.skip(f"the full MNIST source {SHARED_MNIST} is not beside the project")
    folder = tmp_path_factory.mktemp("mnist-idx")
    with np.load(SHARED_MNIST) as d:
        for key, name in STANDARD_NAMES.items():
            (folder / name).write_bytes(encode_idx(d[key]))
    return folder
