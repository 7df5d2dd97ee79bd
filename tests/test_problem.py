"""The problem and its dynamics (hgkit/problem.py): what BilevelProblem refuses, and the shared numerics every
method is built on (unroll, outer_derivatives) checked against hand-written steps."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hgkit as hg
from hgkit.problem import outer_derivatives

PROBLEM = hg.BilevelProblem(
    init=lambda hp, key: jnp.zeros(2),
    train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
    val_loss={"val": lambda w, hp, b: jnp.sum((w - 2 * b) ** 2), "size": lambda w, hp, b: hp["wd"] * jnp.sum(w)},
    optimizer=hg.optim.sgd("lr"),
    follows={"lr": "val", "wd": "size"},
)
HP = {"lr": jnp.asarray(0.1), "wd": jnp.asarray(0.3)}
B = jnp.asarray([1.0, -1.0])


def test_an_optax_transformation_as_optimizer_is_refused_with_the_wrapper_to_use():
    # Defect: it passed the constructor and failed later with "init_fn() takes 1 positional argument".
    for tx in (optax.sgd(0.1), optax.adam(1e-3), optax.chain(optax.clip(1.0), optax.sgd(0.1))):
        with pytest.raises(TypeError, match=r"optax transformation.*hg\.optim\.from_optax\(optax\.sgd\(0\.1\)\)"):
            hg.BilevelProblem(lambda hp, k: jnp.zeros(1), lambda w, h, b: 0.0, lambda w, h, b: 0.0, tx)
    with pytest.raises(TypeError, match="must be an hgkit.optim.Optimizer"):
        hg.BilevelProblem(lambda hp, k: jnp.zeros(1), lambda w, h, b: 0.0, lambda w, h, b: 0.0, ("init", "update"))
    # The wrapped transformation works.
    wrapped = hg.BilevelProblem(
        lambda hp, k: jnp.zeros(1),
        lambda w, h, b: jnp.sum((w - 1) ** 2),
        lambda w, h, b: jnp.sum(w),
        hg.optim.from_optax(optax.sgd(0.1)),
    )
    s = hg.unroll(wrapped, hg.initial_state(wrapped, {}, None), {}, None, 0, 1).state
    np.testing.assert_allclose(s.params, [0.2], rtol=1e-12)


def test_unroll_is_training_by_hand():
    s0 = hg.initial_state(PROBLEM, HP, None)
    out = jax.jit(lambda s: hg.unroll(PROBLEM, s, HP, lambda t: B * (t + 1.0), 2, 3, store=True))(s0)
    w, stored, losses = jnp.zeros(2), [], []
    for t in (2, 3, 4):
        batch = B * (t + 1.0)
        stored.append(w)
        losses.append(jnp.sum((w - batch) ** 2) + HP["wd"] * jnp.sum(w**2))
        w = w - HP["lr"] * (2 * (w - batch) + 2 * HP["wd"] * w)
    np.testing.assert_allclose(out.state.params, w, rtol=1e-12)
    np.testing.assert_allclose(out.states.params, jnp.stack(stored), rtol=1e-12)
    np.testing.assert_allclose(out.losses, jnp.stack(losses), rtol=1e-12)
    assert int(out.diverged_at) == -1
    assert hg.unroll(PROBLEM, s0, HP, B, 0, 2).states is None  # nothing stored unless asked
    blown = hg.unroll(PROBLEM, s0, {"lr": jnp.asarray(1e200), "wd": HP["wd"]}, B, 0, 5)
    assert int(blown.diverged_at) == 1  # w_1 is huge but finite; w_2 overflows


def test_outer_derivatives_one_row_per_objective():
    w = jnp.asarray([0.5, 2.0])
    values, dE_dw, dE_dh = outer_derivatives(PROBLEM, hg.TrainState(w, ()), HP, {"val": B, "size": B})
    np.testing.assert_allclose(values, [jnp.sum((w - 2 * B) ** 2), HP["wd"] * jnp.sum(w)], rtol=1e-12)
    np.testing.assert_allclose(dE_dw, jnp.stack([2 * (w - 2 * B), HP["wd"] * jnp.ones(2)]), rtol=1e-12)
    np.testing.assert_allclose(dE_dh["wd"], [0.0, jnp.sum(w)], rtol=1e-12)
    np.testing.assert_allclose(dE_dh["lr"], [0.0, 0.0])
