"""The cost, real-time and task-interaction experiments at their SMOKE size: what each must show, and its report."""

import numpy as np
import pandas as pd
import pytest

from hgkit.plot import COST_COLUMNS


def _report_files(module, results, out_dir):
    paths = module.write_report(results, out_dir)
    suffixes = sorted({p.suffix for p in paths})
    assert suffixes == [".csv", ".md", ".png"], paths
    for p in paths:
        assert p.exists() and p.stat().st_size > 0, p
    assert [p for p in paths if p.suffix == ".png"][0].read_bytes()[:4] == b"\x89PNG"
    return paths


# ----- cost ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cost_results():
    from hgkit.experiments import cost

    return cost.run(cost.SMOKE, progress=False)


def test_cost_reverse_memory_grows_by_one_state_per_step_forward_memory_flat(cost_results):
    costs, c = cost_results.costs, cost_results.config
    assert set(COST_COLUMNS) <= set(costs.columns)
    along_T = costs[(costs["m"] == c.m) & (costs["width"] == c.width)].sort_values("T")
    rev, fwd = along_T[along_T["method"] == "reverse"], along_T[along_T["method"] == "forward"]
    assert list(rev["T"]) == list(c.Ts) and list(fwd["T"]) == list(c.Ts)
    # Reverse mode keeps the state of every step: the compiled size grows by |s| bytes per extra step.
    per_step = np.diff(rev["peak_bytes"].to_numpy(float)) / np.diff(rev["T"].to_numpy(float))
    state_bytes = rev["state_bytes"].iloc[0]
    assert np.all(per_step > 0.9 * state_bytes) and np.all(per_step < 1.5 * state_bytes), (per_step, state_bytes)
    # Forward mode carries only the tangents: the same program size whatever T.
    assert fwd["peak_bytes"].nunique() == 1


def test_cost_forward_grows_with_m_reverse_does_not(cost_results):
    costs, c = cost_results.costs, cost_results.config
    along_m = costs[(costs["T"] == c.T) & (costs["width"] == c.width)]
    fwd = along_m[along_m["method"] == "forward"].set_index("m")
    rev = along_m[along_m["method"] == "reverse"].set_index("m")
    small, large = min(c.ms), max(c.ms)
    # Forward mode pushes 1 + m directions per step: m = 16 against m = 1 is ~8.5x the work; ask for 2x.
    assert fwd.loc[large, "seconds"] > 2 * fwd.loc[small, "seconds"]
    assert fwd.loc[large, "peak_bytes"] > (large / small) / 2 * fwd.loc[small, "peak_bytes"]
    assert rev.loc[large, "peak_bytes"] < 1.1 * rev.loc[small, "peak_bytes"]


def test_cost_claims_and_report(cost_results, tmp_path):
    from hgkit.experiments import cost

    claims = cost_results.claims.set_index("claim")
    for claim in ("reverse memory ∝ T", "forward memory flat in T", "forward memory ∝ m", "reverse memory flat in m"):
        assert claims.loc[claim, "holds"] is True, claims.loc[claim]
    assert "claims measured hold" in cost_results.summary()
    paths = _report_files(cost, cost_results, tmp_path)
    table = pd.read_csv([p for p in paths if p.suffix == ".csv"][0])
    assert len(table) == len(cost_results.costs) and set(COST_COLUMNS) <= set(table.columns)


def test_cost_config_refuses_bad_sizes():
    from hgkit.experiments import cost

    with pytest.raises(ValueError, match="Config.ms"):
        cost.Config(ms=(0, 4))
    with pytest.raises(ValueError, match="Config.dtype"):
        cost.Config(dtype="int8")


# ----- real-time tuning -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def realtime_results():
    from hgkit.experiments import realtime_tuning

    return realtime_tuning.run(realtime_tuning.SMOKE, progress=False)


def test_realtime_one_row_per_chunk_hyperparameters_move_validation_improves(realtime_results):
    c = realtime_results.config
    history = realtime_results.rtho.history
    chunks = c.T // c.delta
    assert len(history) == chunks
    assert history["inner_steps"].tolist() == [c.delta * (i + 1) for i in range(chunks)]
    # The first chunk ran under the starting values; by the end each hyperparameter has moved.
    assert history[["lr", "mu", "wd"]].iloc[0].tolist() == pytest.approx([c.lr, c.momentum, c.weight_decay])
    tuned = realtime_results.rtho.hparams
    for name, start in (("lr", c.lr), ("mu", c.momentum), ("wd", c.weight_decay)):
        assert abs(float(tuned[name]) / start - 1) > 0.05, (name, float(tuned[name]), start)
    # Constraints: η and wd positive (log), μ inside (0, 1) (sigmoid), all along the run.
    assert (history["lr"] > 0).all() and (history["wd"] > 0).all()
    assert ((history["mu"] > 0) & (history["mu"] < 1)).all()
    assert history["val_loss"].iloc[-1] < 0.7 * history["val_loss"].iloc[0]
    assert history["val_error"].iloc[-1] < history["val_error"].iloc[0]
    # RTHO's row is the history's last: the validation loss and error at the final weights.
    rtho = realtime_results.table.set_index("method").loc["RTHO"]
    assert rtho[["val_loss", "val_error"]].tolist() == history[["val_loss", "val_error"]].iloc[-1].tolist()


def test_realtime_compares_three_methods_on_equal_compute(realtime_results, tmp_path):
    from hgkit.experiments import realtime_tuning

    c = realtime_results.config
    table = realtime_results.table.set_index("method")
    assert list(table.index) == list(realtime_tuning.METHODS)
    # RTHO and random search are charged (1 + m) T plain steps for m = 3 hyperparameters; fixed T.
    assert table["step_equivalents"].to_dict() == {"fixed": c.T, "RTHO": 4 * c.T, "random search": 4 * c.T}
    runs = realtime_results.curves["random search"]
    assert runs["run"].nunique() == 4 and len(runs) == 4 * (c.T // c.delta)
    # The fixed run keeps the starting values; every method learns well above chance (10 classes).
    assert table.loc["fixed", ["lr", "mu", "wd"]].tolist() == pytest.approx([c.lr, c.momentum, c.weight_decay])
    assert (table["test_accuracy"] > 0.5).all()
    # Random search keeps its best run: no other run ended with a lower validation error.
    ends = runs.groupby("run")["val_error"].last()
    assert table.loc["random search", "val_error"] == pytest.approx(ends.min())
    _report_files(realtime_tuning, realtime_results, tmp_path)
    assert "RTHO" in realtime_results.summary()


# ----- task interactions ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def interaction_results():
    from hgkit.experiments import task_interactions

    return task_interactions.run(task_interactions.SMOKE, progress=False)


def test_task_interactions_C_symmetric_nonnegative_and_learned(interaction_results):
    c = interaction_results.config
    C = interaction_results.C
    assert C.shape == (10, 10)
    np.testing.assert_array_equal(C, C.T)
    assert np.all(np.diag(C) == 0) and np.all(C >= 0) and np.all(C <= c.c_max)
    assert not np.allclose(C[np.triu_indices(10, 1)], c.c0)  # it moved from the uniform start
    learned = interaction_results.learned
    assert float(learned.hparams["wd"]) > 0
    assert learned.history["val_loss"].iloc[-1] < learned.history["val_loss"].iloc[0]
    assert np.all(np.asarray(interaction_results.independent.hparams["C"]) == 0)


def test_task_interactions_table_and_report(interaction_results, tmp_path):
    from hgkit.experiments import task_interactions

    table = interaction_results.table.set_index("method")
    assert list(table.index) == list(task_interactions.METHODS)
    assert (table["wd"] > 0).all()
    assert table.loc["independent", "C_max"] == 0 and table.loc["uniform C", "C_mean"] == pytest.approx(0.1)
    # The learned hyperparameters fit the validation objective they descended at least as well as the start.
    assert table.loc["learned C", "val_loss"] <= table.loc["uniform C", "val_loss"]
    assert ((table["test_accuracy"] > 0.5) & (table["test_task_accuracy"] > 0.9)).all()
    _report_files(task_interactions, interaction_results, tmp_path)
    assert "strongest pairs" in interaction_results.summary()


# ----- a method that fails: its seed's other rows, the report and the exit status --------------------------------


def _reproduce(module, monkeypatch, args):
    """``hgkit reproduce`` through its entry point; the exit status and the Results it wrote (captured)."""
    from hgkit import cli

    runs, run = [], module.run
    monkeypatch.setattr(module, "run", lambda config, **kwargs: runs.append(run(config, **kwargs)) or runs[-1])
    status = cli.main(["reproduce", module.NAME, "--smoke", "--no-progress", *args])
    [results] = runs
    return status, results


def _failure_report(out_dir, name, seed, method, error):
    """The report's failure files say what failed; returns the Markdown."""
    markdown = (out_dir / f"{name}.md").read_text()
    assert "**Incomplete: 1 run failed" in markdown
    failures_section = markdown.split("## Failures")[1]
    assert f"- seed {seed}, {method}: {error}: " in failures_section
    failures = pd.read_csv(out_dir / f"{name}-failures.csv")
    assert failures[["seed", "method", "error"]].values.tolist() == [[seed, method, error]]
    return markdown


def test_realtime_rtho_diverging_keeps_the_other_rows_and_exits_1(realtime_results, tmp_path, monkeypatch, capsys):
    # Adam's step of 20 on log η sends η to ~1e13 in two chunks: the training run itself goes non-finite, which
    # no guard on the hypergradient can survive. The other methods do not use hyper_lr: their rows are SMOKE's.
    from hgkit.experiments import realtime_tuning as rt

    status, results = _reproduce(rt, monkeypatch, ["--out", str(tmp_path), "--set", "hyper_lr=20"])
    assert status == 1
    err = capsys.readouterr().err
    assert "hgkit reproduce real-time: 1 failed\n  seed 0, RTHO: HyperDivergenceError: hyper-iteration " in err
    assert "Traceback" not in err and "--traceback" in err
    _failure_report(tmp_path, rt.NAME, 0, "RTHO", "HyperDivergenceError")
    for png in ("hyperparameters", "validation"):
        assert (tmp_path / f"{rt.NAME}-{png}.png").read_bytes()[:4] == b"\x89PNG"
    # Nothing lost: fixed (before RTHO) and random search (after) are as in a run where RTHO succeeds.
    table = pd.read_csv(tmp_path / f"{rt.NAME}.csv").set_index("method")
    assert list(table.index) == ["fixed", "random search"]
    columns = ["lr", "mu", "wd", "val_loss", "val_error", "test_accuracy", "step_equivalents"]
    expected = realtime_results.table.set_index("method").loc[table.index, columns]
    np.testing.assert_allclose(table[columns].to_numpy(float), expected.to_numpy(float), rtol=1e-6)
    # RTHO's completed chunks are kept as data and drawn.
    [failure] = results.failures
    assert failure.iteration >= 1 and len(failure.partial.history) == failure.iteration
    assert results.rtho is failure.partial and len(results.curves["RTHO"]) == failure.iteration
    assert "RTHO (seed 0): failed; until then" in results.summary()


def test_task_interactions_learned_C_diverging_keeps_the_other_rows_and_exits_1(tmp_path, monkeypatch, capsys):
    # A strong coupling (ρ = 1) and a huge Adam step let the learned C leave the inner step's stable range on its
    # first update; independent tasks (C = 0) and the uniform start (ρ c0 = 0.1) stay stable.
    from hgkit.experiments import task_interactions as ti

    sets = ["--set", "rho=1", "--set", "c_max=100", "--set", "hyper_lr=20"]
    status, results = _reproduce(ti, monkeypatch, ["--out", str(tmp_path), *sets])
    assert status == 1
    assert "  seed 0, learned C: HyperDivergenceError: hyper-iteration " in capsys.readouterr().err
    markdown = _failure_report(tmp_path, ti.NAME, 0, "learned C", "HyperDivergenceError")
    assert "(none: learning C failed)" in markdown
    table = pd.read_csv(tmp_path / f"{ti.NAME}.csv")
    assert table["method"].tolist() == ["independent", "uniform C"]
    assert np.isfinite(table[["val_loss", "test_accuracy"]].to_numpy(float)).all()
    assert (tmp_path / f"{ti.NAME}.png").read_bytes()[:4] == b"\x89PNG"
    assert results.C is None and results.learned is results.failures[0].partial
    assert results.independent.stopped is None  # ran to the end
