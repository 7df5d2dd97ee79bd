"""The real-time family behind ``hg.RealTime(delta, discount=...)``: RTHO (μ = 1), hypergradient descent (μ = 0)
and MARTHE (``"adapt"``), and MARTHE's adaptive hyper-learning rate (:func:`hgkit.schedules.adaptive_sgd`).

Float64 (tests/conftest.py). The references are written out here by hand, independently of hgkit's forward mode:
hypergradient descent as Baydin et al. state it, and the discounted recurrence ``Z_t = μ A_t Z_{t-1} + B_t`` with
explicit Jacobians. Finite differences are no reference for μ < 1: the discounted read-out is a heuristic, not the
derivative of the validation loss.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hgkit as hg
from hgkit.hypergrad import forward
from hgkit.hypergrad.realtime import adapt_discount

D, N, STEPS = 3, 8, 40
_rng = np.random.default_rng(0)
X = jnp.asarray(_rng.normal(size=(STEPS, N, D)))
Y = jnp.asarray(np.tanh(np.asarray(X) @ _rng.normal(size=D)) + 0.1 * _rng.normal(size=(STEPS, N)))
X_VAL = jnp.asarray(_rng.normal(size=(16, D)))
Y_VAL = jnp.asarray(np.tanh(np.asarray(X_VAL) @ _rng.normal(size=D)))
W0 = jnp.asarray(_rng.normal(size=D))


def batch(step):
    return X[step], Y[step]


def mse(w, b):
    return jnp.mean((b[0] @ w - b[1]) ** 2)


def sgd_problem():
    """Linear regression by SGD on minibatches; the outer objective is the validation MSE."""
    return hg.BilevelProblem(
        init=lambda hp, key: W0,
        train_loss=lambda w, hp, b: mse(w, b) + 0.5 * hp.get("wd", 0.0) * jnp.sum(w**2),
        val_loss=lambda w, hp, b: mse(w, b),
        optimizer=hg.optim.sgd("lr"),
    )


def momentum_problem():
    """The same with heavy-ball momentum 0.9: the state (w, v) has tangents in both."""
    return hg.BilevelProblem(
        init=lambda hp, key: W0,
        train_loss=lambda w, hp, b: mse(w, b) + 0.5 * hp["wd"] * jnp.sum(w**2),
        val_loss=lambda w, hp, b: mse(w, b),
        optimizer=hg.optim.momentum(lr="lr", momentum=0.9),
    )


# ----- μ = 1: today's RTHO ------------------------------------------------------------------------------------


def test_discount_one_is_the_undiscounted_engine_bit_for_bit():
    """RealTime(Δ) = RealTime(Δ, discount=1.0): forward mode's exact recurrence, with λ changing between chunks."""
    problem, hp = momentum_problem(), {"lr": jnp.asarray(0.05), "wd": jnp.asarray(0.01)}
    assert hg.RealTime(4) == hg.RealTime(4, discount=1.0) == hg.RealTime(4, discount=1)
    assert hg.RealTime(4).label == "RTHO (Δ = 4)"
    rt = hg.RealTime(4, discount=1.0)
    basis = forward.directions(hp)

    @jax.jit
    def chunk(carry, ref, hp):
        carry, res = rt.step(problem, carry, hp, batch, (X_VAL, Y_VAL))
        ref, losses = forward.advance(problem, ref, hp, basis, batch, 4)  # the engine as it was: no discount
        return carry, res, ref, forward.finish(problem, ref, hp, (X_VAL, Y_VAL), losses)

    carry, ref = rt.init(problem, hp), forward.init_tangents(problem, hp, None, None, basis)
    for _ in range(5):
        carry, res, ref, expected = chunk(carry, ref, hp)
        for a, b in zip(jax.tree.leaves((res, carry.forward)), jax.tree.leaves((expected, ref)), strict=True):
            np.testing.assert_array_equal(a, b)
        hp = jax.tree.map(lambda x, g: x - 0.1 * g, hp, res.grads)
    np.testing.assert_array_equal(carry.discount, [1.0, 1.0])


# ----- μ = 0, Δ = 1: hypergradient descent ----------------------------------------------------------------------


def test_discount_zero_delta_one_is_hypergradient_descent():
    """Baydin et al.'s SGD-HD, written by hand: the outer objective is the training loss on the next batch,
    ``h_t = ∇L_t(w_t) · (−∇L_{t−1}(w_{t−1}))`` and ``η_t = η_{t−1} − β h_t`` before the step on batch t."""
    beta, T = 0.02, 30
    problem = hg.BilevelProblem(
        init=lambda hp, key: W0,
        train_loss=lambda w, hp, b: mse(w, b),
        val_loss=lambda w, hp, b: mse(w, b),  # E: the next training batch, passed as val_data
        optimizer=hg.optim.sgd("lr"),
    )
    grad = jax.grad(mse)
    w, eta, g_prev, etas = W0, 0.05, None, []
    for t in range(T):
        g = grad(w, batch(t))
        if g_prev is not None:
            eta = eta - beta * float(g @ -g_prev)
        etas.append(eta)
        w, g_prev = w - eta * g, g

    hd = hg.RealTime(delta=1, discount=0.0)
    assert hd.label == "hypergradient descent (Δ = 1)"
    step = jax.jit(lambda c, hp, t: hd.step(problem, c, hp, batch(t), batch(t + 1)))
    hp = {"lr": jnp.asarray(0.05)}
    carry, got = hd.init(problem, hp), []
    for t in range(T):
        got.append(float(hp["lr"]))
        carry, res = step(carry, hp, t)
        hp = {"lr": hp["lr"] - beta * res.grads["lr"]}
    np.testing.assert_allclose(got, etas, rtol=1e-12)
    np.testing.assert_allclose(carry.forward.state.params, w, rtol=1e-12)


def test_hypergradient_descent_on_a_validation_objective_in_the_loop():
    """In hg.HyperOptimizer (one compiled call per chunk): η_{t+1} = η_t − β ∇E(w_{t+1}) · (−∇L_t(w_t))."""
    beta, T = 0.05, 25
    grad = jax.grad(mse)
    w, eta, etas = W0, 0.05, []
    for t in range(T):
        etas.append(eta)
        g = grad(w, batch(t))
        w = w - eta * g
        eta = eta - beta * float(grad(w, (X_VAL, Y_VAL)) @ -g)
    opt = hg.HyperOptimizer(sgd_problem(), method=hg.RealTime(1, discount=0.0), hyper_optimizer=optax.sgd(beta))
    result = opt.run({"lr": jnp.asarray(0.05)}, T=T, train_data=batch, val_data=(X_VAL, Y_VAL), progress=False)
    np.testing.assert_allclose(result.history["lr"], etas, rtol=1e-12)
    assert result.history.attrs["method"] == "hypergradient descent (Δ = 1)"


# ----- the discounted recurrence, written out with explicit Jacobians -------------------------------------------


def momentum_step(s, lam, t):
    """Φ_t by hand on the flat state s = (w, v), λ = (η, wd): v ← 0.9 v + ∇L, w ← w − η v."""
    w, v = s[:D], s[D:]
    g = jax.grad(mse)(w, batch(t)) + lam[1] * w
    v = 0.9 * v + g
    return jnp.concatenate([w - lam[0] * v, v])


STEP = jax.jit(momentum_step)
JACOBIANS = jax.jit(jax.jacobian(momentum_step, argnums=(0, 1)))


def reference_chunks(lams, delta, discount):
    """The discounted recurrence Z_t = diag-μ A_t Z_{t-1} + B_t over chunks of Δ steps, λ changing per chunk, with
    μ a constant or MARTHE's rule per direction (z from the δ of the chunk before, as the authors' code times it:
    tests/test_marthe_reference.py). Returns per chunk (Z, δ, b, μ used) and the state."""
    s, Z = jnp.concatenate([W0, jnp.zeros(D)]), jnp.zeros((2 * D, 2))
    mu = np.zeros(2) if discount == "adapt" else np.full(2, discount)
    c, t, out, previous = np.zeros(2), 0, [], np.zeros(2)
    for lam in lams:
        used = mu.copy()
        for _ in range(delta):
            A, B = JACOBIANS(s, lam, t)
            Z = A @ (Z * used[None, :]) + B
            s, t = STEP(s, lam, t), t + 1
        gE = jax.grad(mse)(s[:D], (X_VAL, Y_VAL))
        delta_ = np.asarray(gE @ Z[:D])
        b = np.asarray(gE @ B[:D])
        out.append((np.asarray(Z), delta_, b, used))
        if discount == "adapt":
            z = np.where(b != 0, np.clip(previous / np.where(b != 0, b, 1), 0, 1), 0)
            c = (c + 1) * mu
            mu = z ** (1 / (c + 1))
            previous = delta_
    return out, s


@pytest.mark.parametrize("discount", [0.0, 0.7, "adapt"])
@pytest.mark.parametrize("delta", [1, 3])
def test_discounted_tangent_is_the_exact_derivative_of_the_discounted_recurrence(discount, delta):
    """Two hyperparameters (η, wd), one μ per direction; the tangents of w and of the velocity both checked."""
    problem = momentum_problem()
    lams = [np.array([0.05, 0.01]), np.array([0.08, 0.02]), np.array([0.03, 0.0]), np.array([0.06, 0.03])]
    lams += [np.array([0.05 + 0.01 * k, 0.01]) for k in range(4)]
    expected, s = reference_chunks([jnp.asarray(x) for x in lams], delta, discount)
    rt = hg.RealTime(delta, discount=discount)
    step = jax.jit(lambda c, hp: rt.step(problem, c, hp, batch, (X_VAL, Y_VAL)))
    carry = rt.init(problem, {"lr": jnp.asarray(0.05), "wd": jnp.asarray(0.01)})
    mus = []
    for lam, (Z, delta_, _, used) in zip(lams, expected, strict=True):
        np.testing.assert_allclose(carry.discount, used, rtol=1e-12, atol=1e-15)
        mus.append(used)
        carry, res = step(carry, {"lr": jnp.asarray(lam[0]), "wd": jnp.asarray(lam[1])})
        tangents = carry.forward.tangents
        got = np.concatenate([tangents.params.T, tangents.opt_state.T])  # (2D, m): columns = directions
        np.testing.assert_allclose(got, Z, rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose([res.grads["lr"], res.grads["wd"]], delta_, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(carry.forward.state.params, s[:D], rtol=1e-12)
    if discount == "adapt":  # the rule was exercised: the two directions' μ differ (and leave {0, 1} with Δ = 1)
        mus = np.array(mus)
        assert np.any(mus[:, 0] != mus[:, 1]) and (delta > 1 or np.any((mus > 0) & (mus < 1))), mus


def test_discount_below_one_is_not_the_hypergradient():
    """Forward(), and the undiscounted run, are the hypergradient; a discounted run differs (a heuristic)."""
    problem, hp = momentum_problem(), {"lr": jnp.asarray(0.05), "wd": jnp.asarray(0.01)}
    _, exact = hg.hypergradient(problem, hp, 12, batch, (X_VAL, Y_VAL), method=hg.Forward())
    _, rtho = hg.hypergradient(problem, hp, 12, batch, (X_VAL, Y_VAL), method=hg.RealTime(3))
    _, half = hg.hypergradient(problem, hp, 12, batch, (X_VAL, Y_VAL), method=hg.RealTime(3, discount=0.5))
    np.testing.assert_allclose(rtho["lr"], exact["lr"], rtol=1e-12)
    assert abs(float(half["lr"] - exact["lr"])) > 1e-3 * abs(float(exact["lr"]))


# ----- MARTHE: the adaptive μ and the adaptive hyper-learning rate -----------------------------------------------


def marthe_reference(T, delta, eta0, beta0, alpha):
    """MARTHE by hand on SGD and a scalar η: Z_t = μ (I − η ∇²L_t) Z_{t−1} − ∇L_t per step; after each chunk
    δ = clip(∇E·Z, ±100), b = ∇E·B; η ← max(η − β δ, 0); β ← max(β + α δ δ_prev, 0); z = clip(δ_prev/b, 0, 1)
    with δ_prev the chunk before's δ (the one η was updated with before this chunk; 0 before the first),
    c ← (c + 1) μ, μ ← z^(1/(c+1))."""
    grad, hess = jax.grad(mse), jax.hessian(mse)
    grad, hess = jax.jit(grad), jax.jit(hess)
    w, Z = W0, jnp.zeros(D)
    eta, beta, mu, c, prev, t = eta0, beta0, 0.0, 0.0, 0.0, 0
    rows = []
    for _ in range(T // delta):
        rows.append(dict(eta=eta, beta=beta, mu=mu))
        for _ in range(delta):
            g, H = grad(w, batch(t)), hess(w, batch(t))
            B = -g
            Z = mu * (Z - eta * H @ Z) + B
            w, t = w - eta * g, t + 1
        gE = grad(w, (X_VAL, Y_VAL))
        hyper, b = float(gE @ Z), float(gE @ B)
        d = float(np.clip(hyper, -100, 100))
        eta = max(eta - beta * d, 0.0)
        z = float(np.clip(prev / b, 0, 1)) if b != 0 else 0.0
        beta, prev = max(beta + alpha * d * prev, 0.0), d
        c = (c + 1) * mu
        mu = z ** (1 / (c + 1))
    return rows, w


@pytest.mark.parametrize("delta", [1, 2])
def test_marthe_mu_and_beta_match_a_hand_written_reference_over_20_steps(delta):
    T, eta0, beta0, alpha = 20 * delta, 0.05, 0.02, 0.5
    rows, w = marthe_reference(T, delta, eta0, beta0, alpha)
    problem = sgd_problem()
    marthe = hg.RealTime(delta, discount="adapt", clip=100.0)
    assert marthe.label == f"MARTHE (Δ = {delta})"
    tx = optax.chain(optax.clip(100.0), hg.schedules.adaptive_sgd(beta0, alpha))
    box = hg.constraints.positive(0.0)

    # By hand with the engine's pieces: μ from the carry, β from the optax state.
    @jax.jit
    def chunk(carry, u, opt_state):
        carry, res = marthe.step(problem, carry, u, batch, (X_VAL, Y_VAL))
        updates, opt_state = tx.update(res.grads, opt_state, u)
        return carry, {"lr": box.project(u["lr"] + updates["lr"])}, opt_state

    u = {"lr": jnp.asarray(eta0)}
    carry, opt_state = marthe.init(problem, u), tx.init(u)
    for row in rows:
        np.testing.assert_allclose(float(u["lr"]), row["eta"], rtol=1e-11)
        np.testing.assert_allclose(float(opt_state[1].beta["lr"]), row["beta"], rtol=1e-11)
        np.testing.assert_allclose(float(carry.discount[0]), row["mu"], rtol=1e-11, atol=1e-15)
        carry, u, opt_state = chunk(carry, u, opt_state)
    np.testing.assert_allclose(carry.forward.state.params, w, rtol=1e-11)
    mus, betas = [r["mu"] for r in rows], [r["beta"] for r in rows]
    assert any(0 < m < 1 for m in mus) and len(set(betas)) > 3, (mus, betas)  # both rules were exercised

    # The loop: one compiled call per chunk, the same learning rates.
    traces = []

    def traced(w, hp):  # a metric is traced once per compilation of the loop's step
        traces.append(1)
        return jnp.sum(w)

    opt = hg.HyperOptimizer(
        problem, method=marthe, hyper_optimizer=tx, constraints={"lr": box}, metrics={"traced": traced}
    )
    result = opt.run({"lr": jnp.asarray(eta0)}, T=T, train_data=batch, val_data=(X_VAL, Y_VAL), progress=False)
    np.testing.assert_allclose(result.history["lr"], [r["eta"] for r in rows], rtol=1e-11)
    assert len(traces) == 1 and len(result.history) == T // delta
    assert result.history.attrs["method"] == f"MARTHE (Δ = {delta})"


def test_marthe_in_a_population_runs_each_member_as_its_own_run():
    problem = momentum_problem()
    opt = hg.HyperOptimizer(
        problem,
        method=hg.RealTime(2, discount="adapt"),
        hyper_optimizer=optax.chain(optax.clip(100.0), hg.schedules.adaptive_sgd(0.01, 0.1)),
        constraints={"lr": hg.constraints.positive(0.0), "wd": hg.constraints.positive(0.0)},
    )
    starts = {"lr": jnp.asarray([0.02, 0.08]), "wd": jnp.asarray([0.01, 0.0])}
    pop = opt.run(starts, T=20, train_data=batch, val_data=(X_VAL, Y_VAL), progress=False, population=2)
    for p in range(2):
        start = {name: x[p] for name, x in starts.items()}
        alone = opt.run(start, T=20, train_data=batch, val_data=(X_VAL, Y_VAL), progress=False)
        mine = pop.history[pop.history.member == p]
        np.testing.assert_allclose(mine["lr"], alone.history["lr"], rtol=1e-10)
        np.testing.assert_allclose(mine["val_loss"], alone.history["val_loss"], rtol=1e-10)


def test_adapt_discount_rule():
    mu, c = adapt_discount(jnp.zeros(3), jnp.zeros(3), jnp.asarray([2.0, 0.5, -1.0]), jnp.asarray([1.0, 1.0, 1.0]))
    np.testing.assert_allclose(mu, [1.0, 0.5, 0.0])  # clip(δ/b, 0, 1) with c = 0
    mu, c = adapt_discount(mu, c, jnp.asarray([0.25, 0.25, 1.0]), jnp.asarray([1.0, 0.0, 1.0]))
    np.testing.assert_allclose(c, [1.0, 0.5, 0.0])  # c ← (c + 1) μ
    np.testing.assert_allclose(mu, [0.25**0.5, 0.0, 1.0])  # z^(1/(c+1)); b = 0 gives z = 0


def test_adaptive_sgd_per_hyperparameter():
    tx = hg.schedules.adaptive_sgd(beta=0.1, alpha=1.0)
    params = {"lr": jnp.asarray(0.1), "wd": jnp.asarray([0.1, 0.2])}
    state = tx.init(params)
    g1 = {"lr": jnp.asarray(1.0), "wd": jnp.asarray([1.0, -1.0])}
    g2 = {"lr": jnp.asarray(0.5), "wd": jnp.asarray([1.0, 2.0])}
    _, state = tx.update(g1, state)
    steps, state = tx.update(g2, state)
    np.testing.assert_allclose(steps["wd"], [-0.1, -0.2])  # β_1 = β_0: no previous hypergradient yet
    np.testing.assert_allclose(state.beta["lr"], 0.6)  # 0.1 + 1 · 0.5 · 1
    np.testing.assert_allclose(state.beta["wd"], [1.1, 0.0])  # elementwise; β ≥ 0


def test_bad_settings_are_refused():
    for bad in (1.5, -0.1, "adaptive", True, None):
        with pytest.raises(ValueError, match=r'discount=...\) must be a number in \[0, 1\] or "adapt"'):
            hg.RealTime(5, discount=bad)
    for kwargs in (dict(beta=-1.0, alpha=0.0), dict(beta=0.1, alpha=float("nan"))):
        with pytest.raises(ValueError, match="adaptive_sgd"):
            hg.schedules.adaptive_sgd(**kwargs)
    assert hg.RealTime(5, discount=0.5).label == "RTHO, discount μ = 0.5 (Δ = 5)"
    with pytest.raises(ValueError, match=r'RealTime\(clip=...\) bounds .* discount="adapt"; with discount=0.5'):
        hg.RealTime(5, discount=0.5, clip=100.0)
    for bad in (0.0, -1.0, float("inf"), "big"):
        with pytest.raises(ValueError, match=r"RealTime\(clip=...\) must be None or a number > 0"):
            hg.RealTime(5, discount="adapt", clip=bad)
    assert hg.RealTime(5, discount="adapt", clip=np.float32(10)).clip == 10.0


# ----- the loop's guard for a run at the edge of stability ---------------------------------------------------------

# Gradient descent on −Σcos(w) with η = 4.5 is chaotic: the weights stay bounded, the tangent dw/dη grows
# exponentially (float32 here, so that it overflows within a few chunks, as RTHO's did on the real-time experiment).
CHAOS = hg.BilevelProblem(
    init=lambda hp, key: jnp.asarray([0.3, -1.1], jnp.float32),
    train_loss=lambda w, hp, b: -jnp.sum(jnp.cos(w)),
    val_loss=lambda w, hp, b: -jnp.sum(jnp.cos(w - 0.1)),
    optimizer=hg.optim.sgd("lr"),
)
CHAOS_HP = {"lr": jnp.asarray(4.5, jnp.float32)}


def chaos_run(restart_above, hyper_iterations=8, delta=20):
    opt = hg.HyperOptimizer(CHAOS, method=hg.RealTime(delta=delta), hyper_optimizer=optax.adam(1e-3),
                            restart_above=restart_above)  # fmt: skip
    return opt.run(CHAOS_HP, None, hyper_iterations * delta, None, None, progress=False)


def test_restart_above_keeps_a_blown_up_run_going_and_reports_it():
    with pytest.raises(hg.HyperDivergenceError, match="derivative propagated through it went non-finite") as e:
        chaos_run(None)
    failed_at = e.value.iteration
    guarded = chaos_run(math.inf)  # restarts on non-finite hypergradients only
    h = guarded.history
    assert 0 < failed_at < 8 and len(h) == 8 and guarded.stopped is None
    # Until the failure the guarded run is the unguarded one, bit for bit; the chunk that failed is restarted.
    before = e.value.result.history
    assert list(h.grad_norm[:failed_at]) == list(before.grad_norm) and list(h.restarted[:failed_at]) == [0] * failed_at
    assert h.restarted[failed_at] == 1 and not np.isfinite(h.grad_norm[failed_at])
    # A restarted chunk changes nothing in λ: the next chunk runs with the same value.
    for i in np.flatnonzero(h.restarted.to_numpy()[:-1]):
        assert h.lr[i + 1] == h.lr[i]
    assert np.isfinite(h.lr).all() and h.attrs["restarts"] is True


def test_restart_above_restarts_the_tangent_from_zero():
    """A finite bound: the chunks whose hypergradient norm exceeds it are restarted; the chunk after a restart
    reads out what RealTime gives from the same weights with zero tangents (RealTime.restart)."""
    bound = 50.0
    h = chaos_run(bound, hyper_iterations=4, delta=3).history
    assert (h.restarted == (h.grad_norm > bound)).all() and h.restarted.any()
    i = int(np.flatnonzero(h.restarted.to_numpy())[0])
    rt = hg.RealTime(delta=3)
    carry = rt.init(CHAOS, CHAOS_HP)
    for j in range(i + 1):
        carry, res = rt.step(CHAOS, carry, {"lr": jnp.asarray(h.lr[j], jnp.float32)}, None, None)
    # (approx: eager steps round differently from the loop's compiled one, and chaos amplifies that)
    assert float(optax.tree.norm(res.grads)) == pytest.approx(h.grad_norm[i], rel=1e-5)
    restarted = rt.restart(carry)
    assert all(float(jnp.abs(z).max()) == 0 for z in jax.tree_util.tree_leaves(restarted.forward.tangents))
    assert int(restarted.forward.step) == int(carry.forward.step)
    _, res = rt.step(CHAOS, restarted, {"lr": jnp.asarray(h.lr[i + 1], jnp.float32)}, None, None)
    assert float(optax.tree.norm(res.grads)) == pytest.approx(h.grad_norm[i + 1], rel=1e-4)


def test_restart_above_is_for_online_methods_with_a_restart():
    with pytest.raises(ValueError, match="restart_above is for online methods"):
        hg.HyperOptimizer(CHAOS, method=hg.Reverse(), restart_above=10.0)
    for bad in (0.0, -1.0, float("nan"), "big"):
        with pytest.raises(ValueError, match="restart_above must be a number > 0"):
            hg.HyperOptimizer(CHAOS, method=hg.RealTime(delta=2), restart_above=bad)
