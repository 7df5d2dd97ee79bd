"""Long horizons, many devices and populations: checkpointed and truncated reverse mode, implicit
differentiation, data-parallel sharding, and vmapped populations (float64)."""

from __future__ import annotations

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import QUICK_TO_COMPILE, mlp, mlp_init, rel_err, toy_data, tree_l2
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import hgkit as hg
from hgkit.datasets.synthetic import noisy_linear_regression, ridge_solution

# ----- a small MLP problem whose initial weights depend on λ (so the init term of reverse mode matters) ------

X, Y = toy_data(n=16)
XV, YV = toy_data(n=10, seed=3)


def mlp_problem():
    w0 = mlp_init()
    return hg.BilevelProblem(
        init=lambda hp, key: jax.tree_util.tree_map(lambda w: w * (1 + 0.1 * hp["scale"]), w0),
        train_loss=lambda w, hp, b: jnp.mean((mlp(w, b[0]) - b[1]) ** 2) + jnp.exp(hp["log_wd"]) * tree_l2(w),
        val_loss=lambda w, hp, b: jnp.mean((mlp(w, b[0]) - b[1]) ** 2),
        optimizer=hg.optim.momentum("lr", "mu"),
    )


PROBLEM = mlp_problem()
HP = {"lr": jnp.asarray(0.2), "mu": jnp.asarray(0.6), "log_wd": jnp.asarray(-3.0), "scale": jnp.asarray(0.5)}


def minibatch(t):
    # A different (deterministic) half of the data at each step, so the steps are not all alike.
    idx = (jnp.arange(8) + 3 * t) % 16
    return X[idx], Y[idx]


T_LONG = 23  # 23 is prime: the segments never divide it, the remainder path runs
CHECKPOINTED = {length: hg.Reverse(hvp=hvp, store=hg.Segments(length)) for length, hvp in [
    ("sqrt", "reverse-over-reverse"), (7, "forward-over-reverse")]}  # fmt: skip
TRUNCATED = {(K, length): hg.Reverse(truncate=K, store=length and hg.Segments(length)) for K, length in [
    (T_LONG, None), (5, None), (12, 5)]}  # fmt: skip


@functools.cache
def reverse_runs():
    """Every run of the two tests below (stored, checkpointed and truncated reverse mode over T_LONG steps, and
    the truncated references), in one compiled call: one program compiles in far less time than one each."""

    @functools.partial(jax.jit, compiler_options=QUICK_TO_COMPILE)
    def runs(hp):
        def result(method):
            return hg.hypergradient_result(PROBLEM, hp, T_LONG, minibatch, (XV, YV), method=method)

        return (  # lists: the keys below mix types, which a pytree's dict keys may not
            result(hg.Reverse()),
            [result(m) for m in CHECKPOINTED.values()],
            [result(m) for m in TRUNCATED.values()],
            [truncated_reference(PROBLEM, hp, T_LONG, K, minibatch) for K, _ in TRUNCATED if K < T_LONG],
        )

    full, checkpointed, truncated, references = jax.device_get(runs(HP))
    return (
        full,
        dict(zip(CHECKPOINTED, checkpointed, strict=True)),
        dict(zip(TRUNCATED, truncated, strict=True)),
        dict(zip([K for K, _ in TRUNCATED if K < T_LONG], references, strict=True)),
    )


def test_checkpointed_reverse_equals_stored_reverse():
    full, checkpointed, _, _ = reverse_runs()
    for checkpoint, ckpt in checkpointed.items():
        assert rel_err(ckpt.grads, full.grads) < 1e-12, checkpoint
        np.testing.assert_allclose(ckpt.train_losses, full.train_losses, rtol=1e-13)
        assert int(ckpt.failure) == int(full.failure) == hg.Failure.NONE
        assert rel_err(ckpt.state.params, full.state.params) < 1e-13


def truncated_reference(problem, hp, T, K, train):
    """jax.grad of the unrolled run with the state at step T − K held constant (stop_gradient); traceable."""

    def f(h):
        state = hg.initial_state(problem, h, None)

        def step(s, t):
            return hg.train_step(problem, s, h, train(t), t)[0], None

        state, _ = jax.lax.scan(step, state, jnp.arange(T - K, dtype=jnp.int32))
        state = jax.lax.stop_gradient(state)
        state, _ = jax.lax.scan(step, state, jnp.arange(T - K, T, dtype=jnp.int32))
        return problem.val_loss(state.params, h, (XV, YV))

    return jax.grad(f)(hp)


def test_truncated_reverse():
    full, _, truncated, references = reverse_runs()
    assert rel_err(truncated[T_LONG, None].grads, full.grads) < 1e-13
    for K, checkpoint in [(5, None), (12, 5)]:
        res = truncated[K, checkpoint]
        ref = references[K]
        assert int(res.failure) == hg.Failure.NONE
        assert rel_err(res.grads, ref) < 1e-12, (K, checkpoint)
        # Truncation changes the hypergradient (the test would not see a method ignoring K) but not the run.
        assert rel_err(res.grads, full.grads) > 1e-3
        np.testing.assert_allclose(res.train_losses, full.train_losses, rtol=1e-13)
        assert float(res.grads["scale"]) == 0.0  # the initial weights' dependence is truncated away


def test_reverse_options_are_validated_before_compute():
    for bad, name in [
        ({"truncate": 0}, "truncate"),
        ({"truncate": 2.5}, "truncate"),
    ]:
        with pytest.raises(ValueError, match=re.escape(f"Reverse({name}=...)")):
            hg.Reverse(**bad)
    with pytest.raises(ValueError, match=re.escape("Segments(length=...)")):
        hg.Segments("log")
    with pytest.raises(ValueError, match=r"1 ≤ K ≤ T.*truncate=30 with T=20"):
        hg.hypergradient(mlp_problem(), HP, 20, minibatch, (XV, YV), method=hg.Reverse(truncate=30))


# ----- implicit differentiation --------------------------------------------------------------------------

A = jnp.asarray([0.0, -1.0, 12.0, 18.0])
E = jnp.asarray([3.0, 1.1, 1.0, 0.1])
B = A + jnp.asarray([0.1, -0.1, 0.1, 0.1])
QUADRATIC = hg.BilevelProblem(
    init=lambda hp, key: jnp.zeros(4),
    train_loss=lambda w, hp, a: 0.5 * jnp.sum((w - a) ** 2) + 0.5 * jnp.sum(hp["lam"] * w**2),
    val_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    optimizer=hg.optim.sgd(0.4),
)


def test_implicit_quadratic_against_closed_form():
    w_star = A / (1 + E)
    analytic = -2 * (w_star - B) * A / (1 + E) ** 2
    # The numbers quoted in issue 6 are this closed form (no sign or ½ difference).
    np.testing.assert_allclose(analytic, [0.0, 0.28290681, 36.6, 51.66040571], atol=1e-8)
    implicit = (hg.Implicit(), hg.Implicit(solver="neumann", alpha=0.2, iterations=400, tol=1e-12))
    unrolled = (hg.Reverse(), hg.Forward(), hg.Reverse(store=hg.Segments("sqrt")))

    @functools.partial(jax.jit, compiler_options=QUICK_TO_COMPILE)
    def every(hp):  # all the runs of this test, in one compiled call
        def result(T, method):
            return hg.hypergradient_result(QUADRATIC, hp, T, A, B, method=method)

        return [result(100, m) for m in implicit], [result(150, m) for m in unrolled], result(5, hg.Reverse())

    implicit_runs, unrolled_runs, short = jax.device_get(every({"lam": E}))
    for method, res in zip(implicit, implicit_runs, strict=True):
        assert int(res.failure) == hg.Failure.NONE, method
        np.testing.assert_allclose(res.grads["lam"], analytic, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(res.value, jnp.sum((w_star - B) ** 2), rtol=1e-12)
    # Long unrolled runs converge to the derivative of the minimiser.
    for method, res in zip(unrolled, unrolled_runs, strict=True):
        assert int(res.failure) == hg.Failure.NONE, method
        np.testing.assert_allclose(res.grads["lam"], analytic, rtol=1e-9, atol=1e-12)
    assert rel_err(short.grads["lam"], analytic) > 1e-2  # and a short one does not: the comparison has teeth


def test_implicit_ridge_against_closed_form():
    data = noisy_linear_regression(0, n_train=40, n_val=30, n_features=5, dtype=np.float64)
    s = data.split
    (xt, yt), (xv, yv) = (s.x_train, s.y_train), (s.x_val, s.y_val)
    n = xt.shape[0]
    problem = hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(5),
        train_loss=lambda w, hp, b: (
            jnp.sum((b[0] @ w - b[1]) ** 2) / (2 * n) + 0.5 * jnp.exp(hp["log_wd"]) * jnp.sum(w**2)
        ),
        val_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2),
        optimizer=hg.optim.momentum(0.3, 0.5),
    )
    implicit = jax.jit(  # compiled once, run for both values
        lambda hp: hg.hypergradient_result(problem, hp, 300, (xt, yt), (xv, yv), method=hg.Implicit()),
        compiler_options=QUICK_TO_COMPILE,
    )
    for log_wd in (-2.0, 0.5):
        lam = np.exp(log_wd)
        w = ridge_solution(xt, yt, lam)
        dw = -np.linalg.solve(xt.T @ xt / n + lam * np.eye(5), w) * lam  # d w*/d log λ
        analytic = 2 * (xv @ w - yv) @ xv @ dw / len(yv)
        res = implicit({"log_wd": jnp.asarray(log_wd)})
        np.testing.assert_allclose(res.state.params, w, rtol=1e-10)
        np.testing.assert_allclose(res.grads["log_wd"], analytic, rtol=1e-8)
        assert float(res.solve_residual) <= 1e-6 and int(res.failure) == hg.Failure.NONE


def test_implicit_failures_are_reported_not_zeroed():
    hp = {"lam": E}
    unstable = hg.BilevelProblem(QUADRATIC.init, QUADRATIC.train_loss, QUADRATIC.val_loss, hg.optim.sgd(5.0))
    res, blown = jax.jit(  # the pure form of both failures, in one compiled call
        lambda hp: (
            hg.hypergradient_result(QUADRATIC, hp, 100, A, B, method=hg.Implicit(iterations=1)),
            hg.hypergradient_result(unstable, hp, 1000, A, B, method=hg.Implicit()),
        ),
        compiler_options=QUICK_TO_COMPILE,
    )(hp)
    # Too few iterations: the residual stays above tol; flagged, and hg.hypergradient names it.
    assert int(res.failure) == hg.Failure.SOLVE_NOT_CONVERGED and float(res.solve_residual) > 1e-6
    with pytest.raises(hg.DivergenceError, match=r"did not converge: relative residual .* = 0\.\d+"):
        hg.hypergradient(QUADRATIC, hp, 100, A, B, method=hg.Implicit(iterations=1))
    # A Neumann step too large for the Hessian (eigenvalues up to 4, α = 1): the series diverges.
    with pytest.raises(hg.DivergenceError, match="did not converge"):
        hg.hypergradient(QUADRATIC, hp, 100, A, B, method=hg.Implicit(solver="neumann", alpha=1.0))
    # A training run that blows up is reported as such.
    assert int(blown.failure) == hg.Failure.TRAINING_NONFINITE and int(blown.failed_at) >= 0
    with pytest.raises(hg.DivergenceError, match="training run went non-finite"):
        hg.hypergradient(unstable, hp, 1000, A, B, method=hg.Implicit())
    for bad in ({"solver": "lu"}, {"iterations": 0}, {"tol": -1.0}, {"alpha": 0}):
        with pytest.raises(ValueError, match=re.escape(f"Implicit({next(iter(bad))}=...)")):
            hg.Implicit(**bad)


def test_implicit_uses_the_last_batch_of_a_callable():
    # The batch is the curvature c of L = ½ Σ c (w − a)² + ½ Σ λ w², so H = diag(c + λ) depends on it: c = 1 for
    # every step but the last, c = 2 at the last (step T − 1), the batch the implicit method must use.
    problem = hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(4),
        train_loss=lambda w, hp, c: 0.5 * jnp.sum(c * (w - A) ** 2) + 0.5 * jnp.sum(hp["lam"] * w**2),
        val_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
        optimizer=hg.optim.sgd(0.2),
    )
    T = 80
    res = jax.jit(
        lambda hp: hg.hypergradient_result(
            problem, hp, T, lambda t: jnp.where(t == T - 1, 2.0, 1.0), B, method=hg.Implicit()
        ),
        compiler_options=QUICK_TO_COMPILE,
    )({"lam": E})
    w = res.state.params
    # v = H⁻¹ ∂E/∂w with H = diag(2 + λ), and ∂²L/∂λᵢ∂wᵢ = wᵢ.
    expected = -w * 2 * (w - B) / (2 + E)
    np.testing.assert_allclose(res.grads["lam"], expected, rtol=1e-10)
    assert rel_err(expected, -w * 2 * (w - B) / (1 + E)) > 0.1  # the first batch would give something else


# ----- devices and populations ---------------------------------------------------------------------------


def test_data_parallel_inner_run_matches_single_device():
    assert len(jax.devices()) == 4
    mesh = Mesh(np.array(jax.devices()), ("data",))
    batch = NamedSharding(mesh, PartitionSpec("data"))
    replicated = NamedSharding(mesh, PartitionSpec())
    problem = mlp_problem()
    train = (jax.device_put(X, batch), jax.device_put(Y, batch))
    hp = jax.device_put(HP, replicated)
    assert len(train[0].sharding.device_set) == 4
    methods = (hg.Reverse(store=hg.Segments("sqrt")), hg.Implicit(iterations=200, tol=1e-8))
    single = jax.jit(  # on one device, both methods in one compiled call
        lambda h: [hg.hypergradient_result(problem, h, 30, (X, Y), (XV, YV), method=m) for m in methods],
        compiler_options=QUICK_TO_COMPILE,
    )(HP)
    for method, one in zip(methods, single, strict=True):
        assert int(one.failure) == hg.Failure.NONE, method
        v1, g1 = one.value, one.grads
        v4, g4 = hg.hypergradient(problem, hp, 30, train, (XV, YV), method=method)
        assert rel_err(g4, g1) < 1e-10 and abs(float(v4) - float(v1)) < 1e-12 * abs(float(v1))


def test_population_by_vmap_matches_separate_runs():
    problem = mlp_problem()
    pop = {
        "lr": jnp.asarray([0.1, 0.2, 0.3]),
        "mu": jnp.asarray([0.5, 0.6, 0.0]),
        "log_wd": jnp.asarray([-3.0, -2.0, -4.0]),
        "scale": jnp.asarray([0.0, 0.5, 1.0]),
    }

    @jax.jit
    def population(hps):
        return jax.vmap(lambda h: hg.hypergradient_result(problem, h, 15, minibatch, (XV, YV), method=hg.Reverse()))(
            hps
        )

    res = population(pop)
    hg.raise_if_diverged(res, 15, pop)
    # The population axis sharded over the 4 devices (a fourth member makes it divisible): same members.
    mesh = Mesh(np.array(jax.devices()), ("pop",))
    four = jax.tree_util.tree_map(lambda x: jnp.concatenate([x, x[:1] * 1.1]), pop)
    spread = population(jax.device_put(four, NamedSharding(mesh, PartitionSpec("pop"))))
    assert len(spread.value.sharding.device_set) == 4
    assert rel_err(jax.tree_util.tree_map(lambda x: x[:3], spread.grads), res.grads) < 1e-12
    for i in range(3):
        member = jax.tree_util.tree_map(lambda x, i=i: x[i], pop)
        v, g = hg.hypergradient(problem, member, 15, minibatch, (XV, YV))
        assert rel_err(jax.tree_util.tree_map(lambda x, i=i: x[i], res.grads), g) < 1e-12
        assert abs(float(res.value[i]) - float(v)) < 1e-13
    # Implicit is vmap-friendly too (its while-loop solves run until every member has converged).
    lam = jnp.stack([E, 2 * E])
    many = jax.jit(
        jax.vmap(lambda l: hg.hypergradient_result(QUADRATIC, {"lam": l}, 100, A, B, method=hg.Implicit())),
        compiler_options=QUICK_TO_COMPILE,
    )(lam)
    for i in range(2):
        _, g = hg.hypergradient(QUADRATIC, {"lam": lam[i]}, 100, A, B, method=hg.Implicit())
        np.testing.assert_allclose(many.grads["lam"][i], g["lam"], rtol=1e-12)


def test_loop_stops_on_an_unconverged_implicit_solve():
    # The gradient is finite but the Hessian solve did not converge: the loop must stop, not descend it.
    ended = []

    class Hook:
        def on_end(self, result):
            ended.append(result)

    opt = hg.HyperOptimizer(QUADRATIC, method=hg.Implicit(iterations=1), hyper_optimizer=optax.sgd(0.01))
    with pytest.raises(hg.HyperDivergenceError, match="hyper-iteration 0") as info:
        opt.run({"lam": E}, 3, 100, A, B, callbacks=[Hook()], progress=False)
    # The loop says what hg.hypergradient says: the solve did not converge, with its residual (no inner step).
    assert info.value.failure == hg.Failure.SOLVE_NOT_CONVERGED and info.value.step is None
    assert re.search(r"linear solve .* did not converge: relative residual .* = \d", str(info.value))
    assert "inner step" not in str(info.value) and len(info.value.result.history) == 0
    # Callbacks (a dashboard) hear how the run ended, with the history so far.
    assert [r.stopped for r in ended] == ["diverged"] and ended[0] is info.value.result
    # With a converging solve the same loop runs and lowers the validation loss.
    good = hg.HyperOptimizer(
        QUADRATIC, method=hg.Implicit(), hyper_optimizer=optax.sgd(1e-3), constraints={"lam": hg.constraints.positive()}
    )
    history = good.run({"lam": E}, 3, 100, A, B, progress=False).history
    assert history.val_loss.iloc[-1] < history.val_loss.iloc[0]
