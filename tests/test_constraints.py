"""Constraints on hyperparameters (hgkit/constraints.py): the exact capped-simplex projection, and projections and
reparameterizations as the loop applies them (history and result show λ = c(u), the updates land on the bounds)."""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import HP, KEY, PROBLEM, TRAIN, VAL, loop_problem, mlp, mlp_init, reference, toy_data

import hgkit as hg

T = 12


def brute_force_capped_simplex(y, R):
    """Try every assignment of the coordinates to {0, 1, free} with and without the sum constraint active."""
    n, best = len(y), None
    for pattern in itertools.product((0, 1, 2), repeat=n):
        pattern = np.asarray(pattern)
        free = pattern == 2
        for active in (False, True):
            x = np.where(pattern == 1, 1.0, 0.0)
            if active:
                if not free.any():
                    continue
                tau = (y[free].sum() + (pattern == 1).sum() - R) / free.sum()
                x[free] = y[free] - tau
            else:
                x[free] = y[free]
            if np.all(x >= -1e-12) and np.all(x <= 1 + 1e-12) and x.sum() <= R + 1e-12:
                d = np.sum((x - y) ** 2)
                if best is None or d < best[0]:
                    best = (d, x)
    return best[1]


def project(y, R):
    return hg.constraints.capped_simplex(R).project(y)


def test_capped_simplex_projection_is_exact():
    rng = np.random.default_rng(0)
    for trial in range(30):
        y = rng.normal(0.5, 1.0, size=5)
        R = [0.0, 0.5, 1.0, 2.5, 10.0][trial % 5]
        got = np.asarray(project(jnp.asarray(y), R))
        np.testing.assert_allclose(got, brute_force_capped_simplex(y, R), atol=1e-12)
    # Large n: the KKT conditions hold to rounding (x = clip(y − τ, 0, 1), τ ≥ 0, τ (Σx − R) = 0).
    y = rng.normal(0.3, 2.0, size=5000)
    for R in (1.0, 100.0, 1000.0, 5000.0):
        x = np.asarray(project(jnp.asarray(y), R))
        assert np.all((x >= 0) & (x <= 1)) and x.sum() <= R * (1 + 1e-12)
        inside = (x > 0) & (x < 1)
        tau = float(np.mean(y[inside] - x[inside]))
        np.testing.assert_allclose(y[inside] - x[inside], tau, atol=1e-12)
        np.testing.assert_allclose(x, np.clip(y - tau, 0, 1), atol=1e-12)
        assert tau >= -1e-12
        if tau > 1e-12:
            assert abs(x.sum() - R) <= 1e-9
    # Shape is kept and a feasible point is its own projection.
    z = jnp.full((3, 4), 0.05)
    np.testing.assert_array_equal(project(z, 1.0), z)


# ----- in the loop ----------------------------------------------------------------------------------------------


def test_box_and_positive_project_the_updates():
    opt = hg.HyperOptimizer(
        PROBLEM,
        hyper_optimizer=optax.sgd(1e6),  # a huge step: every hyperparameter lands on a bound
        constraints={
            "mu": hg.constraints.box(0.0, 0.9),
            "lr": hg.constraints.positive(1e-3),
            "wd": hg.constraints.box(0, 1),
        },
    )
    result = opt.run(HP, 2, T, TRAIN, VAL, key=KEY, progress=False)
    row = result.history.iloc[1]
    assert row["mu"] in (0.0, 0.9) and row["lr"] >= 1e-3 and row["wd"] in (0.0, 1.0)


def test_reparameterized_values_are_reported():
    """The optimizer steps in u; history and result show λ = c(u), the chain rule applied in the step."""
    eta, lo, hi = 0.5, 0.0, 0.8
    constraints = {"lr": hg.constraints.log(), "mu": hg.constraints.sigmoid(lo, hi)}
    result = hg.HyperOptimizer(PROBLEM, hyper_optimizer=optax.sgd(eta), constraints=constraints).run(
        HP, 2, T, TRAIN, VAL, key=KEY, progress=False
    )
    res = reference(PROBLEM, HP, T, TRAIN, VAL, key=jax.random.fold_in(KEY, 0))
    lr, g_lr = float(HP["lr"]), float(res.grads["lr"])
    mu, g_mu = float(HP["mu"]), float(res.grads["mu"])
    u = np.log((mu - lo) / (hi - mu))
    expected = {
        "lr": np.exp(np.log(lr) - eta * lr * g_lr),  # dλ/du = λ
        "mu": lo + (hi - lo) / (1 + np.exp(-(u - eta * (mu - lo) * (hi - mu) / (hi - lo) * g_mu))),
        "wd": float(HP["wd"]) - eta * float(res.grads["wd"]),  # unconstrained: a plain step
    }
    for name, value in expected.items():
        assert result.history[name][0] == pytest.approx(float(HP[name]), rel=1e-12)
        assert result.history[name][1] == pytest.approx(value, rel=1e-10)


def test_vector_hyperparameters_columns_snapshots_and_capped_simplex():
    """Per-example weights under a budget: vector columns, snapshots every k (and first and last), feasibility."""
    x, y = toy_data(n=10, seed=0)
    xv, yv = toy_data(n=10, seed=1)
    problem = hg.BilevelProblem(
        init=lambda hp, key: mlp_init(),
        train_loss=lambda w, hp, b: jnp.mean(hp["weights"] * (mlp(w, b[0]) - b[1]) ** 2),
        val_loss=lambda w, hp, b: jnp.mean((mlp(w, b[0]) - b[1]) ** 2),
        optimizer=hg.optim.sgd("lr"),
    )
    hp = {"lr": jnp.asarray(0.2), "weights": jnp.full(10, 0.4)}  # on the budget's face: Σ = 4
    opt = hg.HyperOptimizer(
        problem,
        hyper_optimizer=optax.sgd(20.0),
        constraints={"weights": hg.constraints.capped_simplex(4.0), "lr": hg.constraints.box(0.01, 0.5)},
    )
    result = opt.run(hp, 7, T, (x, y), (xv, yv), progress=False, snapshot_every=3)
    h = result.history
    assert set(result.snapshots) == {0, 3, 6}
    for i, snap in result.snapshots.items():
        w = snap["weights"]
        assert w.shape == (10,) and np.all((w >= 0) & (w <= 1)) and w.sum() <= 4.0 + 1e-9
        assert h["weights.mean"][i] == pytest.approx(w.mean(), rel=1e-12)
        assert h["weights.min"][i] == w.min() and h["weights.max"][i] == w.max()
        assert h["weights.norm"][i] == pytest.approx(np.linalg.norm(w), rel=1e-12)
        assert float(snap["lr"]) == h["lr"][i]
    assert h["weights.mean"].iloc[-1] * 10 <= 4.0 + 1e-9
    assert not np.array_equal(result.snapshots[6]["weights"], result.snapshots[0]["weights"])
    assert h.attrs["vectors"] == ["weights"] and h.attrs["scalars"] == ["lr"]


def test_bad_constraints_are_refused_before_anything_runs():
    calls = []
    problem, train, val = loop_problem(counter=calls)
    base = dict(train_data=train, val_data=val, progress=False)
    for constraints, match in [
        ({"momentum": hg.constraints.box(0, 1)}, r"constraints\['momentum'\] names no hyperparameter; hparams has "
                                                 r"\['lr', 'mu', 'wd'\]"),
        ({"wd": hg.constraints.capped_simplex(1.0)}, r"needs a vector hyperparameter; got shape \(\)"),
        ({"wd": hg.constraints.box(np.zeros(3), 1.0)}, r"bounds of shape \(3,\)"),
        ({"mu": hg.constraints.box(0, 0.3)}, r"hparams\['mu'\] starts outside its constraint box\(0, 0.3\)"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            hg.HyperOptimizer(problem, constraints=constraints).run(HP, 2, T, **base)
        assert calls == []  # the training loss was never even traced
