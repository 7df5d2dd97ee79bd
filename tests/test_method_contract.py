"""The method contract (hgkit/hypergrad/base.py): one check for both entry points, and methods of one's own — a
restarting one and an online one — working in hg.hypergradient and in the loop like the built-in ones."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

import hgkit as hg

PROBLEM = hg.BilevelProblem(
    init=lambda hp, key: jnp.zeros(3),
    train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
    val_loss=lambda w, hp, b: jnp.sum((w - 0.5 * b) ** 2),
    optimizer=hg.optim.momentum("lr", 0.5),
)
HP = {"lr": jnp.asarray(0.1), "wd": jnp.asarray(0.2)}
DATA = jnp.asarray([1.0, -2.0, 0.5])


@dataclasses.dataclass(frozen=True)
class PlainReverse(hg.HypergradientMethod):
    """jax.vjp through the whole unrolled run: the simplest method there is, written against the contract."""

    def run(self, problem, hparams, T, train_data, val_data, *, key=None, init_state=None):
        def f(hp):
            s0 = hg.initial_state(problem, hp, key) if init_state is None else init_state
            out = hg.unroll(problem, s0, hp, train_data, 0, T)
            return hg.objectives(problem, out.state.params, hp, val_data), out

        values, vjp, out = jax.vjp(f, hparams, has_aux=True)
        (grads,) = jax.vmap(vjp)(jnp.eye(values.shape[0], dtype=values.dtype))
        from hgkit.hypergrad.base import result

        return result(problem, hparams, values, grads, out.state, out.losses, out.diverged_at)


@dataclasses.dataclass(frozen=True)
class OneStepBack(hg.OnlineMethod):
    """An online method of one's own: the hypergradient of the last ``delta`` steps only (the state at their start
    held constant), within one training run."""

    delta: int

    def init(self, problem, hparams, *, key=None, init_state=None):
        return hg.initial_state(problem, hparams, key) if init_state is None else init_state

    def step(self, problem, carry, hparams, train_data, val_data):
        res = PlainReverse().run(problem, hparams, self.delta, train_data, val_data, init_state=carry)
        return res.state, res


def test_the_one_method_check_serves_both_entry_points():
    class NotAMethod:
        def run(self, *args, **kwargs):
            return None

    @dataclasses.dataclass  # not frozen: not hashable, so it cannot be a static argument of jit
    class Mutable(hg.HypergradientMethod):
        def run(self, *args, **kwargs):
            return None

    @dataclasses.dataclass(frozen=True)
    class NoDelta(hg.OnlineMethod):
        def init(self, *args, **kwargs):
            return None

        def step(self, *args, **kwargs):
            return None

    for bad, match in [
        ("reverse", "method must be a hypergradient method"),
        (NotAMethod(), "subclass of hg.HypergradientMethod"),
        (Mutable(), "not hashable"),
        (NoDelta(), "needs a positive int attribute delta"),
    ]:
        with pytest.raises(TypeError, match=match):
            hg.hypergradient(PROBLEM, HP, 5, DATA, DATA, method=bad)
        with pytest.raises(TypeError, match=match):
            hg.HyperOptimizer(PROBLEM, method=bad)
    with pytest.raises(TypeError, match="abstract"):
        hg.HypergradientMethod()


def test_a_method_of_ones_own_agrees_with_reverse_mode():
    value, grads = hg.hypergradient(PROBLEM, HP, 7, DATA, DATA, method=PlainReverse())
    ref_value, ref = hg.hypergradient(PROBLEM, HP, 7, DATA, DATA)
    assert float(value) == pytest.approx(float(ref_value), rel=1e-12)
    for k in HP:
        np.testing.assert_allclose(grads[k], ref[k], rtol=1e-10)
    sgd = optax.sgd(0.05)
    a, b = (
        hg.HyperOptimizer(PROBLEM, method=m, hyper_optimizer=sgd).run(HP, 3, 7, DATA, DATA, progress=False)
        for m in (PlainReverse(), hg.Reverse())
    )
    cols = ["val_loss", "grad_norm", "lr", "wd"]
    pd.testing.assert_frame_equal(a.history[cols], b.history[cols], rtol=1e-10)
    assert a.history.attrs["method"] == "PlainReverse"


def test_an_online_method_of_ones_own_runs_one_training_run_in_the_loop():
    T, delta = 12, 4
    sgd = optax.sgd(0.05)
    result = hg.HyperOptimizer(PROBLEM, method=OneStepBack(delta), hyper_optimizer=sgd).run(
        HP, None, T, DATA, DATA, progress=False
    )
    assert list(result.history.inner_steps) == [4, 8, 12]  # one run of T steps, λ updated every Δ
    # By hand: chunk i trains Δ steps from where chunk i-1 ended, under λ_i, and λ descends the chunk's gradient.
    chunk = jax.jit(lambda hp, state: PlainReverse().run(PROBLEM, hp, delta, DATA, DATA, init_state=state))
    hp, state = HP, hg.initial_state(PROBLEM, HP, None)
    for i in range(T // delta):
        res = chunk(hp, state)
        assert result.history.val_loss[i] == pytest.approx(float(res.value), rel=1e-12)
        state = res.state
        hp = jax.tree.map(lambda h, g: h - 0.05 * g, hp, res.grads)
    for k in HP:
        np.testing.assert_allclose(result.hparams[k], hp[k], rtol=1e-12)
    # Its run() (fixed λ, T/Δ steps) is the contract's: the losses of every step, the last step's gradient.
    ran = jax.jit(lambda hp: OneStepBack(delta).run(PROBLEM, hp, T, DATA, DATA))(HP)
    assert ran.train_losses.shape == (T,)
