"""Models as users write them (hgkit/problem.py TrainState, hgkit/_tree.py split_model): an Equinox MLP and a small
Equinox CNN returned whole from init (their activation functions are static leaves), a flax linen model and a flax
nnx module, each checked in float64 reverse mode against forward mode (1e-9) and against central finite differences
(1e-6), tuned by the loop, and handed back as their own type; for Equinox also populations, checkpoints, implicit
differentiation and the errors."""

from __future__ import annotations

import functools

import equinox as eqx
import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from helpers import finite_differences, rel_err

import hgkit as hg

T = 6
HP = {"lr": jnp.asarray(0.2), "log_wd": jnp.asarray(-3.0)}
RNG = np.random.default_rng(0)
X = jnp.asarray(RNG.normal(size=(12, 4)))
Y = jnp.asarray(RNG.integers(0, 3, 12))
IMAGES = jnp.asarray(RNG.normal(size=(12, 1, 6, 6)))


def cross_entropy(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def l2(model):
    return sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(model) if eqx.is_array(w))


def problem_of(init, logits, optimizer=None):
    """A classification problem whose weight decay exp(log_wd) and learning rate are tuned."""
    return hg.BilevelProblem(
        init=init,
        train_loss=lambda m, hp, b: cross_entropy(logits(m, b[0]), b[1]) + jnp.exp(hp["log_wd"]) * l2(m),
        val_loss=lambda m, hp, b: cross_entropy(logits(m, b[0]), b[1]),
        optimizer=optimizer or hg.optim.momentum("lr", 0.8),
    )


class CNN(eqx.Module):
    conv: eqx.nn.Conv2d
    head: eqx.nn.Linear
    activation: object = eqx.field(static=False)  # a function as a plain (non-static) field: a static leaf for hgkit

    def __init__(self, key):
        k1, k2 = jax.random.split(key)
        self.conv = eqx.nn.Conv2d(1, 2, 3, key=k1, dtype=jnp.float64)
        self.head = eqx.nn.Linear(2 * 4 * 4, 3, key=k2, dtype=jnp.float64)
        self.activation = jax.nn.tanh

    def __call__(self, image):
        return self.head(self.activation(self.conv(image)).reshape(-1))


class Linen(linen.Module):
    @linen.compact
    def __call__(self, x):
        x = jnp.tanh(linen.Dense(6, param_dtype=jnp.float64)(x))
        return linen.Dense(3, param_dtype=jnp.float64)(x)


class NnxMLP(nnx.Module):
    def __init__(self, rngs):
        self.hidden = nnx.Linear(4, 6, param_dtype=jnp.float64, rngs=rngs)
        self.out = nnx.Linear(6, 3, param_dtype=jnp.float64, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


LINEN = Linen()
MODELS = {
    "equinox_mlp": (
        lambda hp, key: eqx.nn.MLP(4, 3, 6, 2, activation=jnp.tanh, key=jax.random.key(1), dtype=jnp.float64),
        lambda m, x: jax.vmap(m)(x),
        X,
    ),
    "equinox_cnn": (lambda hp, key: CNN(jax.random.key(2)), lambda m, x: jax.vmap(m)(x), IMAGES),
    "flax_linen": (
        lambda hp, key: LINEN.init(jax.random.key(3), X)["params"],
        lambda p, x: LINEN.apply({"params": p}, x),
        X,
    ),
    "flax_nnx": (lambda hp, key: NnxMLP(nnx.Rngs(4)), lambda m, x: m(x), X),
}
PROBLEMS = {name: problem_of(init, logits) for name, (init, logits, _) in MODELS.items()}


@functools.cache
def reverse_and_forward(name):
    """Both modes' results at HP, in one compilation per model (shared by the tests)."""
    problem, data = PROBLEMS[name], (MODELS[name][2], Y)

    @jax.jit
    def both(hp):
        run = lambda method: hg.hypergradient_result(problem, hp, T, data, data, method=method)  # noqa: E731
        return run(hg.Reverse()), run(hg.Forward())

    return both(HP)


@pytest.mark.parametrize("name", list(MODELS))
def test_reverse_forward_and_finite_differences_agree(name):
    problem, data = PROBLEMS[name], (MODELS[name][2], Y)
    rev, fwd = reverse_and_forward(name)
    assert int(rev.failure) == int(fwd.failure) == hg.Failure.NONE
    assert rel_err(rev.grads, fwd.grads) < 1e-9

    @jax.jit
    def f(hp):
        s = hg.unroll(problem, hg.initial_state(problem, hp, None), hp, data, 0, T).state
        return hg.objectives(problem, s.params, hp, data)[0]

    assert rel_err(rev.grads, finite_differences(f, HP)) < 1e-6
    assert float(rev.value) == pytest.approx(float(f(HP)), rel=1e-12)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_loop_tunes_the_model(name):
    problem, data = PROBLEMS[name], (MODELS[name][2], Y)
    logits = MODELS[name][1]
    accuracy = {"accuracy": lambda m, hp: jnp.mean(jnp.argmax(logits(m, data[0]), axis=1) == Y)}
    opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(0.05), metrics=accuracy)
    result = opt.run(HP, 2, T, data, data, progress=False)
    assert list(result.history.iteration) == [0, 1] and result.history.accuracy.between(0, 1).all()
    # The first row is the hypergradient's value; the update follows its gradient.
    rev, _ = reverse_and_forward(name)
    assert result.history.val_loss[0] == pytest.approx(float(rev.value), rel=1e-12)
    assert result.history.lr[1] == pytest.approx(float(HP["lr"] - 0.05 * rev.grads["lr"]), rel=1e-12)


def test_equinox_module_keeps_its_functions_and_runs_everywhere(tmp_path):
    init, logits, x = MODELS["equinox_mlp"]
    problem, data = PROBLEMS["equinox_mlp"], (x, Y)
    res, _ = reverse_and_forward("equinox_mlp")
    model = res.state.params
    assert type(model) is eqx.nn.MLP and model.activation is jnp.tanh  # static leaves carried unchanged
    # Only the arrays are trained and given optimizer state.
    velocity = jax.tree_util.tree_leaves(res.state.opt_state)
    assert len(velocity) == len(jax.tree_util.tree_leaves(eqx.filter(init(HP, None), eqx.is_array)))
    # Every method agrees with reverse mode (checkpointing and truncation together: one compilation).
    ref = res.grads
    methods = (
        hg.Reverse(store=hg.Segments(2), truncate=T),
        hg.Reverse(hvp="forward-over-reverse"),
        hg.RealTime(delta=3),
    )
    for method in methods:
        assert rel_err(hg.hypergradient(problem, HP, T, data, data, method=method)[1], ref) < 1e-9, method
    # Populations, warm restarts and checkpoints (the arrays are stored; the functions come from init).
    opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(0.05), warm_restart=True)
    stacked = jax.tree_util.tree_map(lambda v: jnp.stack([v, v + 0.1]), HP)
    pop = opt.run(stacked, 2, T, data, data, progress=False, population=2)
    alone = opt.run(jax.tree_util.tree_map(lambda v: v[1], stacked), 2, T, data, data, progress=False)
    np.testing.assert_allclose(pop.history[pop.history.member == 1].val_loss, alone.history.val_loss, rtol=1e-10)
    first = opt.run(HP, 2, T, data, data, progress=False, checkpoint_dir=tmp_path)
    resumed = opt.run(HP, 3, T, data, data, progress=False, checkpoint_dir=tmp_path)
    straight = opt.run(HP, 3, T, data, data, progress=False)
    assert list(resumed.history.val_loss[:2]) == list(first.history.val_loss)
    assert list(resumed.history.val_loss) == list(straight.history.val_loss)
    assert type(resumed.state.params) is eqx.nn.MLP and resumed.state.params.activation is jnp.tanh


@pytest.mark.parametrize("name", ["equinox_mlp", "equinox_cnn", "flax_nnx", "flax_linen"])
def test_the_model_comes_back_as_written(name):
    """The trained model is the user's own type, equal to the model rebuilt from the same arrays: nothing wraps it,
    in the pure form (also through jax.jit), in the loop's result and in what metrics receive."""
    init, logits, x = MODELS[name]
    res, _ = reverse_and_forward(name)  # jitted: the static part travels in the state's structure
    model, written = res.state.params, init(HP, None)
    assert type(model) is type(written)
    arrays = jax.tree_util.tree_leaves(res.state)[: len(jax.tree_util.tree_leaves(eqx.filter(written, eqx.is_array)))]
    rebuilt = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(eqx.filter(written, eqx.is_array)), arrays)
    rebuilt = eqx.combine(rebuilt, written)
    assert bool(eqx.tree_equal(model, rebuilt))
    assert not bool(eqx.tree_equal(model, written))  # it was trained
    np.testing.assert_allclose(logits(model, x), logits(rebuilt, x), rtol=1e-14)
    if name == "flax_nnx":
        # the nnx module's own API works on it as on the one init built
        assert type(nnx.state(model)) is type(nnx.state(written))
    seen = []
    opt = hg.HyperOptimizer(PROBLEMS[name], hyper_optimizer=optax.sgd(0.0), metrics={
        "kind": lambda m, hp: seen.append(type(m)) or jnp.asarray(0.0)})  # fmt: skip
    result = opt.run(HP, 1, T, (x, Y), (x, Y), progress=False)
    assert seen and set(seen) == {type(written)}
    assert type(result.state.params) is type(written) and bool(eqx.tree_equal(result.state.params, model))


def test_implicit_differentiation_of_an_equinox_model():
    # A convex problem (linear softmax regression with weight decay) trained to convergence: implicit
    # differentiation's answer is then the derivative of the minimiser, which long reverse mode approaches.
    problem = problem_of(
        lambda hp, key: eqx.nn.Linear(4, 3, key=jax.random.key(5), dtype=jnp.float64),
        lambda m, x: jax.vmap(m)(x),
        optimizer=hg.optim.sgd(0.5),
    )
    hp = {"lr": HP["lr"], "log_wd": jnp.asarray(-1.0)}
    _, implicit = hg.hypergradient(problem, hp, 400, (X, Y), (X, Y), method=hg.Implicit(tol=1e-10))
    _, unrolled = hg.hypergradient(problem, hp, 400, (X, Y), (X, Y))
    assert float(implicit["lr"]) == 0.0  # the minimiser does not depend on the learning rate
    assert float(implicit["log_wd"]) == pytest.approx(float(unrolled["log_wd"]), rel=1e-6)


def test_a_leaf_that_is_neither_array_nor_static_is_named():
    problem = problem_of(
        lambda hp, key: {"w": jnp.zeros((4, 3)), "notes": ["a list", "is a node"], "bad": {1, 2}},
        lambda p, x: x @ p["w"],
    )
    with pytest.raises(TypeError, match=r"params\['bad'\] is a set, neither an array nor a static"):
        hg.hypergradient(problem, HP, T, (X, Y), (X, Y))


def test_readme_equinox_example_runs_as_written():
    """The README's Equinox block, executed verbatim; its hypergradient is reverse mode's and agrees with forward."""
    from helpers import readme_block

    namespace: dict = {}
    exec(compile(readme_block("## Equinox and Flax models"), "README.md", "exec"), namespace)
    problem, hparams, grads = namespace["problem"], namespace["hparams"], namespace["grads"]
    assert set(grads) == {"lr", "log_wd"} and all(np.isfinite(float(g)) and float(g) != 0 for g in grads.values())
    data = (namespace["x_train"], namespace["y_train"]), (namespace["x_val"], namespace["y_val"])
    _, forward = hg.hypergradient(problem, hparams, 50, *data, method=hg.Forward(), key=jax.random.key(0))
    assert rel_err(grads, forward) < 1e-6
