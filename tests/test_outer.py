"""The hyperparameter optimization loop (hgkit/outer.py) and the constraints (hgkit/constraints.py)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from helpers import mlp, mlp_init, readme_block, toy_data, tree_l2

import hgkit as hg
from hgkit.constraints import project_capped_simplex

T = 12
KEY = jax.random.key(0)


def make_problem(counter=None):
    """A tiny MLP regression; momentum with tuned lr and mu, and an L2 penalty wd. The init depends on the key."""
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


HP = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5), "wd": jnp.asarray(0.01)}
# Shared by the tests, so that they share compilations (the compiled step's cache key holds these by identity).
PROBLEM, TRAIN, VAL = make_problem()
SGD, SGD0 = optax.sgd(0.05), optax.sgd(0.0)
LOG = hg.constraints.log()
ADAM = optax.adam(1e-2)  # the default
REVERSE = hg.Reverse()


@functools.partial(jax.jit, static_argnames=("problem", "T", "method"))
def reference(problem, hparams, T, train_data, val_data, method=REVERSE, key=None):
    """hg.hypergradient_result, compiled (once per problem, T and method)."""
    return hg.hypergradient_result(problem, hparams, T, train_data, val_data, method, key)


STEP = jax.jit(hg.train_step, static_argnums=0)


def plain_training(problem, hp, steps, train, val, key):
    """The validation loss after each of ``steps`` training steps, and the final weights (no hypergradient)."""
    state, losses = hg.initial_state(problem, hp, key), []
    for t in range(steps):
        state, _ = STEP(problem, state, hp, train, t)
        losses.append(float(problem.val_loss(state.params, hp, val)))
    return np.asarray(losses), state.params


def without_wall_time(history):
    return history.drop(columns="wall_time")


# ----- the loop against the hypergradient it is built on -------------------------------------------------------


@pytest.mark.parametrize("hyper", ["sgd", "adam"])
def test_first_rows_and_update_match_hypergradient(hyper):
    """Row i reports f and df/dλ at λ_i (inner init from fold_in(key, i)); λ_{i+1} is the optax step from there."""
    problem, train, val = PROBLEM, TRAIN, VAL
    tx = SGD if hyper == "sgd" else ADAM
    result = hg.HyperOptimizer(problem, hyper_optimizer=None if hyper == "adam" else tx).run(
        HP, hyper_iterations=2, T=T, train_data=train, val_data=val, key=KEY, progress=False
    )
    hp, state = HP, tx.init(HP)
    for i in range(2):
        res = reference(problem, hp, T, train, val, hg.Reverse(), jax.random.fold_in(KEY, i))
        row = result.history.iloc[i]
        assert row["val_loss"] == pytest.approx(float(res.value), rel=1e-12)
        assert row["train_loss"] == pytest.approx(float(res.train_losses[-1]), rel=1e-12)
        assert row["grad_norm"] == pytest.approx(float(optax.tree.norm(res.grads)), rel=1e-12)
        for name in HP:
            assert row[name] == pytest.approx(float(hp[name]), rel=1e-12)
            assert row[f"grad_norm.{name}"] == pytest.approx(abs(float(res.grads[name])), rel=1e-12)
        updates, state = tx.update(res.grads, state, hp)
        hp = optax.apply_updates(hp, updates)
    for name in HP:
        assert float(result.hparams[name]) == pytest.approx(float(hp[name]), rel=1e-12)
    assert result.stopped is None
    np.testing.assert_array_equal(result.history.inner_steps, [T, 2 * T])


def test_realtime_with_delta_T_is_one_forward_step():
    """RealTime(Δ=T) runs one chunk: the same row and update as one forward-mode hyper-iteration."""
    problem, train, val = PROBLEM, TRAIN, VAL
    runs = {
        name: hg.HyperOptimizer(problem, method=method, hyper_optimizer=SGD).run(
            HP, hyper_iterations=1, T=T, train_data=train, val_data=val, key=KEY, progress=False
        )
        for name, method in [("rt", hg.RealTime(delta=T)), ("fwd", hg.Forward())]
    }
    # Forward initializes from fold_in(key, 0); real time from key itself: compare with the matching hypergradient.
    res = reference(problem, HP, T, train, val, hg.Forward(), KEY)
    row = runs["rt"].history.iloc[0]
    assert row["val_loss"] == pytest.approx(float(res.value), rel=1e-12)
    assert row["grad_norm"] == pytest.approx(float(optax.tree.norm(res.grads)), rel=1e-10)
    for name in HP:
        assert float(runs["rt"].hparams[name]) == pytest.approx(float(HP[name] - 0.05 * res.grads[name]), rel=1e-12)
    fwd = reference(problem, HP, T, train, val, hg.Forward(), jax.random.fold_in(KEY, 0))
    assert runs["fwd"].history.val_loss[0] == pytest.approx(float(fwd.value), rel=1e-12)
    assert list(runs["rt"].history.columns) == list(runs["fwd"].history.columns)


def test_realtime_one_run_in_chunks():
    """Real time: T/Δ rows, the carry never reset (the training state after the run has seen T steps)."""
    problem, train, val = PROBLEM, TRAIN, VAL
    result = hg.HyperOptimizer(problem, method=hg.RealTime(delta=4), hyper_optimizer=SGD0).run(
        HP, T=T, train_data=train, val_data=val, key=KEY, progress=False
    )
    assert len(result.history) == T // 4
    np.testing.assert_array_equal(result.history.inner_steps, [4, 8, 12])
    # A zero hyper step leaves λ fixed, so chunk k ends where plain training does after 4(k+1) steps.
    losses, params = plain_training(problem, HP, T, train, val, KEY)
    np.testing.assert_allclose(result.history.val_loss, losses[[3, 7, 11]], rtol=1e-12)
    np.testing.assert_allclose(result.state.params["W2"], params["W2"], rtol=1e-12)


def test_warm_restart_continues_training():
    problem, train, val = PROBLEM, TRAIN, VAL
    result = hg.HyperOptimizer(problem, hyper_optimizer=SGD0, warm_restart=True).run(
        HP, hyper_iterations=3, T=4, train_data=train, val_data=val, key=KEY, progress=False
    )
    losses, _ = plain_training(problem, HP, 12, train, val, KEY)
    np.testing.assert_allclose(result.history.val_loss, losses[[3, 7, 11]], rtol=1e-12)


def test_other_method_objects_work_as_reverse():
    @dataclasses.dataclass(frozen=True)
    class Wrapped:  # any object with the methods' .run signature, e.g. a future hg.Implicit
        def run(self, problem, hparams, T, train_data, val_data, key=None, init_state=None):
            return hg.Reverse().run(problem, hparams, T, train_data, val_data, key, init_state)

    problem, train, val = PROBLEM, TRAIN, VAL
    a, b = (
        hg.HyperOptimizer(problem, method=m).run(HP, 2, T, train, val, key=KEY, progress=False)
        for m in (Wrapped(), hg.Reverse())
    )
    pd.testing.assert_frame_equal(without_wall_time(a.history), without_wall_time(b.history), check_exact=True)
    assert a.history.attrs["method"] == repr(Wrapped())


def test_tunes_lr_momentum_and_weight_decay_on_mnist():
    """A slice of the packaged MNIST, softmax regression: 20 hyper-iterations lower the validation loss clearly."""
    from hgkit.datasets import hyper_cleaning_mnist

    data = hyper_cleaning_mnist(dtype=np.float64)
    x, y = jnp.asarray(data.x_train[:300]), jnp.asarray(data.y_train[:300])
    xv, yv = jnp.asarray(data.x_val[:300]), jnp.asarray(data.y_val[:300])

    def xent(w, x, y):
        logits = x @ w["W"] + w["b"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

    problem = hg.BilevelProblem(
        init=lambda hp, key: {"W": jnp.zeros((784, 10)), "b": jnp.zeros(10)},
        train_loss=lambda w, hp, b: xent(w, *b) + hp["wd"] * jnp.sum(w["W"] ** 2),
        val_loss=lambda w, hp, b: xent(w, *b),
        optimizer=hg.optim.momentum(lr="lr", momentum="mu"),
    )
    hp = {"lr": jnp.asarray(0.01), "mu": jnp.asarray(0.1), "wd": jnp.asarray(0.01)}
    opt = hg.HyperOptimizer(
        problem,
        hyper_optimizer=optax.adam(0.1),
        constraints={"lr": hg.constraints.log(), "mu": hg.constraints.box(0.0, 0.95), "wd": hg.constraints.log()},
        metrics={"val_accuracy": lambda w, hp: jnp.mean(jnp.argmax(xv @ w["W"] + w["b"], axis=1) == yv)},
    )
    result = opt.run(hp, hyper_iterations=20, T=30, train_data=(x, y), val_data=(xv, yv), progress=False)
    h = result.history
    assert h.val_loss.iloc[-1] < 0.6 * h.val_loss.iloc[0]
    assert h.val_accuracy.iloc[-1] > h.val_accuracy.iloc[0] + 0.1
    # All three moved, and in the direction the first hypergradient pointed.
    res = reference(problem, hp, 30, (x, y), (xv, yv))
    for name in hp:
        assert np.sign(float(result.hparams[name] - hp[name])) == -np.sign(float(res.grads[name]))
    assert 0.0 <= float(result.hparams["mu"]) <= 0.95


# ----- compiled once -------------------------------------------------------------------------------------------


def test_one_compilation_for_all_hyper_iterations():
    traces, compiles, marks = [], [], []

    def accuracy(w, hp):  # traced once per compilation of the step
        traces.append(1)
        return jnp.sum(w["W2"])

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    problem, train, val = PROBLEM, TRAIN, VAL
    opt = hg.HyperOptimizer(problem, metrics={"m": accuracy}, constraints={"wd": hg.constraints.log()})

    def minibatch(t):  # train_data as a function of the step (static in the compiled step)
        return jax.tree_util.tree_map(lambda a: jax.lax.dynamic_slice_in_dim(a, (t % 4) * 4, 4), train)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        opt.run(HP, 6, T, minibatch, val, key=KEY, progress=False, callbacks=lambda r: marks.append(len(compiles)))
        opt.run({k: v * 1.1 for k, v in HP.items()}, 3, T, minibatch, val, key=KEY, progress=False)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(traces) == 1
    assert marks[0] >= 1 and marks[-1] == marks[0]  # nothing compiled after the first hyper-iteration


# ----- constraints ----------------------------------------------------------------------------------------------


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


def test_capped_simplex_projection_is_exact():
    rng = np.random.default_rng(0)
    for trial in range(30):
        y = rng.normal(0.5, 1.0, size=5)
        R = [0.0, 0.5, 1.0, 2.5, 10.0][trial % 5]
        got = np.asarray(project_capped_simplex(jnp.asarray(y), R))
        np.testing.assert_allclose(got, brute_force_capped_simplex(y, R), atol=1e-12)
    # Large n: the KKT conditions hold to rounding (x = clip(y − τ, 0, 1), τ ≥ 0, τ (Σx − R) = 0).
    y = rng.normal(0.3, 2.0, size=5000)
    for R in (1.0, 100.0, 1000.0, 5000.0):
        x = np.asarray(project_capped_simplex(jnp.asarray(y), R))
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
    np.testing.assert_array_equal(project_capped_simplex(z, 1.0), z)


def test_box_and_positive_project_the_updates():
    problem, train, val = PROBLEM, TRAIN, VAL
    opt = hg.HyperOptimizer(
        problem,
        hyper_optimizer=optax.sgd(1e6),  # a huge step: every hyperparameter lands on a bound
        constraints={
            "mu": hg.constraints.box(0.0, 0.9),
            "lr": hg.constraints.positive(1e-3),
            "wd": hg.constraints.box(0, 1),
        },
    )
    result = opt.run(HP, 2, T, train, val, key=KEY, progress=False)
    row = result.history.iloc[1]
    assert row["mu"] in (0.0, 0.9) and row["lr"] >= 1e-3 and row["wd"] in (0.0, 1.0)


def test_reparameterized_values_are_reported():
    """The optimizer steps in u; history and result show λ = c(u), the chain rule applied in the step."""
    problem, train, val = PROBLEM, TRAIN, VAL
    eta, lo, hi = 0.5, 0.0, 0.8
    constraints = {"lr": hg.constraints.log(), "mu": hg.constraints.sigmoid(lo, hi)}
    result = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(eta), constraints=constraints).run(
        HP, 2, T, train, val, key=KEY, progress=False
    )
    res = reference(problem, HP, T, train, val, REVERSE, jax.random.fold_in(KEY, 0))
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


# ----- history, callbacks ---------------------------------------------------------------------------------------


def test_history_columns_and_attrs_with_several_objectives():
    x, y = toy_data(n=16, seed=0)
    xv, yv = toy_data(n=16, seed=1)

    def mse(w, b):
        return jnp.mean((mlp(w, b[0]) - b[1]) ** 2)

    problem = hg.BilevelProblem(
        init=lambda hp, key: mlp_init(),
        train_loss=lambda w, hp, b: mse(w, b) + hp["reg"]["wd"] * tree_l2(w),
        val_loss={"val": lambda w, hp, b: mse(w, b), "train": lambda w, hp, b: mse(w, b)},
        optimizer=hg.optim.sgd(lambda hp, t: hp["reg"]["lr"][t]),
        follows={"reg": {"wd": "val", "lr": "train"}},
    )
    hp = {"reg": {"lr": jnp.full(T, 0.1), "wd": jnp.asarray(0.01)}}
    metrics = {"w2": lambda w, hp: jnp.sum(w["W2"] ** 2)}
    result = hg.HyperOptimizer(problem, metrics=metrics).run(
        hp, 3, T, (x, y), {"val": (xv, yv), "train": (x, y)}, progress=False
    )
    h = result.history
    assert list(h.columns) == [
        "iteration", "inner_steps", "wall_time", "val_loss.val", "val_loss.train", "train_loss", "grad_norm",
        "grad_norm.reg/lr", "grad_norm.reg/wd",
        "reg/lr.mean", "reg/lr.min", "reg/lr.max", "reg/lr.norm", "reg/wd", "w2",
    ]  # fmt: skip
    assert h.attrs == {
        "hyperparameters": ["reg/lr", "reg/wd"],
        "scalars": ["reg/wd"],
        "vectors": ["reg/lr"],
        "objectives": ["val_loss.val", "val_loss.train"],
        "metrics": ["w2"],
        "method": repr(hg.Reverse()),
    }
    np.testing.assert_array_equal(h.iteration, [0, 1, 2])
    assert h.wall_time.is_monotonic_increasing and h.wall_time.iloc[0] > 0
    res = reference(problem, hp, T, (x, y), {"val": (xv, yv), "train": (x, y)})
    assert h["val_loss.train"][0] == pytest.approx(float(res.value["train"]), rel=1e-12)
    assert h["w2"][0] == pytest.approx(float(jnp.sum(res.state.params["W2"] ** 2)), rel=1e-12)
    assert h["grad_norm.reg/lr"][0] == pytest.approx(float(jnp.linalg.norm(res.grads["reg"]["lr"])), rel=1e-12)
    assert jax.tree_util.tree_structure(result.hparams) == jax.tree_util.tree_structure(hp)


def test_callbacks_stop_and_receive_plain_records():
    problem, train, val = PROBLEM, TRAIN, VAL
    seen = []

    class Recorder:
        def on_start(self, info):
            seen.append(("start", info))

        def on_record(self, record):
            seen.append(("record", record))

        def on_end(self, result):
            seen.append(("end", result))

    result = hg.HyperOptimizer(problem).run(
        HP, 10, T, train, val, key=KEY, progress=False, callbacks=[Recorder(), lambda r: r["iteration"] == 2]
    )
    assert result.stopped == "callback" and len(result.history) == 3
    kinds = [k for k, _ in seen]
    assert kinds == ["start", "record", "record", "record", "end"]
    info = seen[0][1]
    assert info["hyperparameters"] == ["lr", "mu", "wd"] and info["hyper_iterations"] == 10
    assert info["population"] is None
    assert set(info) == {"hyperparameters", "scalars", "vectors", "objectives", "metrics", "hyper_iterations", "method",
                         "population"}  # fmt: skip
    record = seen[1][1]
    assert type(record["iteration"]) is int and type(record["val_loss"]) is float
    assert record == {k: v for k, v in result.history.iloc[0].items() if k in record} and set(record) == set(
        result.history.columns
    )
    assert seen[-1][1] is result
    # The final snapshot is the last iteration run.
    assert set(result.snapshots) == {0, 2}


# ----- determinism, checkpoints, interrupts ---------------------------------------------------------------------


def test_same_key_same_history_bit_for_bit():
    problem, train, val = PROBLEM, TRAIN, VAL
    opt = hg.HyperOptimizer(problem)
    a, b, c = (opt.run(HP, 3, T, train, val, key=k, progress=False) for k in (KEY, KEY, jax.random.key(1)))
    pd.testing.assert_frame_equal(without_wall_time(a.history), without_wall_time(b.history), check_exact=True)
    assert not np.array_equal(a.history.val_loss, c.history.val_loss)  # the key changes the inner init


RESUME_CASES = {
    "reverse-warm": dict(method=hg.Reverse(), warm_restart=True, hyper_iterations=7),
    "realtime": dict(method=hg.RealTime(delta=2), warm_restart=False, hyper_iterations=None),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_interrupt_and_resume_is_bit_identical(case, tmp_path):
    settings = dict(RESUME_CASES[case])
    n = settings.pop("hyper_iterations")
    problem, train, val = PROBLEM, TRAIN, VAL
    opt = hg.HyperOptimizer(problem, constraints={"wd": LOG}, **settings)
    kwargs = dict(T=14, train_data=train, val_data=val, key=KEY, progress=False, snapshot_every=2, checkpoint_every=2)
    full = opt.run(HP, n, **kwargs)

    def interrupt(record):
        if record["iteration"] == 4:
            raise KeyboardInterrupt

    first = opt.run(HP, n, checkpoint_dir=tmp_path, callbacks=interrupt, **kwargs)
    assert first.stopped == "interrupted" and len(first.history) == 5
    resumed = opt.run(HP, n, checkpoint_dir=tmp_path, **kwargs)
    assert resumed.stopped is None
    pd.testing.assert_frame_equal(without_wall_time(resumed.history), without_wall_time(full.history), check_exact=True)
    assert resumed.history.wall_time.is_monotonic_increasing
    for name in HP:
        np.testing.assert_array_equal(resumed.hparams[name], full.hparams[name])
    assert resumed.snapshots.keys() == full.snapshots.keys()
    for i in full.snapshots:
        for name in HP:
            np.testing.assert_array_equal(resumed.snapshots[i][name], full.snapshots[i][name])
    np.testing.assert_array_equal(resumed.state.params["W1"], full.state.params["W1"])
    # A finished run resumes to the same result without computing, and other settings are refused.
    again = opt.run(HP, n, checkpoint_dir=tmp_path, **kwargs)
    pd.testing.assert_frame_equal(again.history, resumed.history, check_exact=True)
    with pytest.raises(ValueError, match="other settings"):
        opt.run(HP, n, **{**kwargs, "T": 16}, checkpoint_dir=tmp_path)
    sgd = hg.HyperOptimizer(problem, hyper_optimizer=SGD, constraints={"wd": LOG}, **settings)
    with pytest.raises(ValueError, match=r"its opt_state has 7 arrays where this run has 0 \(another hyper_optimizer"):
        sgd.run(HP, n, **kwargs, checkpoint_dir=tmp_path)


CHILD = """
import os, sys, time
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
import hgkit as hg
from test_outer import HP, KEY, make_problem

problem, train, val = make_problem()

def slow(record):
    open(os.path.join({marks!r}, str(record["iteration"])), "w").close()
    time.sleep(0.3)

result = hg.HyperOptimizer(problem).run(HP, 200, 12, train, val, key=KEY, progress=False, callbacks=slow,
                                        checkpoint_dir={ckpt!r}, checkpoint_every=1000)
print("stopped", result.stopped, len(result.history))
"""


def test_sigint_to_a_running_process_saves_and_resumes(tmp_path):
    marks, ckpt = tmp_path / "marks", tmp_path / "ckpt"
    marks.mkdir()
    code = CHILD.format(tests=os.path.dirname(__file__), marks=str(marks), ckpt=str(ckpt))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 60
    while not (marks / "2").exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    stopped, rows = out.decode().split()[1:]
    assert stopped == "interrupted" and int(rows) >= 3
    problem, train, val = PROBLEM, TRAIN, VAL
    total = int(rows) + 2
    opt = hg.HyperOptimizer(problem)
    resumed = opt.run(HP, total, 12, train, val, key=KEY, progress=False, checkpoint_dir=ckpt)
    # The fingerprint holds the hyper_iterations-independent settings only, so the run can be extended.
    full = opt.run(HP, total, 12, train, val, key=KEY, progress=False)
    pd.testing.assert_frame_equal(without_wall_time(resumed.history), without_wall_time(full.history), check_exact=True)


# ----- errors ---------------------------------------------------------------------------------------------------


def test_divergence_error_names_iteration_step_and_values():
    problem, train, val = PROBLEM, TRAIN, VAL
    # Iteration 0 is fine; the huge hyper step then sends lr where training blows up.
    opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.sgd(-1e4), constraints={"lr": hg.constraints.positive()})
    with pytest.raises(hg.HyperDivergenceError) as info:
        opt.run(HP, 5, T, train, val, key=KEY, progress=False)
    err = info.value
    assert isinstance(err, hg.DivergenceError)
    i = err.iteration
    assert i >= 1 and len(err.result.history) == i and list(err.result.history.iteration) == list(range(i))
    # .hparams are the (finite) values that iteration used: where the loop stopped short of it arrives too.
    short = opt.run(HP, i, T, train, val, key=KEY, progress=False)
    for name in HP:
        np.testing.assert_array_equal(err.hparams[name], short.hparams[name])
    pd.testing.assert_frame_equal(
        without_wall_time(err.result.history), without_wall_time(short.history), check_exact=True
    )
    res = reference(problem, err.hparams, T, train, val, hg.Reverse(), jax.random.fold_in(KEY, i))
    assert err.step == int(res.diverged_at) >= 0
    assert f"hyper-iteration {i}" in str(err) and f"inner step {err.step}" in str(err)
    assert f"lr={float(err.hparams['lr']):.6g}" in str(err)


def test_bad_settings_are_refused_before_anything_runs():
    calls = []
    problem, train, val = make_problem(counter=calls)
    opt = hg.HyperOptimizer(problem)

    def refused(exc, match, *args, make=None, **kwargs):
        with pytest.raises(exc, match=match):
            (make() if make else opt.run)(*args, **kwargs)
        assert calls == []

    base = dict(train_data=train, val_data=val, progress=False)
    refused(ValueError, "hyper_iterations must be a positive int; got 0", HP, 0, T, **base)
    refused(ValueError, r"T \(inner steps\) must be a positive int; got 0", HP, 3, 0, **base)
    refused(ValueError, r"RealTime\(delta=5\) must divide T=12", make=lambda: hg.HyperOptimizer(
        problem, method=hg.RealTime(5)).run(HP, None, T, **base))  # fmt: skip
    refused(ValueError, "hyper_iterations is T // delta = 3", make=lambda: hg.HyperOptimizer(
        problem, method=hg.RealTime(4)).run(HP, 10, T, **base))  # fmt: skip
    refused(ValueError, r"constraints\['momentum'\] names no hyperparameter; hparams has \['lr', 'mu', 'wd'\]",
            make=lambda: hg.HyperOptimizer(problem, constraints={"momentum": hg.constraints.box(0, 1)}).run(
                HP, 2, T, **base))  # fmt: skip
    refused(ValueError, r"needs a vector hyperparameter; got shape \(\)", make=lambda: hg.HyperOptimizer(
        problem, constraints={"wd": hg.constraints.capped_simplex(1.0)}).run(HP, 2, T, **base))  # fmt: skip
    refused(ValueError, r"bounds of shape \(3,\)", make=lambda: hg.HyperOptimizer(
        problem, constraints={"wd": hg.constraints.box(np.zeros(3), 1.0)}).run(HP, 2, T, **base))  # fmt: skip
    refused(ValueError, r"hparams\['mu'\] starts outside its constraint box\(0, 0.3\)", make=lambda: hg.HyperOptimizer(
        problem, constraints={"mu": hg.constraints.box(0, 0.3)}).run(HP, 2, T, **base))  # fmt: skip
    refused(TypeError, "method must be hg.Reverse", make=lambda: hg.HyperOptimizer(problem, method="reverse"))
    refused(TypeError, "hyper_optimizer must be an optax GradientTransformation", make=lambda: hg.HyperOptimizer(
        problem, hyper_optimizer=optax.adam))  # fmt: skip
    refused(TypeError, "each callback must be", HP, 2, T, callbacks=[3], **base)
    refused(TypeError, r"hparams\['lr'\] is a float", {**HP, "lr": 0.1}, 2, T, **base)


# ----- the README -----------------------------------------------------------------------------------------------


def test_readme_loop_section_runs_as_written(monkeypatch, tmp_path):
    """The quickstart and the loop section executed verbatim, on a 200-image slice of the data to stay quick."""
    import hgkit.datasets
    from hgkit.datasets.mnist import Split

    full = hgkit.datasets.hyper_cleaning_mnist()
    small = Split(*(a[:200] for a in full))
    monkeypatch.setattr(hgkit.datasets, "hyper_cleaning_mnist", lambda: small)
    monkeypatch.chdir(tmp_path)
    quickstart, loop = readme_block("## Quickstart"), readme_block("## The optimization loop")
    namespace: dict = {}
    exec(compile(quickstart + loop, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert len(result.history) == 20 and result.stopped is None
    assert result.history.val_loss.iloc[-1] < result.history.val_loss.iloc[0]
    assert (tmp_path / "runs" / "quickstart" / "hyperopt.npz").exists()
    # The population example of "Many devices and populations", continuing the same session.
    population = readme_block("The loop tunes a population too")
    exec(compile(population, "README.md", "exec"), namespace)
    result, best = namespace["result"], namespace["best"]
    assert len(result.history) == 4 * 20 and result.history.attrs["dropped"] == {}
    assert result.history.groupby("member").val_loss.last().idxmin() == best
