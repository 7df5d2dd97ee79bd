"""Populations in the optimization loop: several starting points (and keys) tuned together in one compiled call.

Member p of a population must run exactly as a separate run from its starting values with the key
``jax.random.split(key, P)[p]`` would: same history, same tuned values, same trained weights. A member that
diverges is frozen and reported while the others go on; checkpoints carry all of it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from helpers import KEY, LOG, PROBLEM, TRAIN, VAL, loop_problem, reference

import hgkit as hg

T = 12
P = 3
STARTS = {"lr": jnp.array([0.05, 0.1, 0.2]), "mu": jnp.array([0.3, 0.5, 0.7]), "wd": jnp.array([0.01, 0.02, 0.03])}
# Member 1 starts with a learning rate at which the inner training overflows in its first run.
BLOWS_UP = {**STARTS, "lr": jnp.array([0.05, 1e30, 0.2])}
CASES = {
    "reverse": dict(method=hg.Reverse(), warm_restart=False, hyper_iterations=5),
    "reverse-warm": dict(method=hg.Reverse(), warm_restart=True, hyper_iterations=4),
    "realtime": dict(method=hg.RealTime(delta=3), warm_restart=False, hyper_iterations=None),
}


def member(tree, p):
    return jax.tree_util.tree_map(lambda x: x[p], tree)


def rows_of(history, p):
    """Member p's rows of a population's history, as a separate run's history would show them."""
    mine = history[history.member == p].drop(columns=["member", "wall_time"])
    return mine.reset_index(drop=True)


def assert_same_as_separate_runs(opt, starts, result, n, members, **kwargs):
    keys = jax.random.split(KEY, P)
    for p in members:
        alone = opt.run(member(starts, p), n, T, TRAIN, VAL, key=keys[p], progress=False, **kwargs)
        pd.testing.assert_frame_equal(rows_of(result.history, p), alone.history.drop(columns="wall_time"), rtol=1e-10)
        for name in starts:
            np.testing.assert_allclose(result.hparams[name][p], alone.hparams[name], rtol=1e-10)
        np.testing.assert_allclose(result.state.params["W1"][p], alone.state.params["W1"], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("case", CASES)
def test_each_member_runs_as_its_separate_run(case):
    settings = dict(CASES[case])
    n = settings.pop("hyper_iterations")
    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG}, **settings)
    result = opt.run(STARTS, n, T, TRAIN, VAL, key=KEY, progress=False, population=P, snapshot_every=2)
    rows = len(result.history) // P
    assert list(result.history.columns[:3]) == ["iteration", "member", "inner_steps"]
    assert list(result.history.member) == list(range(P)) * rows
    assert list(result.history.iteration) == [i for i in range(rows) for _ in range(P)]
    assert result.history.attrs["population"] == P and result.history.attrs["dropped"] == {}
    assert all(np.shape(v) == (P,) for v in result.hparams.values())
    assert all(snap["lr"].shape == (P,) for snap in result.snapshots.values())
    np.testing.assert_array_equal(result.snapshots[0]["lr"], STARTS["lr"])
    assert_same_as_separate_runs(opt, STARTS, result, n, range(P))
    last = result.history.groupby("member").val_loss.last()
    assert result.best_member() == int(np.argmin(last.to_numpy()))
    assert result.best_member("train_loss") == int(np.argmin(result.history.groupby("member").train_loss.last()))


def test_one_compilation_for_the_whole_population_run():
    traces, compiles, marks = [], [], []

    def weight_sum(w, hp):  # traced once per compilation of the step (new here, so nothing is cached yet)
        traces.append(1)
        return jnp.sum(w["W2"])

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(event)

    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG}, metrics={"m": weight_sum})
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        opt.run(STARTS, 5, T, TRAIN, VAL, key=KEY, progress=False, population=P,
                callbacks=lambda r: marks.append(len(compiles)))  # fmt: skip
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert len(marks) == 5 * P and len(traces) == 1
    assert marks[0] >= 1 and marks[-1] == marks[0]  # nothing compiled after the first hyper-iteration


def test_a_diverging_member_is_frozen_and_the_others_go_on():
    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG})
    with pytest.warns(
        RuntimeWarning,
        match=r"population member 1: hyper-iteration 0 \(this inner run\): the training run went non-finite",
    ):
        result = opt.run(BLOWS_UP, 4, T, TRAIN, VAL, key=KEY, progress=False, population=P)
    assert set(result.history.member) == {0, 2} and len(result.history) == 4 * 2
    dropped = result.history.attrs["dropped"]
    assert list(dropped) == [1] and "inner step" in dropped[1]
    # Its step is the first non-finite step of its own run.
    res = reference(PROBLEM, member(BLOWS_UP, 1), T, TRAIN, VAL, key=jax.random.fold_in(jax.random.split(KEY, P)[1], 0))
    assert f"inner step {int(res.failed_at)} " in dropped[1]
    for name in STARTS:  # frozen at its starting values (to rounding: wd goes through exp(log(wd)))
        np.testing.assert_allclose(result.hparams[name][1], BLOWS_UP[name][1], rtol=1e-15)
    assert_same_as_separate_runs(opt, BLOWS_UP, result, 4, (0, 2))
    assert result.best_member() in (0, 2)


def test_when_every_member_diverges_the_run_raises():
    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG})  # the settings of the tests above: compiled already
    starts = {**STARTS, "lr": jnp.array([1e30, 2e30, 3e30])}
    with pytest.warns(RuntimeWarning, match="population member [01]: "), pytest.raises(hg.HyperDivergenceError) as info:
        opt.run(starts, 3, T, TRAIN, VAL, key=KEY, progress=False, population=P)
    err = info.value
    assert "every member of the population diverged; the last, population member 2: hyper-iteration 0" in str(err)
    assert err.iteration == 0 and err.step is not None and float(err.hparams["lr"]) == 3e30
    assert err.result.stopped == "diverged" and len(err.result.history) == 0


def test_interrupt_and_resume_a_population_with_a_dropped_member(tmp_path):
    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG})
    kwargs = dict(key=KEY, progress=False, population=P, checkpoint_every=2, snapshot_every=2)
    with pytest.warns(RuntimeWarning):
        full = opt.run(BLOWS_UP, 6, T, TRAIN, VAL, **kwargs)

    def interrupt(record):
        if record["iteration"] == 3:
            raise KeyboardInterrupt

    with pytest.warns(RuntimeWarning):
        first = opt.run(BLOWS_UP, 6, T, TRAIN, VAL, checkpoint_dir=tmp_path, callbacks=interrupt, **kwargs)
    assert first.stopped == "interrupted"
    resumed = opt.run(BLOWS_UP, 6, T, TRAIN, VAL, checkpoint_dir=tmp_path, **kwargs)  # no second warning
    pd.testing.assert_frame_equal(
        resumed.history.drop(columns="wall_time"), full.history.drop(columns="wall_time"), check_exact=True
    )
    assert resumed.history.attrs["dropped"] == full.history.attrs["dropped"]
    for name in STARTS:
        np.testing.assert_array_equal(resumed.hparams[name], full.hparams[name])
    # A single run cannot resume a population's checkpoint.
    with pytest.raises(ValueError, match="saved by another run"):
        opt.run(member(BLOWS_UP, 0), 6, T, TRAIN, VAL, key=KEY, progress=False, checkpoint_dir=tmp_path)


def test_bad_populations_are_refused_before_anything_runs():
    calls = []
    problem, train, val = loop_problem(counter=calls)
    opt = hg.HyperOptimizer(problem, constraints={"mu": hg.constraints.box(0.0, 0.6)})
    base = dict(train_data=train, val_data=val, progress=False)
    for population, starts, match in [
        (0, STARTS, "population must be None or a positive int"),
        (4, STARTS, r"leading axis of size 4 \(one row per member\); 'lr' has shape \(3,\)"),
        (3, {**STARTS, "wd": jnp.asarray(0.01)}, r"'wd' has shape \(\)"),
        (3, STARTS, r"population member 2: hparams\['mu'\] starts outside its constraint box\(0, 0.6\): array\(0.7\)"),
    ]:
        with pytest.raises(ValueError, match=match):
            opt.run(starts, 2, T, population=population, **base)
    assert calls == []  # the training loss was never even traced
    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG})  # compiled by the tests above
    single = opt.run(member(STARTS, 0), 1, T, TRAIN, VAL, key=KEY, progress=False)
    with pytest.raises(ValueError, match="best_member is for populations"):
        single.best_member()


def test_plots_and_dashboard_show_every_member():
    import io

    from matplotlib.figure import Figure

    import hgkit.plot
    from hgkit.widgets import Dashboard

    printed = io.StringIO()
    board = Dashboard(mode="text", file=printed, min_interval=0.0)
    opt = hg.HyperOptimizer(PROBLEM, constraints={"wd": LOG})
    result = opt.run(STARTS, 3, T, TRAIN, VAL, key=KEY, progress=False, population=P, callbacks=board)
    lines = hgkit.plot.hyperparameters(Figure().subplots(), result, names=["lr"])
    assert [line.get_label() for line in lines] == ["lr", "_nolegend_", "_nolegend_"]
    assert len({line.get_color() for line in lines}) == 1
    for p, line in enumerate(lines):
        np.testing.assert_array_equal(line.get_ydata(), result.history[result.history.member == p].lr)
    assert len(hgkit.plot.losses(Figure().subplots(), result)) == 2 * P
    assert len(hgkit.plot.grad_norms(Figure().subplots(), result, names=["lr", "wd"])) == 3 * P
    hgkit.plot.overview(result)  # every panel draws
    shown = printed.getvalue().splitlines()
    assert "member 2" in shown[-2] and shown[-1] == "[hgkit] finished: 3 hyper-iterations"
    pd.testing.assert_frame_equal(board.history, result.history, check_exact=True)
