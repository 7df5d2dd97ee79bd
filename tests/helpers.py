"""Small problems and checking tools shared by the tests."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def toy_data(n=12, d=3, seed=0, dtype=jnp.float64):
    """A tiny regression set with a nonlinear target, as (x, y)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = np.tanh(x @ rng.normal(size=d)) + 0.1 * rng.normal(size=n)
    return jnp.asarray(x, dtype), jnp.asarray(y, dtype)


def mlp_init(d=3, hidden=4, seed=1, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    return {
        "W1": jnp.asarray(rng.normal(size=(d, hidden)) / np.sqrt(d), dtype),
        "b1": jnp.zeros(hidden, dtype),
        "W2": jnp.asarray(rng.normal(size=(hidden,)) / np.sqrt(hidden), dtype),
    }


def mlp(params, x, scale=1.0):
    h = jnp.tanh(scale * x @ params["W1"] + params["b1"])
    return h @ params["W2"]


def tree_l2(tree):
    return sum(jnp.sum(x**2) for x in jax.tree_util.tree_leaves(tree))


def finite_differences(f, hparams, h=1e-4):
    """Central differences of a scalar f at hparams, one coordinate at a time (float64 only).

    Richardson-extrapolated: (4 D(h/2) − D(h)) / 3 with D the central difference, so the truncation error is
    O(h⁴) (≈1e-16 here) and the rounding error about ε·|f|/h (≈1e-12): far below the 1e-6 the tests ask.
    """
    leaves, treedef = jax.tree_util.tree_flatten(hparams)

    def at(i, moved, shape, dtype):
        new_leaves = list(leaves)
        new_leaves[i] = jnp.asarray(moved.reshape(shape), dtype)
        return float(f(jax.tree_util.tree_unflatten(treedef, new_leaves)))

    out = []
    for i, leaf in enumerate(leaves):
        x = np.asarray(leaf, dtype=np.float64).reshape(-1)
        g = np.zeros_like(x)
        for j in range(x.size):
            step = h * max(1.0, abs(x[j]))
            central = []
            for s in (step, step / 2):
                up, down = x.copy(), x.copy()
                up[j] += s
                down[j] -= s
                central.append(
                    (at(i, up, np.shape(leaf), leaf.dtype) - at(i, down, np.shape(leaf), leaf.dtype)) / (2 * s)
                )
            g[j] = (4 * central[1] - central[0]) / 3
        out.append(g.reshape(np.shape(leaf)))
    return jax.tree_util.tree_unflatten(treedef, out)


def flat(tree):
    return np.concatenate([np.asarray(x, np.float64).reshape(-1) for x in jax.tree_util.tree_leaves(tree)])


def rel_err(a, b):
    """‖a − b‖ / ‖b‖ over whole pytrees."""
    a, b = flat(a), flat(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def readme_block(after: str) -> str:
    """The first ```python block of the README after the text ``after`` (a heading or a marker)."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    return text.split(after, 1)[1].split("```python", 1)[1].split("```", 1)[0]
