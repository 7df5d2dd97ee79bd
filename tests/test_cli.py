"""``hgkit reproduce`` when something fails part way: every row it has is written, each failure (seed, method,
error) is listed in the report and printed on one line, and the exit status is 1; without a failure, status 0 and
the usual files. Tiny configs and injected failures, so each test takes seconds (the real divergences through
``--set`` are in test_experiments_exps.py)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from hgkit import cli
from hgkit.experiments import cost
from hgkit.experiments import hyper_cleaning as hc
from hgkit.experiments import lr_schedules as ls


@pytest.fixture
def tiny_cleaning(monkeypatch):
    monkeypatch.setattr(hc, "SMOKE", dataclasses.replace(hc.SMOKE, hyper_iterations=2, T=5))


def _reproduce(name, out, *args):
    return cli.main(["reproduce", name, "--smoke", "--no-progress", "--out", str(out), *args])


def _fail_on_seed(monkeypatch, module, name, seed, error):
    """Make ``module.name`` raise ``error`` when called with ``seed=seed``."""
    real = getattr(module, name)

    def failing(*args, **kwargs):
        if kwargs.get("seed") == seed:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, failing)


def test_a_failed_seed_keeps_the_others_and_a_clean_rerun_exits_0(tiny_cleaning, tmp_path, monkeypatch, capsys):
    with monkeypatch.context() as patch:
        _fail_on_seed(patch, hc, "corrupt_labels", 0, ValueError("no labels to corrupt"))
        assert _reproduce("hyper-cleaning", tmp_path, "--seeds", "2") == 1
    err = capsys.readouterr().err
    assert "hyper-cleaning: 1 failed\n  seed 0, all methods: ValueError: no labels to corrupt\n" in err
    assert pd.read_csv(tmp_path / "hyper-cleaning.csv")["seed"].tolist() == [1]  # the later seed went on
    assert "- seed 0, all methods: ValueError: no labels to corrupt" in (tmp_path / "hyper-cleaning.md").read_text()
    assert (tmp_path / "hyper-cleaning.png").exists() and (tmp_path / "hyper-cleaning-failures.csv").exists()

    # The same command without the failure: status 0, the usual files, and the stale failure list removed.
    assert _reproduce("hyper-cleaning", tmp_path, "--seeds", "2") == 0
    assert capsys.readouterr().err == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hyper-cleaning.csv",
        "hyper-cleaning.md",
        "hyper-cleaning.png",
    ]
    markdown = (tmp_path / "hyper-cleaning.md").read_text()
    assert "Failures" not in markdown and "Incomplete" not in markdown
    assert pd.read_csv(tmp_path / "hyper-cleaning.csv")["seed"].tolist() == [0, 1]


def test_a_failed_method_is_one_line_and_traceback_shows_where(tiny_cleaning, tmp_path, monkeypatch, capsys):
    real, calls = hc.train, []

    def no_baseline(problem, weights, T, train_data):  # the seed's first training is the baseline
        calls.append(T)
        if len(calls) == 1:
            raise FloatingPointError("baseline went non-finite")
        return real(problem, weights, T, train_data)

    monkeypatch.setattr(hc, "train", no_baseline)
    assert _reproduce("hyper-cleaning", tmp_path) == 1
    err = capsys.readouterr().err
    assert err.count("\n  seed 0, baseline: FloatingPointError: baseline went non-finite\n") == 1
    assert "Traceback" not in err
    table = pd.read_csv(tmp_path / "hyper-cleaning.csv")  # the budget's row, its baseline accuracy missing
    assert len(table) == 1 and table["baseline_accuracy"].isna().all() and table["cleaned_accuracy"].notna().all()

    calls.clear()
    assert _reproduce("hyper-cleaning", tmp_path, "--traceback") == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "in no_baseline" in err
    assert "  seed 0, baseline: FloatingPointError: baseline went non-finite" in err


def test_an_error_before_any_result_is_one_line_and_status_1(tiny_cleaning, tmp_path, monkeypatch, capsys):
    def no_data(config):
        raise OSError("the packaged MNIST is missing")

    monkeypatch.setattr(hc, "load_data", no_data)
    assert _reproduce("hyper-cleaning", tmp_path) == 1
    err = capsys.readouterr().err
    assert "  before any result: OSError: the packaged MNIST is missing" in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_lr_schedules_cosine_is_not_run_when_fixed_fails(tmp_path, monkeypatch, capsys):
    # Cosine decays from the grid's best η, so it depends on "fixed"; the online methods and random search do not.
    real = ls.train_plain

    def no_grid(problem, batch, lr, config, data, key, decay=0.0):
        if lr in config.grid and decay == 0.0:
            raise ValueError("grid run failed")
        return real(problem, batch, lr, config, data, key, decay)

    monkeypatch.setattr(ls, "train_plain", no_grid)
    assert _reproduce("lr-schedules", tmp_path) == 1
    err = capsys.readouterr().err
    assert "  seed 0, fixed: ValueError: grid run failed\n  seed 0, cosine: not run: " in err
    table = pd.read_csv(tmp_path / "lr-schedules.csv")
    assert table["method"].tolist() == [*ls.ONLINE, "random search"]
    failures = pd.read_csv(tmp_path / "lr-schedules-failures.csv")
    assert failures[["method", "error"]].values.tolist() == [["fixed", "ValueError"], ["cosine", "not run"]]
    for png in ("schedules", "sensitivity"):
        assert (tmp_path / f"lr-schedules-{png}.png").exists()


def test_cost_keeps_the_other_points_and_their_claims(tmp_path, monkeypatch, capsys):
    tiny = cost.Config(Ts=(4, 8), ms=(1, 2), widths=(4,), T=4, m=1, width=4, examples=16, repeats=1)
    monkeypatch.setattr(cost, "SMOKE", tiny)
    real = cost.measure

    def failing(config, method, T, m, width):
        if (method, T) == ("forward", 8):
            raise MemoryError("out of memory")
        return real(config, method, T, m, width)

    monkeypatch.setattr(cost, "measure", failing)
    assert _reproduce("cost", tmp_path) == 1
    assert "  seed 0, forward at T=8, m=1, width=4: MemoryError: out of memory" in capsys.readouterr().err
    table = pd.read_csv(tmp_path / "cost.csv")
    assert len(table) == 2 * len(tiny.points()) - 1
    assert "## The paper's claims" in (tmp_path / "cost.md").read_text()
