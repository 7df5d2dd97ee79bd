"""The data hyper-cleaning experiment: its pieces against hand-computed values, and a small run end to end."""

import dataclasses

import numpy as np
import pytest

from hgkit import cli
from hgkit.experiments import hyper_cleaning as hc


def test_detection_scores_against_hand_count():
    weights = np.array([0.0, 0.0, 0.5, 1.0, 0.0, 0.9])
    corrupted = np.array([True, True, True, False, False, False])
    det = hc.detection(weights, corrupted, threshold=1e-3)
    # flagged: 0, 1, 4; true positives 0, 1: precision 2/3, recall 2/3.
    assert det["flagged"] == 3
    assert det["precision"] == pytest.approx(2 / 3) and det["recall"] == pytest.approx(2 / 3)
    assert det["f1"] == pytest.approx(2 / 3)
    assert hc.detection(np.ones(4), np.array([True, False, False, False]), 0.5)["f1"] == 0.0


def test_mean_over_turns_the_weighted_mean_into_a_subset_mean():
    losses = np.array([1.0, 2.0, 3.0, 10.0])
    mask = np.array([True, True, True, False])
    assert np.mean(hc.mean_over(mask) * losses) == pytest.approx(2.0)


def test_config_refuses_an_impossible_budget():
    with pytest.raises(ValueError, match="budgets"):
        hc.Config(budgets=(6000.0,))
    with pytest.raises(ValueError, match="n_corrupt"):
        hc.Config(n_corrupt=5000)
    with pytest.raises(ValueError, match="Config.n_train must be at most 5000 \\(the packaged split\\); got 6000"):
        hc.Config(n_train=6000)


@pytest.fixture(scope="module")
def smoke_results():
    return hc.run(hc.SMOKE, progress=False)


def test_smoke_run_learns_to_distrust_the_corrupted_labels(smoke_results):
    config = hc.SMOKE
    [row] = smoke_results.table.to_dict("records")
    weights = smoke_results.weights[(config.budgets[0], config.seeds[0])]
    corrupted = smoke_results.corrupted[config.seeds[0]]
    # Feasible: the exact projection keeps 0 <= λ <= 1 and Σλ <= R.
    assert weights.min() >= 0 and weights.max() <= 1 and weights.sum() <= config.budgets[0] * (1 + 1e-5)
    # The validation loss went down and the corrupted examples lost weight relative to the clean ones.
    assert row["val_loss_end"] < row["val_loss_start"]
    assert weights[corrupted].mean() < weights[~corrupted].mean() - 0.05
    # The oracle (clean examples only) beats training on everything: the premise of the experiment.
    assert row["oracle_accuracy"] > row["baseline_accuracy"]
    history = smoke_results.histories[(config.budgets[0], config.seeds[0])]
    assert len(history) == config.hyper_iterations


def test_report_files(smoke_results, tmp_path):
    paths = hc.write_report(smoke_results, tmp_path)
    names = sorted(p.name for p in paths)
    # The pattern every experiment follows: NAME.md and NAME.csv (the table), NAME.png (the figure).
    assert names == ["hyper-cleaning.csv", "hyper-cleaning.md", "hyper-cleaning.png"]
    assert all(p.stat().st_size > 0 for p in paths)
    assert (tmp_path / "hyper-cleaning.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (tmp_path / "hyper-cleaning.md").read_text()
    assert "| R |" in markdown and "| budget | seed |" in markdown
    # The Markdown's mean table is the printed one, cell for cell.
    means = smoke_results.means()
    assert " | ".join(str(v) for v in means.iloc[0]) in markdown
    assert means.to_string(index=False) in smoke_results.summary()


def test_cli_smoke_prints_and_writes_the_table(tmp_path, capsys, monkeypatch):
    tiny = dataclasses.replace(hc.SMOKE, hyper_iterations=2, T=5)
    monkeypatch.setattr(hc, "SMOKE", tiny)
    runs, run = [], hc.run
    monkeypatch.setattr(hc, "run", lambda config, **kwargs: runs.append(run(config, **kwargs)) or runs[-1])
    assert (
        cli.main(["reproduce", "hyper-cleaning", "--smoke", "--seeds", "2", "--out", str(tmp_path), "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "baseline acc. (%)" in out and "±" in out  # two seeds: mean ± std
    assert (tmp_path / "hyper-cleaning.csv").read_text().count("\n") == 3  # header + two seeds
    # Every seed's run is kept; the figure shows the largest budget on the last seed.
    [results] = runs
    budget = tiny.budgets[0]
    assert set(results.weights) == set(results.histories) == {(budget, 0), (budget, 1)}
    assert not np.array_equal(results.corrupted[0], results.corrupted[1])
    assert results.headline() == (budget, 1) and results.means()["seeds"].tolist() == [2]


def test_cli_list_and_bad_names(capsys):
    assert cli.main(["reproduce", "--list"]) == 0
    assert "hyper-cleaning" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "no-such-experiment"])
    assert "unknown experiment 'no-such-experiment'" in capsys.readouterr().err


def test_cli_set_overrides_config_fields(tmp_path, capsys):
    args = ["reproduce", "hyper-cleaning", "--smoke", "--out", str(tmp_path), "--no-progress"]
    sets = ["--set", "budgets=200,250", "--set", "T=4", "--set", "hyper_iterations=1"]
    assert cli.main(args + sets) == 0
    out = capsys.readouterr().out
    assert "budgets=(200.0, 250.0)" in out and "T=4," in out
    assert (tmp_path / "hyper-cleaning.csv").read_text().count("\n") == 3  # header + two budgets
    for bad, message in [("T=abc", "expected a int"), ("nope=1", "FIELD one of"), ("budgets=9999", "budgets")]:
        with pytest.raises(SystemExit):
            cli.main(args + ["--set", bad])
        assert message in capsys.readouterr().err
