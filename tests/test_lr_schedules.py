"""The lr-schedules experiment at its SMOKE size: every method's row, the compute it is charged, the schedules, the
sensitivity sweep and the report files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from hgkit.experiments import lr_schedules as ls


@pytest.fixture(scope="module")
def run_and_phases():
    """The SMOKE run, and what its progress bar said, run by run (recorded beside the bar, which is off here)."""
    phases = []
    real = ls.Progress.run

    def recording(self, what, seed=None):
        phases.append(what)
        return real(self, what, seed)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ls.Progress, "run", recording)
        results = ls.run(ls.SMOKE, progress=False)
    return results, phases


@pytest.fixture(scope="module")
def results(run_and_phases):
    return run_and_phases[0]


def test_every_method_has_a_row_with_its_compute_and_metrics(results):
    c = results.config
    table = results.table.set_index("method")
    assert list(table.index) == list(ls.METHODS)
    cost = ls.step_equivalents(c)
    assert table["step_equivalents"].to_dict() == cost
    # Random search gets the most expensive method's compute, in whole runs of T steps.
    others = max(v for k, v in cost.items() if k != "random search")
    assert others - c.T < cost["random search"] <= others
    assert len(results.draws) == cost["random search"] // c.T
    assert not table["diverged"].any()
    for column in ("val_loss", "val_error", "test_accuracy", "wall_time"):
        assert np.isfinite(table[column].to_numpy(float)).all(), column
    assert (table["test_accuracy"] > 0.3).all()  # well above chance (10 classes) even at smoke size
    assert table.loc["fixed", "lr_start"] in c.grid
    assert table.loc["cosine", "lr_start"] == table.loc["fixed", "lr_start"]
    for method in ls.ONLINE:  # every online method starts from the same η and moved it
        assert table.loc[method, "lr_start"] == pytest.approx(c.lr)
        assert table.loc[method, "lr_end"] != pytest.approx(c.lr, rel=1e-6), method


def test_schedules_of_every_method(results):
    c = results.config
    assert set(results.curves) == set(ls.METHODS)
    for method, curve in results.curves.items():
        assert {"inner_steps", "lr", "val_loss"} <= set(curve.columns), method
        assert curve["inner_steps"].iloc[-1] == c.T, method
    assert len(results.curves["hypergradient descent"]) == c.T  # Δ = 1: one update per step
    assert len(results.curves["RTHO"]) == len(results.curves["MARTHE"]) == c.T // c.delta
    cosine = results.curves["cosine"]["lr"].to_numpy()
    assert np.all(np.diff(cosine) < 0)  # decays
    labels = {m: r.history.attrs["method"] for m, r in results.online.items()}
    assert labels == {
        "hypergradient descent": "hypergradient descent (Δ = 1)",
        "RTHO": f"RTHO (Δ = {c.delta})",
        "MARTHE": f"MARTHE (Δ = {c.delta})",
    }


def test_sensitivity_sweep_and_report(results, tmp_path):
    c = results.config
    sweep = results.sweep
    assert len(sweep) == len(ls.ONLINE) * len(c.sweep)
    assert set(sweep["method"]) == set(ls.ONLINE) and set(sweep["factor"]) == set(c.sweep)
    main = results.table.set_index("method")
    at_one = sweep[sweep["factor"] == 1.0].set_index("method")
    for method in ls.ONLINE:  # factor 1 is the main run
        assert at_one.loc[method, "test_accuracy"] == main.loc[method, "test_accuracy"]
    paths = ls.write_report(results, tmp_path)
    assert sorted(p.name for p in paths) == sorted(
        ["lr-schedules.md", "lr-schedules.csv", "lr-schedules-schedules.png", "lr-schedules-sensitivity.png"]
    )
    assert all(p.stat().st_size > 0 for p in paths)
    assert len(pd.read_csv(tmp_path / "lr-schedules.csv")) == len(results.table)
    assert "MARTHE" in results.summary() and "Sensitivity" in results.summary()
    picked = results.by_loss()  # random search judged by the online methods' kind of objective
    assert list(picked["seed"]) == list(c.seeds)
    assert picked["val_loss"].iloc[0] == results.draws["val_loss"].min()


def test_online_settings_scale_each_hyper_learning_rate():
    base, scaled = ls.online_settings(ls.SMOKE), ls.online_settings(ls.SMOKE, 10.0)
    assert [m for m in base] == list(ls.ONLINE)
    for method in ls.ONLINE:
        assert scaled[method][2] == pytest.approx(10 * base[method][2])
        assert scaled[method][0] == base[method][0]  # the same hg.RealTime
    assert base["hypergradient descent"][0].delta == 1 and base["hypergradient descent"][0].discount == 0.0
    assert base["RTHO"][0].discount == 1.0 and base["MARTHE"][0].discount == "adapt"


def test_cosine_schedule_and_compute():
    lr = ls.cosine(100)
    assert [round(float(lr(ls.hp_of(0.2, 1.0), s)), 6) for s in (0, 50, 100)] == [0.2, 0.1, 0.0]
    assert [round(float(lr(ls.hp_of(0.2, 0.0), s)), 6) for s in (0, 50, 100)] == [0.2, 0.2, 0.2]
    c = dataclasses.replace(ls.SMOKE, T=1000, delta=10, n_hyper=500, batch_size=100, grid=(0.1, 0.3, 1.0))
    cost = ls.step_equivalents(c)
    assert cost["hypergradient descent"] == 1000 * (2 + 5)  # a step, a tangent and a read-out on 500 images
    assert cost["RTHO"] == 1000 * 2 + 100 * 5 and cost["MARTHE"] == cost["RTHO"] + 100
    assert cost["fixed"] == 3000 and cost["cosine"] == 4000 and cost["random search"] == 7000


def test_config_refuses_bad_settings():
    for kwargs, match in [
        (dict(delta=7), "must divide Config.T"),
        (dict(sweep=(0.5, 2.0)), "must contain 1.0"),
        (dict(n_hyper=600), "n_hyper"),
        (dict(grid=()), "Config.grid"),
        (dict(momentum=1.0), "momentum"),
        (dict(lr_range=(0.1, 0.01)), "lr_range"),
    ]:
        with pytest.raises(ValueError, match=match):
            dataclasses.replace(ls.SMOKE, **kwargs)


def test_the_progress_bar_names_every_training_run_as_it_goes(run_and_phases):
    """Not only the online runs (which a dashboard shows): the grid and cosine decay before them and random search
    after them say what runs, so that no phase of the run passes without a sign of progress."""
    results, phases = run_and_phases
    c = results.config
    best = results.table.set_index("method").loc["fixed", "lr_start"]
    draws = results.draws["lr"].tolist()
    assert phases == [
        *(f"training the fixed-η grid, η = {lr:g} ({k + 1} of {len(c.grid)})" for k, lr in enumerate(c.grid)),
        f"training with cosine decay from η = {best:g}",
        *(f"{m}, an online schedule ({k + 1} of 3)" for k, m in enumerate(ls.ONLINE)),
        *(f"random search, η = {lr:.3g} ({k + 1} of {len(draws)})" for k, lr in enumerate(draws)),
    ]
    bar = ls.Progress(c, enabled=False)
    assert bar.bar.total == len(phases)  # the bar's total is the runs it will see
    swept = ls.Progress(dataclasses.replace(c, sweep=(0.1, 1.0, 10.0)), enabled=False)
    assert swept.bar.total == len(phases) + 2 * len(ls.ONLINE)


def test_a_notebook_shows_rendered_tables_with_readable_learning_rates(results):
    markdown = results._repr_markdown_()
    assert markdown.startswith(f"**{ls.TITLE}**\n\n")
    assert "\n\n| method | test_accuracy |" in markdown  # a table Markdown renders: blank line before it
    assert "Not run: `config.sweep` has the factor 1 alone" in markdown  # SMOKE's sweep is (1.0,)
    assert repr(results) == results.summary()  # printed short, not the dataclass's fields
    html = ls.styled(results.table).to_html()
    table = results.table.set_index("method")
    cosine_end = table.loc["cosine", "lr_end"]  # cosine decay ends near 0: 2.06e-05 in pandas' own format
    assert ls._eta(cosine_end) in html and "e-0" not in ls._eta(cosine_end)
    assert "e+" not in html and ">nan<" not in html  # no float column in scientific notation; NaN as a dash
    assert ls._eta(3e-3) == "0.003" and ls._eta(2.0625e-5) == "2.06e-5" and ls._eta(float("nan")) == "–"
    assert f"{table.loc['fixed', 'wall_time']:.1f} s" in html


def test_figures_keep_their_legends_off_the_curves(results):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = ls.draw_schedules(fig, results)
    FigureCanvasAgg(fig).draw()
    legend = axes["val_loss"].get_legend().get_window_extent()
    assert legend.x0 >= axes["val_loss"].get_window_extent().x1  # at the right of the panels
    assert axes["lr"].get_legend() is None
    # With one factor on β, the sensitivity panels say there is nothing to compare instead of one point each.
    fig = Figure(figsize=(12, 4.2), layout="constrained")
    axes = ls.draw_sensitivity(fig, results)
    for ax in axes.values():
        assert not ax.get_lines() and "one factor on β only" in ax.texts[0].get_text()


# ----- the reference protocol: hgkit reproduce lr-schedules --protocol reference --------------------------------


def _reference_early_stopping(values, patience):
    """``marthe/utils.py`` ``early_stopping`` (lucfra/Marthe-TF, l. 228-266), transcribed, and driven as
    ``mnist_exp`` drives it (``for i in es: ... es.send(validation_accuracy)``) with a check at every iteration:
    the index of the last accepted check and of the last check made."""
    accepted, checks = [], []

    def early_stopping(patience, maxiters, on_accept):
        val, pat, t = None, patience, 0
        while pat and t < maxiters:
            new_val = yield t
            if new_val is not None:
                if val is None or new_val > val:
                    val, pat = new_val, patience
                    on_accept(t)
                else:
                    pat -= 1
            else:
                t += 1
        yield t

    es = early_stopping(patience, len(values), accepted.append)
    for i in es:
        if i >= len(values):  # the generator's last yield (the reference runs one more step there)
            break
        checks.append(i)
        try:
            es.send(values[i])
        except StopIteration:
            pass
    return accepted[-1], checks[-1]


def test_reference_early_stopping_matches_the_authors_rule():
    from hgkit.experiments import lr_schedules_reference as ref

    rng = np.random.default_rng(0)
    for trial in range(200):
        values = rng.integers(0, 6, size=rng.integers(1, 40)).astype(float)  # many ties: ties do not reset
        patience = int(rng.integers(1, 6))
        assert ref.early_stopping(values, patience) == _reference_early_stopping(values, patience), (trial, patience)
    # By hand: 0.4 accepted at index 3; a tie (index 4) and a drop (index 5) use the patience of 2: stop at 5.
    assert ref.early_stopping([0.1, 0.3, 0.2, 0.4, 0.4, 0.1, 0.9], 2) == (3, 5)
    rule = ref.EarlyStopping(2)
    stops = [rule.update(v, step=10 * k, test=v / 2) for k, v in enumerate([0.5, 0.7, 0.6, 0.7])]
    assert stops == [False, False, False, True] and rule.accepted == dict(check=1, value=0.7, step=10, test=0.35)


def test_reference_hd_reads_the_training_minibatch_and_the_others_a_validation_one(mnist_idx):
    """HD's E after hyper-iteration k is the training loss on the minibatch of step k + 1 at w_{k+1}, which is the
    training loss hyper-iteration k + 1 reports (the same number); the validation E is not."""
    from hgkit.experiments import lr_schedules_reference as ref

    c = dataclasses.replace(ref.SMOKE, mnist_dir=str(mnist_idx))
    ctx = ref.Context(c, ref.load_data(c), 0)
    hd, val = (next(s for s in ref.settings(c) if s.family == f) for f in ("HD", "RTHO"))
    assert hd.objective == "train" and hd.discount == 0.0 and val.objective == "val"
    histories = {}
    for setting in (hd, val):
        result, _ = ref.online_result(setting, ctx, steps=8)
        histories[setting.family] = h = result.history
        (objective,) = h.attrs["objectives"]
        histories[setting.family] = (h[objective].to_numpy(), h["train_loss"].to_numpy())
    E, train = histories["HD"]
    np.testing.assert_allclose(E[:-1], train[1:], rtol=1e-6)
    E, train = histories["RTHO"]
    assert np.max(np.abs(E[:-1] - train[1:])) > 1e-3
    # The minibatch tables: E of HD uses the training order, the others a validation order of their own.
    assert ctx.train_order.shape == ctx.val_order.shape == (ref.total_steps(c) + 1, c.batch_size)
    assert int(ctx.val_order.max()) < c.n_val


def test_reference_plain_schedules_and_learning_rate_free_optimizers(mnist_idx):
    from hgkit.experiments import lr_schedules_reference as ref

    c = dataclasses.replace(ref.SMOKE, mnist_dir=str(mnist_idx), decay_lrs=(0.1,), decay_rates=(0.5,),
                            lr_free=("schedule_free_sgd",))  # fmt: skip
    ctx = ref.Context(c, ref.load_data(c), 0)
    per_epoch = ref.iterations_per_epoch(c)
    for setting in ref.settings(c):
        if setting.family not in ("staircase decay", "exponential decay", "schedule_free_sgd"):
            continue
        row, checks, schedule = ref.run_plain(setting, ctx)
        assert row["steps"] == checks["step"].iloc[-1] and row["step_equivalents"] == row["steps"]
        assert row["test_accuracy"] == checks.loc[checks["val_accuracy"].idxmax(), "test_accuracy"]
        if setting.family == "schedule_free_sgd":
            assert schedule is None
            continue
        t = np.arange(row["steps"]) / per_epoch
        expected = 0.1 * 0.5 ** (np.floor(t) if setting.family == "staircase decay" else t)
        np.testing.assert_allclose(schedule, expected, rtol=1e-5)


def test_reference_protocol_from_the_command_line_writes_its_table_and_figures(mnist_idx, tmp_path):
    from hgkit.cli import main
    from hgkit.experiments import lr_schedules_reference as ref

    argv = ["reproduce", "lr-schedules", "--protocol", "reference", "--smoke", "--no-progress", "--out",
            str(tmp_path), "--set", f"mnist_dir={mnist_idx}"]  # fmt: skip
    assert main(argv) == 0
    names = {p.name for p in tmp_path.iterdir()}
    assert {f"{ref.NAME}.md", f"{ref.NAME}.csv", f"{ref.NAME}-best-so-far.png", f"{ref.NAME}-schedules.png"} <= names
    table = pd.read_csv(tmp_path / f"{ref.NAME}.csv")
    assert list(table["setting"]) == [s.label for s in ref.settings(ref.SMOKE)]
    assert set(table["family"]) == {"HD", "RTHO", "MARTHE", "fixed η"}
    assert (table["test_accuracy"] > 0.3).all() and not table["diverged"].any()
    costs = dict(zip(table["family"], table["step_cost"], strict=True))
    assert costs == {"HD": 3.0, "RTHO": 3.0, "MARTHE": 4.0, "fixed η": 1.0}
    np.testing.assert_array_equal(table["step_equivalents"], table["steps"] * table["step_cost"])
    assert (table["clipped"] >= 0).all()
    text = (tmp_path / f"{ref.NAME}.md").read_text()
    assert "Departures from the reference" in text and "A_tᵀ Z" in text


def test_reference_data_route_says_how_to_provide_mnist(monkeypatch, tmp_path):
    from hgkit.datasets import DownloadError
    from hgkit.experiments import lr_schedules_reference as ref

    def offline(*args, **kwargs):
        raise DownloadError("mnist", "train-images-idx3-ubyte.gz", [("https://example", "no network")])

    monkeypatch.setattr("hgkit.datasets.load_mnist", offline)
    with pytest.raises(RuntimeError, match="--set mnist_dir=PATH"):
        ref.load_data(ref.SMOKE)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        ref.load_data(dataclasses.replace(ref.SMOKE, mnist_dir=str(tmp_path / "nowhere")))


def test_reference_over_seeds_takes_each_seeds_best_configuration_by_validation():
    from hgkit.experiments import lr_schedules_reference as ref

    rows = []
    # Per seed and family two β; the one with the better *validation* accuracy is the family's on that seed.
    for seed, (hd, rtho, marthe) in enumerate(((0.95, 0.97, 0.96), (0.94, 0.98, 0.97), (0.96, 0.99, 0.95))):
        for family, test in (("HD", hd), ("RTHO", rtho), ("MARTHE", marthe)):
            rows.append(dict(seed=seed, family=family, setting=f"{family} a", val_accuracy=0.9, test_accuracy=test,
                             accepted_step=10, step_equivalents=30))  # fmt: skip
            rows.append(dict(seed=seed, family=family, setting=f"{family} b", val_accuracy=0.5, test_accuracy=1.0,
                             accepted_step=10, step_equivalents=30))  # fmt: skip
    results = ref.Results(dataclasses.replace(ref.SMOKE, seeds=(0, 1, 2)), pd.DataFrame(rows), {}, {})
    table = results.over_seeds().set_index("family")
    np.testing.assert_allclose(table.loc["RTHO", "test_accuracy"], 0.98)  # never the "b" rows' 1.0
    np.testing.assert_allclose(table.loc["RTHO", "test_half_width"], 4.302653 * 0.01 / np.sqrt(3), rtol=1e-5)
    assert (table["seeds"] == 3).all() and (table["val_half_width"] == 0).all()
    d = results.differences().iloc[0]
    np.testing.assert_allclose([d["RTHO − HD"], d["MARTHE − HD"], d["RTHO − MARTHE"]], [3.0, 1.0, 2.0])
    assert "Paired differences" in results.summary()


def test_reference_packaged_data_is_the_packaged_split_and_bad_choices_are_refused():
    from hgkit.datasets import hyper_cleaning_mnist
    from hgkit.experiments import lr_schedules_reference as ref

    c = dataclasses.replace(ref.SMOKE, data="packaged")
    data = ref.load_data(c)  # no download, no mnist_dir
    split = hyper_cleaning_mnist()
    np.testing.assert_array_equal(data["train"][0], split.x_train[: c.n_train])
    np.testing.assert_array_equal(data["val"][1], split.y_val[: c.n_val])
    assert data["test"][0].shape == (c.n_test, 784)
    with pytest.raises(ValueError, match=r"Config.data must be one of \('full', 'packaged'\); got 'cifar'"):
        dataclasses.replace(ref.SMOKE, data="cifar")
    with pytest.raises(ValueError, match=r"Config.n_train must be at most 5000 \(the packaged split\); got 55000"):
        dataclasses.replace(ref.DEFAULT, data="packaged")
    assert ref.LESSON.data == "packaged" and ref.total_steps(ref.LESSON) == 775


def test_reference_mlp_hgkit_is_hgkits_own_network():
    import jax
    import jax.numpy as jnp

    from hgkit.experiments import _models
    from hgkit.experiments import lr_schedules_reference as ref

    key, x = jax.random.key(0), jnp.linspace(0, 1, 2 * 784, dtype=jnp.float32).reshape(2, 784)
    init, apply = ref.network(dataclasses.replace(ref.SMOKE, mlp="hgkit"))
    params = init(key)
    expected = _models.mlp_init(key, 784, ref.SMOKE.width, 10)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, expected))
    np.testing.assert_array_equal(apply(params, x), _models.mlp(params, x))  # tanh, not the reference's ReLU
    _, reference_apply = ref.network(ref.SMOKE)
    assert not np.allclose(reference_apply(params, x), apply(params, x))
    with pytest.raises(ValueError, match="Config.mlp must be 'reference' or 'hgkit'; got 'resnet'"):
        dataclasses.replace(ref.SMOKE, mlp="resnet")
