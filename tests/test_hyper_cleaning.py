"""The data hyper-cleaning experiment, both protocols (hgkit's and the reference, RFHO's code's): their pieces
against hand-computed values, and a small run of each end to end."""

import contextlib
import dataclasses
import io

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from hgkit import cli, experiments
from hgkit.datasets import corrupt_labels
from hgkit.experiments import hyper_cleaning as hc
from hgkit.experiments import hyper_cleaning_reference as ref
from hgkit.experiments._models import plain_training


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


# ----- the reference protocol (RFHO's data_hypercleaner.py): hgkit reproduce hyper-cleaning --protocol reference -----


@pytest.fixture(scope="module")
def reference_smoke(tmp_path_factory):
    """``hgkit reproduce hyper-cleaning --protocol reference --smoke`` run once: its results, folder and printout."""
    out = tmp_path_factory.mktemp("reference")
    runs, run = [], ref.run
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(ref, "run", lambda config, **kwargs: runs.append(run(config, **kwargs)) or runs[-1])
        status = cli.main(["reproduce", "hyper-cleaning", "--protocol", "reference", "--smoke", "--out", str(out),
                           "--no-progress"])  # fmt: skip
    assert status == 0
    [results] = runs
    return results, out, printed.getvalue()


def test_reference_smoke_via_the_cli_writes_its_own_files(reference_smoke):
    results, out, printed = reference_smoke
    assert results.config == ref.SMOKE
    # Its own names, so that both protocols' reports can share a folder.
    assert sorted(p.name for p in out.iterdir()) == [f"hyper-cleaning-reference.{e}" for e in ("csv", "md", "png")]
    assert (out / "hyper-cleaning-reference.png").read_bytes()[:4] == b"\x89PNG"
    markdown = (out / "hyper-cleaning-reference.md").read_text()
    assert "final round acc. (%)" in markdown and "reference protocol (RFHO)" in markdown
    assert "final round acc. (%)" in printed and ref.TITLE in printed
    table = pd.read_csv(out / "hyper-cleaning-reference.csv")
    assert table[["budget", "seed"]].values.tolist() == [[250.0, 0]]


def test_reference_learned_weights_are_feasible_and_learned_something(reference_smoke):
    results, _, _ = reference_smoke
    budget = ref.SMOKE.budgets[0]
    weights = results.weights[(budget, 0)]
    # The exact projection onto {0 ≤ λ ≤ 1, Σλ ≤ R}; float32 sums, hence the relative 1e-5.
    assert weights.min() >= 0 and weights.max() <= 1 and weights.sum() <= budget * (1 + 1e-5)
    assert (weights == 0).any()  # the lower bound is active: the projection did cut
    [row] = results.table.to_dict("records")
    assert row["val_loss_end"] < row["val_loss_start"]
    corrupted = results.corrupted[0]
    assert weights[corrupted].mean() < weights[~corrupted].mean() - 0.1
    # The history's F1 (of the weights each iteration trained with) ends at the table's F1 of the learned ones or
    # one Adam step behind it.
    history = results.histories[(budget, 0)]
    assert len(history) == ref.SMOKE.hyper_iterations and history["f1"].iloc[0] == 0.0
    assert history["f1"].iloc[-1] == pytest.approx(row["f1"], abs=0.05)
    # The final round's learning rate is lr / max(λ).
    assert row["final_round_lr"] == pytest.approx(ref.SMOKE.lr / weights.max(), rel=1e-6)


def test_reference_comparison_models_train_on_train_and_validation_stacked():
    config = ref.Config()  # the reference's sizes: 5,000 + 5,000, 2,500 corrupted
    data = ref.load_data(config)
    noisy, corrupted = corrupt_labels(np.asarray(data["train"][1]), config.n_corrupt, 10, seed=0)
    x, y = ref.stacked(data, noisy)
    assert x.shape == (10000, 784) and y.shape == (10000,)
    np.testing.assert_array_equal(x[:5000], data["train"][0])
    np.testing.assert_array_equal(x[5000:], data["val"][0])
    np.testing.assert_array_equal(y[:5000], noisy)  # the corrupted training labels
    np.testing.assert_array_equal(y[5000:], data["val"][1])

    learned = np.random.default_rng(0).uniform(0, 0.8, 5000)
    models = ref.comparison_hparams(corrupted, config.n_val, config.lr, learned=learned)
    assert sorted(models) == ["baseline", "final_round", "oracle"]
    assert all(m["weights"].shape == (10000,) for m in models.values())
    # Baseline: 7,500 clean + 2,500 corrupted + ... every weight 1.
    np.testing.assert_array_equal(models["baseline"]["weights"], 1.0)
    # Oracle: the corrupted examples' weights 0, the other 7,500 (2,500 clean training, 5,000 validation) 1.
    oracle = models["oracle"]["weights"]
    assert oracle.sum() == 7500 and (oracle[:5000][corrupted] == 0).all() and (oracle[:5000][~corrupted] == 1).all()
    np.testing.assert_array_equal(oracle[5000:], 1.0)
    assert models["baseline"]["lr"] == models["oracle"]["lr"] == 0.1
    # Final round: λ on the training examples, max(λ) on the validation examples, learning rate 0.1 / max(λ).
    final = models["final_round"]
    np.testing.assert_array_equal(final["weights"][:5000], learned)
    np.testing.assert_array_equal(final["weights"][5000:], learned.max())
    assert final["lr"] == pytest.approx(0.1 / learned.max())
    with pytest.raises(ValueError, match="every learned weight is 0"):
        ref.comparison_hparams(corrupted, 3, 0.1, learned=np.zeros(5000))


def test_reference_inner_learning_rate_is_normalised_by_the_budget():
    assert [ref.normalized_lr(0.1, 5000, r) for r in (1000, 1500, 2000, 2500)] == pytest.approx([0.5, 1 / 3, 0.25, 0.2])
    # What the normalisation is for: one step of the hyper-cleaner at λ = R/N everywhere is one step at lr on the
    # unweighted mean loss.
    rng = np.random.default_rng(0)
    x, y = jnp.asarray(rng.normal(size=(40, 784)), jnp.float32), jnp.asarray(rng.integers(0, 10, 40))
    budget = 12.0
    config = dataclasses.replace(ref.SMOKE, n_train=40, n_corrupt=0, budgets=(budget,))
    loop = ref.hyper_cleaner(config, 784, budget, np.zeros(40, bool))
    start = {"weights": jnp.full(40, budget / 40, jnp.float32)}
    cleaner = plain_training(loop.problem, start, (x, y), 1).state.params
    plain = ref.make_problem(784, 0.1, ref.SMOKE.clip, np.float32)
    step = plain_training(plain, {"weights": jnp.ones(40, jnp.float32)}, (x, y), 1).state.params
    np.testing.assert_allclose(cleaner["W"], step["W"], rtol=1e-5, atol=1e-7)  # float32 rounding of lr·N/R·R/N


def test_reference_loss_is_rfhos_clipped_cross_entropy():
    logits = jnp.array([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]])
    labels = jnp.array([0, 0, 0])
    clipped, exact = ref.losses(1e-5), ref.losses(0.0)
    np.testing.assert_allclose(clipped(logits, labels)[0], np.log(2), rtol=1e-6)  # inside the clip: exact
    assert float(clipped(logits, labels)[2]) == pytest.approx(-np.log(1e-5), rel=1e-6)  # p ≈ e⁻³⁰: capped
    assert float(exact(logits, labels)[2]) == pytest.approx(30.0, rel=1e-6)
    # Outside [1e-5, 1 − 1e-5] the clip stops the gradient, as tf.clip_by_value does.
    grads = jax.grad(lambda z: jnp.sum(clipped(z, labels)))(logits)
    assert float(jnp.abs(grads[1:]).max()) == 0.0 and float(jnp.abs(grads[0]).max()) == pytest.approx(0.5)


def test_reference_adam_is_rfhos():
    """RFHO's Adam (optimizers.py): w ← w − lr·√(1−β₂ᵗ)/(1−β₁ᵗ)·m/√(v + ε), ε = 1e-14 inside the square root,
    by hand in float64 (conftest); optax's own Adam differs where the gradients are as small as ~1e-5."""
    g = np.array([1e-3, -2e-5, 0.0, 4.0])
    lr, b1, b2, eps = 0.005, 0.9, 0.999, ref.ADAM_EPS
    w, m, v = np.zeros(4), np.zeros(4), np.zeros(4)
    tx = ref.rfho_adam(lr)
    u, state = jnp.zeros(4), tx.init(jnp.zeros(4))
    for t in range(1, 4):
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g**2
        w = w - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / np.sqrt(v + eps)
        step, state = tx.update(jnp.asarray(g), state)
        u = u + step
        np.testing.assert_allclose(np.asarray(u), w, rtol=1e-12, atol=1e-15)
    optax_u, optax_state = jnp.zeros(4), optax.adam(lr, eps=0.0, eps_root=eps).init(jnp.zeros(4))
    for _ in range(3):
        step, optax_state = optax.adam(lr, eps=0.0, eps_root=eps).update(jnp.asarray(g), optax_state)
        optax_u = optax_u + step
    # ε against the uncorrected v shrinks the first steps of a 2e-5 gradient (by 0.75 % in three); optax's does not.
    assert abs(float(optax_u[1]) - w[1]) > 1e-4 and abs(float(optax_u[0]) - w[0]) < 1e-6


def test_reference_settings_are_rfho_main():
    full = ref.FULL
    assert (full.T, full.lr, full.hyper_iterations, full.hyper_lr) == (2000, 0.1, 500, 0.005)
    assert full.budgets == (1000.0, 1500.0, 2000.0, 2500.0) and full.clip == 1e-5 and full.threshold == 1e-3
    assert (full.n_train, full.n_val, full.n_test, full.n_corrupt) == (5000, 5000, 10000, 2500)
    # The default shortens the runs only.
    assert dataclasses.replace(ref.DEFAULT, T=2000, hyper_iterations=500, budgets=full.budgets) == full


def test_unknown_protocol_names_the_choices(tmp_path, capsys):
    args = ["reproduce", "hyper-cleaning", "--smoke", "--no-progress", "--out", str(tmp_path)]
    with pytest.raises(SystemExit):
        cli.main(args + ["--protocol", "paper"])
    assert "unknown protocol 'paper' for hyper-cleaning; its protocols are: hgkit, reference" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["reproduce", "cost", "--protocol", "reference"])
    assert "unknown protocol 'reference' for cost; its protocols are: hgkit" in capsys.readouterr().err
    assert experiments.load("hyper-cleaning", "hgkit") is experiments.load("hyper-cleaning") is hc
    assert experiments.load("hyper-cleaning", "reference") is ref
