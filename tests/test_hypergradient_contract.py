"""The rest of the core contract: closed forms, compilation, dtypes, several objectives, the real-time engine,
warm starts, and refusals of bad input."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import QUICK_TO_COMPILE, CompileCounter, finite_differences, mlp, mlp_init, rel_err, toy_data, tree_l2

import hgkit as hg

ALL_METHODS = [hg.Reverse(), hg.Reverse(hvp="forward-over-reverse"), hg.Forward(), hg.RealTime(delta=5)]
METHOD_IDS = ["reverse", "reverse_fr", "forward", "realtime"]

# ----- a quadratic whose hypergradient has a closed form ------------------------------------------------------
H = jnp.asarray([0.5, 1.0, 2.0, 3.0])  # curvatures
A = jnp.asarray([1.0, -2.0, 0.5, 3.0])  # minimiser of the training loss
B = jnp.asarray([0.0, -1.0, 1.0, 2.0])  # target of the validation loss
W0 = jnp.asarray([2.0, 0.0, -1.0, 1.0])


def quadratic_problem(optimizer):
    return hg.BilevelProblem(
        init=lambda hp, key: W0,
        train_loss=lambda w, hp, batch: 0.5 * jnp.sum(H * (w - A) ** 2),
        val_loss=lambda w, hp, batch: 0.5 * jnp.sum((w - B) ** 2),
        optimizer=optimizer,
    )


def all_at_once(problem, hparams, T, train_data, val_data, methods):
    """hg.hypergradient_result of every method in ``methods``, in one compiled call, on the host.

    A test's cost is compilation: one program holding several computations compiles in about half the time of a
    program for each. Failures come back as data; :func:`succeeded` checks them.
    """
    fn = jax.jit(
        lambda hp: [hg.hypergradient_result(problem, hp, T, train_data, val_data, method=m) for m in methods],
        compiler_options=QUICK_TO_COMPILE,
    )
    return jax.device_get(fn(hparams))


def succeeded(result, what=""):
    """The result's grads after checking that it reports no failure (what hg.hypergradient would raise on)."""
    assert int(result.failure) == hg.Failure.NONE, (what, hg.Failure(int(result.failure)))
    return result.grads


def test_closed_form_learning_rate():
    """w_T = a + (1 − ηh)^T (w_0 − a), so dE/dη = Σ (w_T − b) · (−T h (1 − ηh)^{T−1}) (w_0 − a); every method."""
    T, eta = 20, 0.3
    h, a, b, w0 = (np.asarray(v) for v in (H, A, B, W0))
    w_T = a + (1 - eta * h) ** T * (w0 - a)
    exact = np.sum((w_T - b) * (-T * h * (1 - eta * h) ** (T - 1)) * (w0 - a))
    problem = quadratic_problem(hg.optim.sgd("lr"))
    results = all_at_once(problem, {"lr": jnp.asarray(eta)}, T, (), (), ALL_METHODS)
    for name, res in zip(METHOD_IDS, results, strict=True):
        np.testing.assert_allclose(res.value, 0.5 * np.sum((w_T - b) ** 2), rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(succeeded(res, name)["lr"], exact, rtol=1e-10, err_msg=name)


def test_closed_form_schedule():
    """With a schedule η_1..η_T: dE/dη_t = Σ (w_T − b) · (−h) Π_{s≠t} (1 − η_s h) (w_0 − a); reverse and forward."""
    T = 15
    etas = np.linspace(0.1, 0.4, T)
    h, a, b, w0 = (np.asarray(v) for v in (H, A, B, W0))
    factors = 1 - etas[:, None] * h[None, :]  # (T, 4)
    w_T = a + np.prod(factors, axis=0) * (w0 - a)
    others = np.stack([np.prod(np.delete(factors, t, axis=0), axis=0) for t in range(T)])
    exact = np.sum((w_T - b) * (-h) * others * (w0 - a), axis=1)
    problem = quadratic_problem(hg.optim.sgd(lambda hp, t: hp["lr"][t]))
    results = all_at_once(problem, {"lr": jnp.asarray(etas)}, T, (), (), [hg.Reverse(), hg.Forward()])
    for name, res in zip(["reverse", "forward"], results, strict=True):
        np.testing.assert_allclose(succeeded(res, name)["lr"], exact, rtol=1e-10, err_msg=name)


# ----- compilation ------------------------------------------------------------------------------------------


def test_new_hyperparameter_values_do_not_recompile():
    problem = quadratic_problem(hg.optim.momentum("lr", "mu"))
    for method in (hg.Reverse(), hg.Forward()):
        hg.hypergradient(
            problem, {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5)}, T=7, train_data=(), val_data=(), method=method
        )
        with CompileCounter() as compiles:
            for lr in (0.2, 0.05):
                hg.hypergradient(
                    problem, {"lr": jnp.asarray(lr), "mu": jnp.asarray(0.3)}, T=7, train_data=(), val_data=(),
                    method=method,
                )  # fmt: skip
        assert compiles.count == 0


# ----- dtypes -------------------------------------------------------------------------------------------------


def small_mlp_problem(dtype, optimizer):
    x, y = toy_data(dtype=dtype)
    p0 = mlp_init(dtype=dtype)
    problem = hg.BilevelProblem(
        init=lambda hp, key: p0,
        train_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2) + hp["wd"] * tree_l2(p),
        val_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2),
        optimizer=optimizer,
    )
    return problem, (x, y), (x[:6] * 1.1, y[:6])


def test_float32_is_honoured():
    """float32 in, float32 out, close to the float64 result; every method.

    Tolerance 1e-4 relative: float32 rounding (ε ≈ 6e-8) accumulates over 20 steps of the state and the adjoint
    and is amplified by the conditioning of the run; measured differences are about 1e-6.
    """
    hp64 = {"lr": jnp.asarray(0.3), "mu": jnp.asarray(0.6), "wd": jnp.asarray(0.01)}
    hp32 = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), hp64)
    p64, train64, val64 = small_mlp_problem(jnp.float64, hg.optim.momentum("lr", "mu"))
    p32, train32, val32 = small_mlp_problem(jnp.float32, hg.optim.momentum("lr", "mu"))

    @functools.partial(jax.jit, compiler_options=QUICK_TO_COMPILE)
    def both(hp64, hp32):
        return [
            (
                hg.hypergradient_result(p64, hp64, 20, train64, val64, method=method),
                hg.hypergradient_result(p32, hp32, 20, train32, val32, method=method),
            )
            for method in ALL_METHODS
        ]

    for name, (r64, r32) in zip(METHOD_IDS, jax.device_get(both(hp64, hp32)), strict=True):
        for dtype, res in ((np.float64, r64), (np.float32, r32)):
            assert res.value.dtype == dtype, name
            assert all(g.dtype == dtype for g in jax.tree_util.tree_leaves(succeeded(res, name))), name
        assert rel_err(r32.grads, r64.grads) < 1e-4, name


def test_mixed_dtypes_are_refused_not_cast():
    problem, train, val = small_mlp_problem(jnp.float32, hg.optim.sgd("lr"))
    with pytest.raises(TypeError, match="keep the state's structure, shapes and dtypes"):
        hg.hypergradient(
            problem,
            {"lr": jnp.asarray(0.1, jnp.float64), "wd": jnp.asarray(0.0, jnp.float32)},
            T=3,
            train_data=train,
            val_data=val,
        )


# ----- several objectives -------------------------------------------------------------------------------------


def test_groups_follow_their_own_objective():
    """lr and mu follow the training error, wd the validation error (RFHO's hyper_dict); reverse and forward."""
    x, y = toy_data()
    xv, yv = toy_data(seed=7)
    p0 = mlp_init()

    def err(p, hp, b):
        return jnp.mean((mlp(p, b[0]) - b[1]) ** 2)

    def train_loss(p, hp, b):
        return err(p, hp, b) + hp["wd"] * tree_l2(p)

    opt = hg.optim.momentum("lr", "mu")
    hp = {"lr": jnp.asarray(0.2), "mu": jnp.asarray(0.5), "wd": jnp.asarray(0.03)}
    both = hg.BilevelProblem(
        lambda h, k: p0,
        train_loss,
        {"val": err, "train": err},
        opt,
        follows={"lr": "train", "mu": "train", "wd": "val"},
    )
    single = hg.BilevelProblem(lambda h, k: p0, train_loss, err, opt)

    @functools.partial(jax.jit, compiler_options=QUICK_TO_COMPILE)
    def every(hp):
        return [
            (
                hg.hypergradient_result(both, hp, 10, (x, y), {"val": (xv, yv), "train": (x, y)}, method=method),
                hg.hypergradient_result(single, hp, 10, (x, y), (xv, yv), method=method),
                hg.hypergradient_result(single, hp, 10, (x, y), (x, y), method=method),
            )
            for method in (hg.Reverse(), hg.Forward())
        ]

    for name, results in zip(["reverse", "forward"], jax.device_get(every(hp)), strict=True):
        grads, g_val, g_train = (succeeded(res, name) for res in results)
        assert set(results[0].value) == {"val", "train"}
        np.testing.assert_allclose(grads["wd"], g_val["wd"], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(grads["lr"], g_train["lr"], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(grads["mu"], g_train["mu"], rtol=1e-12, err_msg=name)
        assert abs(float(g_val["lr"]) - float(g_train["lr"])) > 1e-3  # the two objectives really differ


def test_follows_must_name_known_objectives():
    p0 = mlp_init()
    with pytest.raises(ValueError, match="follows names objective 'tran'"):
        problem = hg.BilevelProblem(
            lambda h, k: p0,
            lambda p, h, b: tree_l2(p),
            {"val": lambda p, h, b: tree_l2(p)},
            hg.optim.sgd("lr"),
            follows={"lr": "tran"},
        )
        hg.hypergradient(problem, {"lr": jnp.asarray(0.1)}, T=2, train_data=(), val_data={"val": ()})
    with pytest.raises(ValueError, match="say which each hyperparameter follows"):
        hg.BilevelProblem(lambda h, k: p0, lambda p, h, b: tree_l2(p), {"a": tree_l2, "b": tree_l2}, hg.optim.sgd("lr"))


# ----- the real-time engine -----------------------------------------------------------------------------------


def test_realtime_chunks_without_updates_equal_forward():
    problem, train, val = small_mlp_problem(jnp.float64, hg.optim.adam("lr", b1="b1"))
    hp = {"lr": jnp.asarray(0.05), "b1": jnp.asarray(0.8), "wd": jnp.asarray(0.01)}
    rt = hg.RealTime(delta=4)
    carry = jax.jit(lambda h: rt.init(problem, h))(hp)
    step = jax.jit(lambda c, h: rt.step(problem, c, h, train, val), compiler_options=QUICK_TO_COMPILE)
    forward = jax.jit(  # forward mode after 4, 8, ..., 20 steps, in one compiled call
        lambda h: [
            hg.hypergradient_result(problem, h, 4 * chunk, train, val, method=hg.Forward()) for chunk in range(1, 6)
        ],
        compiler_options=QUICK_TO_COMPILE,
    )(hp)
    for chunk in range(1, 6):
        carry, result = step(carry, hp)
        assert int(carry.forward.step) == 4 * chunk
        exact = succeeded(forward[chunk - 1])
        assert rel_err(result.grads, exact) < 1e-11
    assert result.train_losses.shape == (4,)


def test_realtime_keeps_weights_and_tangents_across_updates():
    """After λ changes, the run continues from where it was: the weights are not reset."""
    problem = quadratic_problem(hg.optim.sgd("lr"))
    rt = hg.RealTime(delta=3)
    step = jax.jit(lambda c, hp: rt.step(problem, c, hp, (), ()))  # the same program for both chunks
    carry = jax.jit(lambda hp: rt.init(problem, hp))({"lr": jnp.asarray(0.1)})
    carry, _ = step(carry, {"lr": jnp.asarray(0.1)})
    carry, result = step(carry, {"lr": jnp.asarray(0.2)})
    w = W0
    for eta in (0.1, 0.1, 0.1, 0.2, 0.2, 0.2):
        w = w - eta * H * (w - A)
    np.testing.assert_allclose(result.state.params, w, rtol=1e-12)
    # Z_6 = Π(1 − η_s h) Z_3 + ∂Φ/∂η terms: check against the recurrence written out.
    z = jnp.zeros(4)
    w = W0
    for eta in (0.1, 0.1, 0.1, 0.2, 0.2, 0.2):
        z, w = (1 - eta * H) * z - H * (w - A), w - eta * H * (w - A)
    np.testing.assert_allclose(result.grads["lr"], jnp.sum((w - B) * z), rtol=1e-12)


def test_realtime_refuses_delta_not_dividing_T():
    with pytest.raises(ValueError, match="must divide T"):
        hg.hypergradient(
            quadratic_problem(hg.optim.sgd("lr")),
            {"lr": jnp.asarray(0.1)},
            T=10,
            train_data=(),
            val_data=(),
            method=hg.RealTime(delta=3),
        )
    with pytest.raises(ValueError, match="positive int"):
        hg.RealTime(delta=0)


# ----- warm starts, jit and vmap of the pure form ------------------------------------------------------------


def test_warm_start_from_a_given_state():
    """Starting from s_T of one run equals running 2T steps, except the initial weights' dependence on λ."""
    problem = quadratic_problem(hg.optim.sgd("lr"))
    hp = {"lr": jnp.asarray(0.1)}

    @functools.partial(jax.jit, compiler_options=QUICK_TO_COMPILE)
    def runs(hp):  # every run of the test, in one compiled call
        first = hg.hypergradient_result(problem, hp, 5, (), ())
        warm = [
            hg.hypergradient_result(problem, hp, 5, (), (), method=method, init_state=first.state)
            for method in (hg.Reverse(), hg.Forward())
        ]
        return first, warm, hg.hypergradient_result(problem, hp, 10, (), ())

    first, warm, both = jax.device_get(runs(hp))
    np.testing.assert_allclose(warm[0].state.params, both.state.params, rtol=1e-12)
    # d/dη with w_5 held fixed: only the last 5 steps contribute.
    w5 = first.state.params
    h, a, b = np.asarray(H), np.asarray(A), np.asarray(B)
    w10 = a + (1 - 0.1 * h) ** 5 * (w5 - a)
    exact = np.sum((w10 - b) * (-5 * h * (1 - 0.1 * h) ** 4) * (w5 - a))
    for res in warm:
        np.testing.assert_allclose(res.grads["lr"], exact, rtol=1e-10)


def test_pure_form_jits_and_vmaps():
    problem = quadratic_problem(hg.optim.momentum("lr", "mu"))
    lrs = jnp.asarray([0.05, 0.1, 0.2])
    batched = jax.jit(
        jax.vmap(lambda lr: hg.hypergradient_result(problem, {"lr": lr, "mu": jnp.asarray(0.5)}, 8, (), ()).grads["lr"])
    )(lrs)
    for i, lr in enumerate(lrs):
        _, g = hg.hypergradient(problem, {"lr": lr, "mu": jnp.asarray(0.5)}, T=8, train_data=(), val_data=())
        np.testing.assert_allclose(batched[i], g["lr"], rtol=1e-12)


# ----- Adam through autodiff ----------------------------------------------------------------------------------


def test_adam_is_finite_where_a_gradient_is_exactly_zero():
    """A parameter the loss never uses has g = 0 at every step: d sqrt(v)/dv = ∞ there unless ε is inside."""
    x, y = toy_data()
    p0 = {**mlp_init(), "unused": jnp.ones(3)}
    problem = hg.BilevelProblem(
        init=lambda hp, key: p0,
        train_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2),
        val_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2),
        optimizer=hg.optim.adam("lr", b1="b1"),
    )
    hp = {"lr": jnp.asarray(0.05), "b1": jnp.asarray(0.9)}
    results = all_at_once(problem, hp, 8, (x, y), (x, y), [hg.Reverse(), hg.Forward()])
    grads = {name: succeeded(res, name) for name, res in zip(["reverse", "forward"], results, strict=True)}
    for name in grads:
        assert all(np.isfinite(g) for g in jax.tree_util.tree_leaves(grads[name]))
    assert rel_err(grads["forward"], grads["reverse"]) < 1e-9


def test_optax_default_adam_would_give_nan_there():
    """The same problem through optax's Adam without eps_root: the failure our Adam avoids is real."""
    x, y = toy_data()
    p0 = {**mlp_init(), "unused": jnp.ones(3)}
    problem = hg.BilevelProblem(
        init=lambda hp, key: p0,
        train_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2),
        val_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2),
        optimizer=hg.optim.from_optax(lambda lr: optax.adam(lr), lr="lr"),
    )
    with pytest.raises(hg.DivergenceError, match="derivative propagated through it went non-finite"):
        hg.hypergradient(problem, {"lr": jnp.asarray(0.05)}, T=8, train_data=(x, y), val_data=(x, y))


# ----- bad input: a clear error before any compute ------------------------------------------------------------


class Counting:
    """Wraps a training loss and counts its executions on concrete data (through a host callback)."""

    def __init__(self, loss):
        self.calls = 0

        def counted(p, hp, b):
            jax.debug.callback(self.bump)
            return loss(p, hp, b)

        self.loss = counted

    def bump(self):
        self.calls += 1


def base_problem(**changes):
    counting = Counting(lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2) + hp["wd"] * tree_l2(p))
    p0 = mlp_init()
    parts = dict(
        init=lambda hp, key: p0,
        train_loss=counting.loss,
        val_loss=lambda p, hp, b: jnp.mean((mlp(p, b[0]) - b[1]) ** 2),
        optimizer=hg.optim.momentum("lr", "mu"),
    )
    parts.update(changes)
    return hg.BilevelProblem(**parts), counting


GOOD_HP = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5), "wd": jnp.asarray(0.01)}
DATA = toy_data()


def refused(problem, counting, match, exc=Exception, hparams=GOOD_HP, T=5, train_data=DATA, val_data=DATA, method=None):
    with pytest.raises(exc, match=match):
        hg.hypergradient(problem, hparams, T=T, train_data=train_data, val_data=val_data, method=method)
    assert counting.calls == 0, "the training loss ran before the error"


def test_val_loss_not_scalar():
    problem, c = base_problem(val_loss=lambda p, hp, b: (mlp(p, b[0]) - b[1]) ** 2)
    refused(problem, c, r"val_loss must return a scalar; it returned shape \(12,\)", ValueError)


def test_integer_hyperparameter():
    problem, c = base_problem()
    refused(
        problem, c, r"hparams\['mu'\] has dtype int32", TypeError, hparams={**GOOD_HP, "mu": jnp.asarray(1, jnp.int32)}
    )


def test_python_number_hyperparameter():
    problem, c = base_problem()
    refused(problem, c, r"hparams\['lr'\] is a float \(0.1\).*float arrays", TypeError, hparams={**GOOD_HP, "lr": 0.1})


def test_optimizer_names_a_missing_key():
    problem, c = base_problem(optimizer=hg.optim.momentum("lr", "momentum"))
    refused(
        problem,
        c,
        r"momentum='momentum' names an entry of hparams that does not exist; hparams has "
        r"'lr', 'mu', 'wd'",
        hg.MissingHyperparameterError,
    )


@pytest.mark.parametrize("T", [0, -3, 2.5])
def test_T_must_be_positive_int(T):
    problem, c = base_problem()
    refused(problem, c, "T .* must be a positive int", ValueError, T=T)


def test_train_data_callable_of_the_wrong_structure():
    problem, c = base_problem()
    refused(
        problem,
        c,
        r"train_loss\(params, hparams, batch\) failed on the batch returned by train_data\(step\), "
        r"which has structure",
        IndexError,
        train_data=lambda t: (DATA[0],),
    )


def test_forward_over_many_directions_refused_with_cost_then_allowed():
    x, y = DATA
    problem, c = base_problem(
        train_loss=lambda p, hp, b: jnp.mean(hp["w"] * (mlp(p, b[0]) - b[1]) ** 2), optimizer=hg.optim.sgd(0.1)
    )
    hp = {"w": jnp.ones(x.shape[0])}
    refused(
        problem,
        c,
        r"m = 12 directions .* MiB of tangents.* about \(1 \+ m\) = 13× .*max_directions=12",
        ValueError,
        hparams=hp,
        method=hg.Forward(max_directions=10),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # 12 directions is under the default warning threshold
        _, g = hg.hypergradient(problem, hp, T=5, train_data=DATA, val_data=DATA, method=hg.Forward(max_directions=12))
    _, g_rev = hg.hypergradient(problem, hp, T=5, train_data=DATA, val_data=DATA)
    assert rel_err(g, g_rev) < 1e-9


def test_forward_over_many_directions_warns_when_allowed():
    problem = quadratic_problem(hg.optim.sgd(lambda hp, t: hp["lr"][t]))
    with pytest.warns(ResourceWarning, match="m = 200 directions"):
        hg.hypergradient(
            problem,
            {"lr": jnp.full(200, 0.1)},
            T=200,
            train_data=(),
            val_data=(),
            method=hg.Forward(max_directions=None),
        )


def test_unknown_method():
    problem, c = base_problem()
    refused(problem, c, "method must be a hypergradient method", TypeError, method="reverse")


# ----- divergence ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ALL_METHODS, ids=METHOD_IDS)
def test_divergence_names_the_step(method):
    """w ← w − η·4w³ from w = 1 with η = 1 blows up; the error names the first non-finite step."""
    problem = hg.BilevelProblem(
        init=lambda hp, key: jnp.ones(1),
        train_loss=lambda w, hp, b: jnp.sum(w**4),
        val_loss=lambda w, hp, b: jnp.sum(w**2),
        optimizer=hg.optim.sgd("lr"),
    )
    w, first_bad = np.ones(1), None
    with np.errstate(over="ignore", invalid="ignore"):
        for t in range(10):
            w = w - 1.0 * 4 * w**3
            if first_bad is None and not np.isfinite(w).all():
                first_bad = t
    assert first_bad is not None
    with pytest.raises(
        hg.DivergenceError, match=rf"non-finite at inner step {first_bad} \(0-based\) of T=10.*lr=1"
    ) as info:
        hg.hypergradient(problem, {"lr": jnp.asarray(1.0)}, T=10, train_data=(), val_data=(), method=method)
    assert info.value.step == first_bad


def test_finite_differences_helper_is_accurate():
    """The reference itself: Richardson central differences of a known function."""
    g = finite_differences(
        lambda hp: jnp.sin(hp["a"]).sum() * jnp.exp(hp["b"]), {"a": jnp.asarray([0.3, 1.2]), "b": jnp.asarray(0.5)}
    )
    np.testing.assert_allclose(g["a"], np.cos([0.3, 1.2]) * np.exp(0.5), rtol=1e-10)
    np.testing.assert_allclose(g["b"], np.sin([0.3, 1.2]).sum() * np.exp(0.5), rtol=1e-10)
