"""Small problems and checking tools shared by the tests."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg

# For the tests' own compiled programs, which run for milliseconds: XLA without LLVM's optimizations compiles them in
# about a quarter less time. The arithmetic is the same IEEE float64/float32 (no fast math at any level), to
# rounding in the order of operations, far below every tolerance the tests use.
QUICK_TO_COMPILE = {"xla_backend_optimization_level": 0}


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


def finite_difference_points(hparams, h=1e-4):
    """The points central finite differences probe, and how their values give the gradient (float64 only).

    Returns ``(points, gradient)``: ``points`` is ``hparams`` with every leaf stacked along a new leading axis, four
    points per scalar coordinate (so ``jax.vmap(f)(points)`` evaluates them all in one call), and
    ``gradient(values)`` turns the values of f there into the gradient, a pytree like ``hparams``.

    Richardson-extrapolated: (4 D(h/2) − D(h)) / 3 with D the central difference, so the truncation error is
    O(h⁴) (≈1e-16 here) and the rounding error about ε·|f|/h (≈1e-12): far below the 1e-6 the tests ask.
    """
    leaves, treedef = jax.tree_util.tree_flatten(hparams)
    flat_leaves = [np.asarray(leaf, dtype=np.float64).reshape(-1) for leaf in leaves]
    moves = []  # (leaf, coordinate, its value there), in the order of the points
    steps = []  # (leaf, coordinate, s) for each central difference, two per coordinate
    for i, x in enumerate(flat_leaves):
        for j in range(x.size):
            step = h * max(1.0, abs(x[j]))
            for s in (step, step / 2):
                moves += [(i, j, x[j] + s), (i, j, x[j] - s)]
                steps.append(s)
    stacked = []
    for i, (leaf, x) in enumerate(zip(leaves, flat_leaves, strict=True)):
        rows = np.tile(x, (len(moves), 1))
        for k, (which, j, value) in enumerate(moves):
            if which == i:
                rows[k, j] = value
        stacked.append(jnp.asarray(rows.reshape((len(moves), *np.shape(leaf))), leaf.dtype))
    points = jax.tree_util.tree_unflatten(treedef, stacked)

    def gradient(values):
        values = np.asarray(values, dtype=np.float64).reshape(-1, 2)
        central = (values[:, 0] - values[:, 1]) / (2 * np.asarray(steps))  # D(h), D(h/2), D(h), D(h/2), ...
        g = (4 * central[1::2] - central[0::2]) / 3
        out, at = [], 0
        for leaf, x in zip(leaves, flat_leaves, strict=True):
            out.append(g[at : at + x.size].reshape(np.shape(leaf)))
            at += x.size
        return jax.tree_util.tree_unflatten(treedef, out)

    return points, gradient


def finite_differences(f, hparams, h=1e-4):
    """Central differences of a scalar f at hparams, f called at one point at a time (float64 only; see
    :func:`finite_difference_points`, whose points and extrapolation these are)."""
    points, gradient = finite_difference_points(hparams, h)
    n = jax.tree_util.tree_leaves(points)[0].shape[0]
    return gradient([float(f(jax.tree_util.tree_map(lambda x, k=k: x[k], points))) for k in range(n)])


# ----- the optimization loop's problem, shared by the loop's tests ------------------------------------------------
# One instance of each object: the loop's compiled step is cached on the identity of the problem, the optax
# transformation, the constraints and the metrics, so tests (and test files) that use the same ones share it.


def loop_problem(counter=None):
    """A tiny MLP regression: momentum with tuned lr and mu, and an L2 penalty wd; the init depends on the key.

    Returns ``(problem, train, val)``. ``counter`` (a list) gets an entry each time the training loss is traced.
    """
    x, y = toy_data(n=16, seed=0)
    xv, yv = toy_data(n=16, seed=1)

    def init(hp, key):
        w = mlp_init()
        return w if key is None else {**w, "W1": w["W1"] + 0.3 * jax.random.normal(key, w["W1"].shape, w["W1"].dtype)}

    def train_loss(w, hp, batch):
        if counter is not None:
            counter.append(1)
        xb, yb = batch
        return jnp.mean((mlp(w, xb) - yb) ** 2) + hp["wd"] * tree_l2(w)

    def val_loss(w, hp, batch):
        return jnp.mean((mlp(w, batch[0]) - batch[1]) ** 2)

    problem = hg.BilevelProblem(init, train_loss, val_loss, hg.optim.momentum(lr="lr", momentum="mu"))
    return problem, (x, y), (xv, yv)


PROBLEM, TRAIN, VAL = loop_problem()
HP = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5), "wd": jnp.asarray(0.01)}
KEY = jax.random.key(0)
LOG = hg.constraints.log()
REVERSE = hg.Reverse()


@functools.partial(jax.jit, static_argnums=(0, 2, 5))
def compiled_result(problem, hparams, T, train_data, val_data, method, key):
    return hg.hypergradient_result(problem, hparams, T, train_data, val_data, method=method, key=key)


def reference(problem, hparams, T, train_data, val_data, method=REVERSE, key=None):
    """hg.hypergradient_result, compiled once per problem, T and method: what the loop's rows are checked against.

    (Every argument is passed on by position, so that calls with and without the defaults share a compilation.)
    """
    return compiled_result(problem, hparams, T, train_data, val_data, method, key)


def without_wall_time(history):
    return history.drop(columns="wall_time")


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


class CompileCounter:
    """Counts XLA compilations while active (JAX's public monitoring events): ``with CompileCounter() as c: ...``."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __enter__(self):
        self.count = 0
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def _listen(self, event, duration, **kwargs):
        if event == self.EVENT:
            self.count += 1

    def __exit__(self, *exc):
        jax.monitoring.unregister_event_duration_listener(self._listen)
        return False
