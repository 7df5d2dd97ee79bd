"""Every mode × inner optimizer × kind of hyperparameter, in float64, against central finite differences
(relative 1e-6) and mode against mode (1e-9).

One test per inner optimizer checks every kind of hyperparameter that applies to it (47 cases in all), each
failing case named. Compilation is the cost of these checks, not execution: each optimizer's cases are computed in
one compiled program (see :func:`computed`), 6 compilations for the whole file instead of about 5 per case.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import QUICK_TO_COMPILE, finite_difference_points, mlp, mlp_init, rel_err, toy_data, tree_l2

import hgkit as hg

T = 12
X, Y = toy_data(n=12, seed=0)
XV, YV = toy_data(n=10, seed=5)
N = X.shape[0]
P0 = mlp_init()
FULL_BATCH = (X, Y, jnp.arange(N))
VAL = (XV, YV, jnp.arange(XV.shape[0]))


def minibatches(step):
    """8 of the 12 examples, a different window at every step (the step is a traced int32)."""
    idx = (4 * step + jnp.arange(8)) % N
    return X[idx], Y[idx], idx


KINDS = [
    "lr",
    "schedule",
    "momentum",
    "adam_b1",
    "weight_decay",
    "weight_decay_per_param",
    "example_weights",
    "init",
    "model_param",
]
OPTIMIZERS = ["sgd", "momentum", "nesterov", "adam", "optax_sgd", "optax_adam"]
APPLIES = {"momentum": {"momentum", "nesterov", "optax_sgd"}, "adam_b1": {"adam", "optax_adam"}}


def make_hparams(kind, opt):
    base_lr = 0.05 if "adam" in opt else 0.3
    rng = np.random.default_rng(3)
    hp = {
        "lr": {"lr": jnp.asarray(base_lr), "schedule": jnp.asarray(base_lr * (1 + 0.3 * rng.random(T)))},
        "momentum": {"mu": jnp.asarray(0.7)},
        "adam_b1": {"b1": jnp.asarray(0.85)},
        "weight_decay": {"wd": jnp.asarray(0.02)},
        "weight_decay_per_param": {"wd": jax.tree_util.tree_map(lambda p: 0.01 + 0.02 * jnp.ones_like(p), P0)},
        "example_weights": {"ex_w": jnp.asarray(0.5 + rng.random(N))},
        "init": {"w0": P0},
        "model_param": {"scale": jnp.asarray(1.3)},
    }
    if kind == "schedule":
        return {"lr": hp["lr"]["schedule"]}
    return hp[kind] if kind != "lr" else {"lr": hp["lr"]["lr"]}


def make_optimizer(kind, opt):
    base_lr = 0.05 if "adam" in opt else 0.3
    lr = {"lr": "lr", "schedule": lambda hp, t: hp["lr"][t]}.get(kind, base_lr)
    mu = "mu" if kind == "momentum" else 0.8
    b1 = "b1" if kind == "adam_b1" else 0.9
    if opt == "sgd":
        return hg.optim.sgd(lr)
    if opt == "momentum":
        return hg.optim.momentum(lr, mu)
    if opt == "nesterov":
        return hg.optim.momentum(lr, mu, nesterov=True)
    if opt == "adam":
        return hg.optim.adam(lr, b1=b1)
    if opt == "optax_sgd":  # the inject_hyperparams form of the adapter
        tx = optax.inject_hyperparams(optax.sgd)(learning_rate=base_lr, momentum=0.8)
        tuned = {"learning_rate": lr} if kind in ("lr", "schedule") else {}
        if kind == "momentum":
            tuned["momentum"] = "mu"
        return hg.optim.from_optax(tx, **tuned)
    if opt == "optax_adam":  # the factory form; eps_root keeps sqrt differentiable at 0
        return hg.optim.from_optax(lambda lr, b1: optax.adam(lr, b1=b1, eps_root=1e-16), lr=lr, b1=b1)
    raise AssertionError(opt)


def make_problem(kind, opt):
    def scale(hp):
        return hp["scale"] if kind == "model_param" else 1.0

    def train_loss(params, hp, batch):
        x, y, idx = batch
        r2 = (mlp(params, x, scale(hp)) - y) ** 2
        loss = jnp.mean(hp["ex_w"][idx] * r2) if kind == "example_weights" else jnp.mean(r2)
        if kind == "weight_decay":
            loss = loss + hp["wd"] * tree_l2(params)
        if kind == "weight_decay_per_param":
            loss = loss + sum(
                jnp.sum(w * p**2)
                for w, p in zip(jax.tree_util.tree_leaves(hp["wd"]), jax.tree_util.tree_leaves(params), strict=True)
            )
        return loss

    def val_loss(params, hp, batch):
        x, y, _ = batch
        return jnp.mean((mlp(params, x, scale(hp)) - y) ** 2)

    def init(hp, key):
        return hp["w0"] if kind == "init" else P0

    return hg.BilevelProblem(init=init, train_loss=train_loss, val_loss=val_loss, optimizer=make_optimizer(kind, opt))


def trained_objective(problem, hparams, train_data):
    """f(λ) by plain training (no hypergradient machinery): the function finite differences probe."""

    def step(state, t):
        data = train_data(t) if callable(train_data) else train_data
        return hg.train_step(problem, state, hparams, data, t)[0], None

    state, _ = jax.lax.scan(step, hg.initial_state(problem, hparams, None), jnp.arange(T, dtype=jnp.int32))
    return problem.val_loss(state.params, hparams, VAL)


CASES = [(k, o) for k in KINDS for o in OPTIMIZERS if o in APPLIES.get(k, OPTIMIZERS)]
METHODS = {
    "reverse": hg.Reverse(),
    "reverse_fr": hg.Reverse(hvp="forward-over-reverse"),
    "forward": hg.Forward(),
    "realtime": hg.RealTime(delta=4),
}


def train_data_for(opt):
    """Minibatches for some optimizers, the full batch for others: both forms of train_data are covered."""
    return minibatches if opt in ("momentum", "adam", "optax_sgd") else FULL_BATCH


@functools.cache
def computed(opt):
    """For every kind of hyperparameter with inner optimizer ``opt``: the four methods' results, f(λ) by plain
    training, and f at every point the finite differences probe, all in one compiled call.

    One program for the whole group: XLA compiles it in about half the time it takes to compile the 5 programs of
    each case separately (4 methods through hg.hypergradient, and the objective), and the finite-difference points
    are one vmapped evaluation instead of 4 calls per coordinate.
    """
    kinds = [k for k, o in CASES if o == opt]
    problems = {k: make_problem(k, opt) for k in kinds}
    hparams = {k: make_hparams(k, opt) for k in kinds}
    probes = {k: finite_difference_points(hparams[k]) for k in kinds}
    train_data = train_data_for(opt)

    @functools.partial(jax.jit, compiler_options=QUICK_TO_COMPILE)
    def compute(hparams, points):
        out = {}
        for k in kinds:
            results = {
                name: hg.hypergradient_result(problems[k], hparams[k], T, train_data, VAL, method=method)
                for name, method in METHODS.items()
            }
            f = functools.partial(trained_objective, problems[k], train_data=train_data)
            out[k] = (results, f(hparams[k]), jax.vmap(f)(points[k]))
        return out

    out = jax.device_get(compute(hparams, {k: points for k, (points, _) in probes.items()}))
    return {k: (hparams[k], results, ref, probes[k][1](values)) for k, (results, ref, values) in out.items()}


def check_case(hparams, results, value_ref, fd):
    grads = {}
    for name, res in results.items():
        g = res.grads
        assert int(res.failure) == hg.Failure.NONE, (name, hg.Failure(int(res.failure)))
        assert jax.tree_util.tree_structure(g) == jax.tree_util.tree_structure(hparams)
        assert all(
            a.dtype == b.dtype and a.shape == b.shape
            for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(hparams), strict=True)
        )
        np.testing.assert_allclose(res.value, value_ref, rtol=1e-12)
        assert rel_err(g, fd) < 1e-6, (name, rel_err(g, fd))
        grads[name] = g
    for name in ("reverse_fr", "forward", "realtime"):
        assert rel_err(grads[name], grads["reverse"]) < 1e-9, (name, rel_err(grads[name], grads["reverse"]))


@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_matches_finite_differences_and_modes_agree(opt):
    """Each kind of hyperparameter that applies to ``opt`` is checked, and every failing one reported."""
    failed = []
    for kind, case in computed(opt).items():
        try:
            check_case(*case)
        except AssertionError as e:
            failed.append(f"{kind}-{opt}: {e}")
    assert not failed, "\n".join(failed)
