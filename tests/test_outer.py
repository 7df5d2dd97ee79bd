"""The hyperparameter optimization loop (hgkit/outer.py, hgkit/_loop_step.py, hgkit/history.py): rows and updates
against the hypergradient they are built on, every kind of method, one compilation, history and callbacks, errors.
(Constraints are tested in test_constraints.py, checkpoints and interrupts in test_checkpoint.py, populations in
test_population.py.)"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from helpers import (
    HP,
    KEY,
    PROBLEM,
    TRAIN,
    VAL,
    loop_problem,
    mlp,
    mlp_init,
    readme_block,
    reference,
    toy_data,
    tree_l2,
    without_wall_time,
)

import hgkit as hg

T = 12
SGD, SGD0 = optax.sgd(0.05), optax.sgd(0.0)
ADAM = optax.adam(1e-2)  # the default


@functools.partial(jax.jit, static_argnames=("problem", "steps"))
def plain_training(problem, hp, steps, train, val, key):
    """The validation loss after each of ``steps`` training steps, and the final weights (no hypergradient)."""

    def step(state, t):
        state, _ = hg.train_step(problem, state, hp, train, t)
        return state, problem.val_loss(state.params, hp, val)

    state, losses = jax.lax.scan(step, hg.initial_state(problem, hp, key), jnp.arange(steps, dtype=jnp.int32))
    return losses, state.params


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
    losses, params = jax.device_get(plain_training(problem, HP, T, train, val, KEY))
    np.testing.assert_allclose(result.history.val_loss, losses[[3, 7, 11]], rtol=1e-12)
    np.testing.assert_allclose(result.state.params["W2"], params["W2"], rtol=1e-12)


def test_warm_restart_continues_training():
    problem, train, val = PROBLEM, TRAIN, VAL
    result = hg.HyperOptimizer(problem, hyper_optimizer=SGD0, warm_restart=True).run(
        HP, hyper_iterations=3, T=4, train_data=train, val_data=val, key=KEY, progress=False
    )
    losses, _ = jax.device_get(plain_training(problem, HP, 12, train, val, KEY))
    np.testing.assert_allclose(result.history.val_loss, losses[[3, 7, 11]], rtol=1e-12)


def test_a_method_of_ones_own_works_in_the_loop():
    @dataclasses.dataclass(frozen=True)
    class Wrapped(hg.HypergradientMethod):  # follows the contract: a frozen subclass with .run
        def run(self, problem, hparams, T, train_data, val_data, *, key=None, init_state=None):
            return hg.Reverse().run(problem, hparams, T, train_data, val_data, key=key, init_state=init_state)

    problem, train, val = PROBLEM, TRAIN, VAL
    a, b = (
        hg.HyperOptimizer(problem, method=m).run(HP, 2, T, train, val, key=KEY, progress=False)
        for m in (Wrapped(), hg.Reverse())
    )
    pd.testing.assert_frame_equal(without_wall_time(a.history), without_wall_time(b.history), check_exact=True)
    assert a.history.attrs["method"] == "Wrapped"


def test_implicit_runs_in_the_loop_as_its_hypergradient():
    """hg.Implicit() in the loop, to the end: row 0 and the first update are those of hg.hypergradient's."""
    x, y = toy_data(n=16, seed=0)
    xv, yv = toy_data(n=16, seed=1)
    problem = hg.BilevelProblem(  # ridge regression: training converges and the Hessian is positive definite
        init=lambda hp, key: jnp.zeros(3),
        train_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2) + jnp.exp(hp["log_wd"]) * jnp.sum(w**2),
        val_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2),
        optimizer=hg.optim.sgd(0.2),
    )
    hp = {"log_wd": jnp.asarray(-1.0)}
    result = hg.HyperOptimizer(problem, method=hg.Implicit(), hyper_optimizer=SGD).run(
        hp, 4, 60, (x, y), (xv, yv), progress=False
    )
    assert result.stopped is None and len(result.history) == 4
    assert result.history.attrs["method"] == hg.Implicit().label
    value, grads = hg.hypergradient(problem, hp, 60, (x, y), (xv, yv), method=hg.Implicit())
    row = result.history.iloc[0]
    assert row["val_loss"] == pytest.approx(float(value), rel=1e-12)
    assert row["grad_norm"] == pytest.approx(abs(float(grads["log_wd"])), rel=1e-12)
    assert result.history["log_wd"][1] == pytest.approx(float(hp["log_wd"] - 0.05 * grads["log_wd"]), rel=1e-12)
    assert abs(float(grads["log_wd"])) > 1e-3  # the update is not a trivial one
    assert result.history.val_loss.iloc[-1] < result.history.val_loss.iloc[0]


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
        "reg/lr.mean", "reg/lr.min", "reg/lr.max", "reg/lr.norm", "reg/lr.q10", "reg/lr.median", "reg/lr.q90",
        "reg/wd", "w2",
    ]  # fmt: skip
    assert h.attrs == {
        "hyperparameters": ["reg/lr", "reg/wd"],
        "scalars": ["reg/wd"],
        "vectors": ["reg/lr"],
        "objectives": ["val_loss.val", "val_loss.train"],
        "metrics": ["w2"],
        "method": "reverse mode",
        "matmul_precision": "highest",
        "hyper_iterations": 3,
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
    assert isinstance(info, hg.RunInfo)
    assert info.hyperparameters == ("lr", "mu", "wd") and info.hyper_iterations == 10
    assert info.population is None and info.method == "reverse mode"
    record = seen[1][1]
    assert type(record["iteration"]) is int and type(record["val_loss"]) is float
    assert record == {k: v for k, v in result.history.iloc[0].items() if k in record} and set(record) == set(
        result.history.columns
    )
    assert seen[-1][1] is result
    # The final snapshot is the last iteration run.
    assert set(result.snapshots) == {0, 2}


def test_same_key_same_history_bit_for_bit():
    problem, train, val = PROBLEM, TRAIN, VAL
    opt = hg.HyperOptimizer(problem)
    a, b, c = (opt.run(HP, 3, T, train, val, key=k, progress=False) for k in (KEY, KEY, jax.random.key(1)))
    pd.testing.assert_frame_equal(without_wall_time(a.history), without_wall_time(b.history), check_exact=True)
    assert not np.array_equal(a.history.val_loss, c.history.val_loss)  # the key changes the inner init


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
    assert err.failure == hg.Failure.TRAINING_NONFINITE and err.step == int(res.failed_at) >= 0
    assert f"hyper-iteration {i}" in str(err) and f"inner step {err.step}" in str(err)
    assert f"lr={float(err.hparams['lr']):.6g}" in str(err)


def test_bad_settings_are_refused_before_anything_runs():
    calls = []
    problem, train, val = loop_problem(counter=calls)
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
    # (The constraints' refusals are in test_constraints.py.)
    refused(
        TypeError, "method must be a hypergradient method", make=lambda: hg.HyperOptimizer(problem, method="reverse")
    )
    refused(TypeError, "hyper_optimizer must be an optax GradientTransformation", make=lambda: hg.HyperOptimizer(
        problem, hyper_optimizer=optax.adam))  # fmt: skip
    refused(TypeError, "each callback must be", HP, 2, T, callbacks=[3], **base)
    refused(TypeError, r"hparams\['lr'\] is a float", {**HP, "lr": 0.1}, 2, T, **base)


# ----- the README -----------------------------------------------------------------------------------------------


def test_readme_loop_section_runs_as_written(readme_quickstart, monkeypatch, tmp_path):
    """The loop section executed verbatim, continuing the quickstart (conftest's ``readme_quickstart``: a 50-image
    slice of the data, to stay quick)."""
    monkeypatch.chdir(tmp_path)
    namespace = dict(readme_quickstart)
    exec(compile(readme_block("## The optimization loop"), "README.md", "exec"), namespace)
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


def test_a_vector_hyperparameter_is_recorded_by_its_distribution():
    """A vector's columns are its mean, extremes, norm and quantiles (what the dashboard's bands draw), as numpy
    computes them: hyper-cleaning's weights keep their mean by construction, so the mean alone shows nothing."""
    from hgkit.history import STATS, vector_stats

    x = np.random.default_rng(0).uniform(size=(7, 3))
    expected = dict(mean=x.mean(), min=x.min(), max=x.max(), norm=np.linalg.norm(x), q10=np.quantile(x, 0.1),
                    median=np.median(x), q90=np.quantile(x, 0.9))  # fmt: skip
    np.testing.assert_allclose(jax.jit(vector_stats)(jnp.asarray(x)), [expected[s] for s in STATS], rtol=1e-12)
