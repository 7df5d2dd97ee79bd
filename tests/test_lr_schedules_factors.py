"""From MARTHE's lr-schedules protocol to hgkit's, one factor at a time (hgkit reproduce lr-schedules --protocol
factors): each row changes exactly its factor, the two new reference options do what they say, and the command
writes its report."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from hgkit.experiments import lr_schedules as own
from hgkit.experiments import lr_schedules_factors as factors
from hgkit.experiments import lr_schedules_reference as ref
from hgkit.experiments._models import cross_entropy


def _fields(c: ref.Config) -> dict:
    return dataclasses.asdict(c)


def test_each_row_changes_its_factor_alone_to_hgkits_value():
    c = factors.DEFAULT
    base, base_settings = factors.variant(c, "reference")
    assert [s.family for s in base_settings] == list(factors.METHODS)
    assert {s.beta for s in base_settings} == {c.beta} and base.delta == 1 and base.objective_rows == 0
    assert base_settings[0].objective == "train"  # HD reads the training minibatch, as the reference's
    expected = {
        "delta": {"delta": own.DEFAULT.delta},
        "objective": {"objective_rows": own.DEFAULT.n_hyper},
        "width": {"width": own.DEFAULT.width},
        "knobs": {"lr0": own.DEFAULT.lr},
    }
    for factor, change in expected.items():
        config, settings = factors.variant(c, factor)
        diff = {k: v for k, v in _fields(config).items() if _fields(base)[k] != v}
        assert diff == change, factor
        if factor != "knobs":
            assert settings == base_settings, factor
    # The training set: fewer images, the same steps and the same steps between checks (epochs and check_every
    # are how the reference's config says those two).
    small, _ = factors.variant(c, "training-set")
    diff = {k for k, v in _fields(small).items() if _fields(base)[k] != v}
    assert diff == {"n_train", "epochs", "check_every"} and small.n_train == own.DEFAULT.n_train
    assert ref.total_steps(small) == ref.total_steps(base) and ref.check_interval(small) == ref.check_interval(base)
    # The knobs: hgkit's own β (and MARTHE's β_0 and α), nothing else about the methods.
    _, knobs = factors.variant(c, "knobs")
    o = own.DEFAULT
    assert [(s.family, s.discount, s.beta, s.alpha, s.objective) for s in knobs] == [
        ("HD", 0.0, o.hd_beta, None, "train"),
        ("RTHO", 1.0, o.rtho_beta, None, "val"),
        ("MARTHE", "adapt", o.marthe_beta, o.marthe_alpha, "val"),
    ]
    # All: every change at once.
    everything, settings = factors.variant(c, "all")
    assert (everything.delta, everything.objective_rows, everything.width, everything.lr0, everything.n_train) == (
        o.delta, o.n_hyper, o.width, o.lr, o.n_train)  # fmt: skip
    assert settings == knobs
    # The network: hgkit's MLP in place of the reference's, nothing else.
    network, settings = factors.variant(c, "network")
    assert _fields(network) == _fields(dataclasses.replace(base, mlp="hgkit")) and settings == base_settings
    # hgkit: all five, hgkit's MLP, its minibatch and about its steps (the last check within them), checks unchanged.
    whole, settings = factors.variant(c, "hgkit")
    hgkits = dict(mlp="hgkit", batch_size=o.batch_size, epochs=whole.epochs, check_every=whole.check_every)
    assert _fields(whole) == _fields(dataclasses.replace(everything, **hgkits))
    assert o.T - ref.check_interval(base) < ref.total_steps(whole) <= o.T and settings == knobs
    assert ref.check_interval(whole) == ref.check_interval(base)


def test_bad_factors_are_refused_before_any_run():
    with pytest.raises(ValueError, match=r"Config.factors: choose one or more of .*got \['speed'\]"):
        dataclasses.replace(factors.SMOKE, factors=("speed",))
    with pytest.raises(ValueError, match=r"small_train \(5000\) exceeds Config.n_train \(1280\)"):
        dataclasses.replace(factors.SMOKE, small_train=5000)
    with pytest.raises(ValueError, match=r"objective_rows must be an int in \[0, n_val = 256\]"):
        dataclasses.replace(factors.SMOKE, objective_rows=300)


def test_delta_checks_at_the_chunks_that_cross_a_multiple_of_the_interval(mnist_idx):
    c = dataclasses.replace(ref.SMOKE, mnist_dir=str(mnist_idx), delta=2, check_every=0.3)  # interval 3
    assert ref.check_interval(c) == 3
    ctx = ref.Context(c, ref.load_data(c), 0)
    rtho = next(s for s in ref.settings(c) if s.family == "RTHO")
    result, _ = ref.online_result(rtho, ctx, steps=17)
    h = result.history
    assert list(h["inner_steps"]) == list(range(2, 17, 2))  # T rounded down to whole chunks of Δ = 2
    checked = list(h.loc[h["val_accuracy"].notna(), "inner_steps"])
    # The chunk ending at t made steps t − 2 and t − 1: checked when one of them is a multiple of 3.
    assert checked == [t for t in range(2, 17, 2) if (t - 2) % 3 == 0 or (t - 1) % 3 == 0] == [2, 4, 8, 10, 14, 16]
    hd = next(s for s in ref.settings(c) if s.family == "HD")
    result, _ = ref.online_result(hd, ctx, steps=7)
    assert list(result.history["inner_steps"]) == list(range(1, 8))  # HD keeps Δ = 1


def test_objective_rows_is_the_loss_on_the_first_validation_images_for_every_method(mnist_idx):
    c = dataclasses.replace(ref.SMOKE, mnist_dir=str(mnist_idx), objective_rows=100)
    data = ref.load_data(c)
    ctx = ref.Context(c, data, 0)
    x, y = data["val"]
    for family in ("HD", "RTHO"):
        setting = next(s for s in ref.settings(c) if s.family == family)
        result, _ = ref.online_result(setting, ctx, steps=6)
        h = result.history
        (objective,) = h.attrs["objectives"]
        net = result.state.params["net"]
        expected = float(cross_entropy(ctx.apply(net, x[:100]), y[:100]))
        np.testing.assert_allclose(h[objective].iloc[-1], expected, rtol=1e-5)
    np.testing.assert_array_equal(ref.objective_data(setting, ctx)[2][5], jnp.arange(100))


def test_factors_from_the_command_line_write_their_table_and_figures(mnist_idx, tmp_path):
    from hgkit.cli import main

    argv = ["reproduce", "lr-schedules", "--protocol", "factors", "--smoke", "--no-progress", "--out", str(tmp_path),
            "--set", f"mnist_dir={mnist_idx}", "--set", "factors=reference,delta"]  # fmt: skip
    assert main(argv) == 0
    names = {p.name for p in tmp_path.iterdir()}
    stem = factors.NAME
    assert {f"{stem}.md", f"{stem}.csv", f"{stem}-means.png", f"{stem}-schedules.png"} <= names
    table = pd.read_csv(tmp_path / f"{stem}.csv")
    assert list(zip(table["factor"], table["method"], strict=True)) == [
        (f, m) for f in ("reference", "delta") for m in factors.METHODS
    ]
    assert (table["test_accuracy"] > 0.3).all() and not table["diverged"].any()
    # Δ = 2 ends RTHO and MARTHE at the last whole chunk; HD keeps every step.
    steps = table.set_index(["factor", "method"])["steps"]
    assert steps["delta", "HD"] == steps["reference", "HD"] == ref.total_steps(ref.SMOKE)
    assert steps["delta", "RTHO"] == ref.total_steps(ref.SMOKE) // 2 * 2
    # The last check's accuracies beside the accepted point's (which is the best check, so never below it).
    assert (table["val_accuracy"] >= table["last_val_accuracy"]).all()
    text = (tmp_path / f"{stem}.md").read_text()
    assert "at the last check" in text
    assert "Paired differences" in text and "Δ = 2 (RTHO, MARTHE)" in text


def test_means_and_paired_differences_over_seeds():
    rows = [dict(seed=s, factor="reference", method=m, test_accuracy=a)
            for s, accs in enumerate(([0.90, 0.95, 0.93], [0.92, 0.96, 0.95], [0.91, 0.97, 0.94]))
            for m, a in zip(factors.METHODS, accs, strict=True)]  # fmt: skip
    table = pd.DataFrame(rows)
    m = factors.means(table, factors.DEFAULT).iloc[0]
    assert m["order"] == "RTHO > MARTHE > HD" and m["seeds"] == 3
    np.testing.assert_allclose(m["HD"], 0.91)
    # t(0.975, 2) = 4.3027; HD's sd is 0.01: 4.3027 · 0.01 / √3.
    np.testing.assert_allclose(m["HD ±"], 4.302653 * 0.01 / np.sqrt(3), rtol=1e-5)
    d = factors.differences(table, factors.DEFAULT).iloc[0]
    np.testing.assert_allclose(d["RTHO − HD"], 5.0)  # 5, 4, 6 points
    np.testing.assert_allclose(d["RTHO − HD ±"], 4.302653 * 1.0 / np.sqrt(3), rtol=1e-5)
    np.testing.assert_allclose(d["RTHO − MARTHE"], (2 + 1 + 3) / 3)
