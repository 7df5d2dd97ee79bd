"""The plot helpers draw what the history says: asserted on the artists' data, labels, scales and colours.

One section per module of ``hgkit.plot``: ``panels`` (the history's panels and the overview), ``snapshots``
(schedule, per-example weights), ``cost`` (cost curves). The history is made as the loop makes it (its rows and
columns by ``hgkit.history.RunInfo``), by a short hand-written hyperparameter descent that calls the real
``hg.hypergradient_result`` (the outer loop itself is tested elsewhere).
"""

from __future__ import annotations

import functools
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pandas as pd
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from helpers import toy_data  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import hgkit as hg  # noqa: E402
from hgkit import plot  # noqa: E402
from hgkit.history import RunInfo, StepReport, vector_stats  # noqa: E402

T = 8
N = 12
CORRUPTED = np.arange(N) % 3 == 0  # every third training label is flipped


def _problem():
    def loss(w, x, y, weights):
        return jnp.sum(weights * (x @ w - y) ** 2) / jnp.sum(weights)

    def train_loss(w, hp, batch):
        return loss(w, *batch, hp["ex_w"]) + hp["wd"] * jnp.sum(w**2)

    return hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(3, hp["mu"].dtype),
        train_loss=train_loss,
        val_loss=lambda w, hp, batch: jnp.mean((batch[0] @ w - batch[1]) ** 2),
        optimizer=hg.optim.momentum(lr=lambda hp, t: hp["sched"][t], momentum="mu"),
    )


PROBLEM = _problem()


@functools.partial(jax.jit, static_argnames=("T",))
def _hypergradient(hp, T, train, val):
    return hg.hypergradient_result(PROBLEM, hp, T, train, val)


def hand_run(iterations=6, step=0.05):
    """A short projected hypergradient descent, recorded row by row as the loop records them (RunInfo.record)."""
    x, y = toy_data(n=N, d=3, seed=0)
    y = jnp.where(jnp.asarray(CORRUPTED), -y, y)
    x_val, y_val = toy_data(n=10, d=3, seed=1)
    x_test, y_test = toy_data(n=10, d=3, seed=2)
    hp = {
        "ex_w": jnp.ones(N),
        "mu": jnp.asarray(0.5),
        "sched": jnp.full(T, 0.2),
        "wd": jnp.asarray(0.01),
    }
    info = RunInfo.create(hp, ["val"], metrics=["test_loss"], hyper_iterations=iterations, method="reverse mode")
    names, vectors = info.hyperparameters, info.vectors  # ex_w, mu, sched, wd: jax's order of the leaves
    rows, snapshots, start = [], {}, time.perf_counter()
    for k in range(iterations):
        r = _hypergradient(hp, T, (x, y), (x_val, y_val))
        grads = [np.asarray(r.grads[n]) for n in names]
        report = StepReport(
            values=(r.value,),
            train_loss=r.train_losses[-1],
            grad_norm=np.sqrt(sum(np.sum(g**2) for g in grads)),
            grad_norms=tuple(np.linalg.norm(g) for g in grads),
            hp=tuple(vector_stats(hp[n]) if n in vectors else hp[n] for n in names),
            metrics=(jnp.mean((x_test @ r.state.params - y_test) ** 2),),
            failure=0,
            failed_at=-1,
            solve_residual=None,
        )
        rows.append(info.record(k, (k + 1) * T, time.perf_counter() - start, report))
        snapshots[k] = {n: np.asarray(hp[n]).copy() for n in vectors}
        hp = {n: hp[n] - step * r.grads[n] for n in names}
        hp = {**hp, "ex_w": jnp.clip(hp["ex_w"], 0, 1), "mu": jnp.clip(hp["mu"], 0, 0.99), "wd": jnp.abs(hp["wd"])}
    history = info.frame(rows)
    return types.SimpleNamespace(hparams=hp, history=history, snapshots=snapshots, state=r.state, stopped=None)


@pytest.fixture(scope="module")
def run():
    return hand_run()


@pytest.fixture
def ax():
    return Figure().subplots()


def same_color(a, b):
    return to_rgba(a) == to_rgba(b)


# ----- hgkit.plot.panels -------------------------------------------------------------------------------------


def test_the_hand_run_follows_the_contract(run):
    h = run.history
    assert h.attrs["vectors"] == ["ex_w", "sched"] and h.attrs["metrics"] == ["test_loss"]
    assert h["iteration"].tolist() == list(range(6))
    assert h["inner_steps"].tolist() == [T * (k + 1) for k in range(6)]
    assert np.all(np.diff(h["wall_time"]) > 0)
    per_hp = np.sqrt(sum(h[f"grad_norm.{n}"] ** 2 for n in h.attrs["hyperparameters"]))
    np.testing.assert_allclose(h["grad_norm"], per_hp, rtol=1e-12)
    assert h["val_loss"].iloc[-1] < h["val_loss"].iloc[0]  # the hand-written descent does descend


def test_hyperparameters_draws_scalars_as_lines_and_vectors_as_their_distribution(run, ax):
    h = run.history
    artists = plot.hyperparameters(ax, h, ["mu", "ex_w"])
    mu, ex_median, ex_quantiles, ex_range = artists
    np.testing.assert_array_equal(mu.get_xdata(), h["iteration"])
    np.testing.assert_array_equal(mu.get_ydata(), h["mu"])
    np.testing.assert_array_equal(ex_median.get_ydata(), h["ex_w.median"])
    # Each band's outline runs along its upper edge and back along its lower one: 10–90 %, then min–max.
    for band, (low, high) in ((ex_quantiles, ("q10", "q90")), (ex_range, ("min", "max"))):
        ys = band.get_paths()[0].vertices[:, 1]
        assert set(np.round(h[f"ex_w.{high}"], 12)) <= set(np.round(ys, 12))
        assert set(np.round(h[f"ex_w.{low}"], 12)) <= set(np.round(ys, 12))
        assert band.get_paths()[0].vertices[:, 0].min() == 0 and band.get_paths()[0].vertices[:, 0].max() == 5
    assert ax.get_xlabel() == "hyper-iteration" and ax.get_ylabel() == "hyperparameter value"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "mu", "ex_w (median)", "ex_w (10–90 %)", "ex_w (min–max)",
    ]  # fmt: skip
    assert same_color(ex_median.get_color(), (*ex_range.get_facecolor()[0][:3], 1.0))
    assert ex_quantiles.get_alpha() > ex_range.get_alpha()  # the inner band darker


def test_a_vector_whose_mean_is_fixed_is_seen_to_spread(ax):
    """Per-example weights under a budget keep their mean while they move apart: the drawn median and bands move
    though the mean does not."""
    rows = []
    for k in range(5):
        spread = 0.1 * k
        w = np.concatenate([np.full(6, 0.5 - spread), np.full(6, 0.5 + spread)])
        w[0] = 0.5 - 1.2 * spread
        w[-1] = 0.5 + 1.2 * spread
        rows.append({"iteration": k, "w.mean": w.mean(), "w.min": w.min(), "w.max": w.max(), "w.norm": 1.0,
                     "w.q10": np.quantile(w, 0.1), "w.median": np.median(w), "w.q90": np.quantile(w, 0.9)})  # fmt: skip
    h = pd.DataFrame(rows)
    h.attrs.update(hyperparameters=["w"], scalars=[], vectors=["w"])
    np.testing.assert_allclose(h["w.mean"], 0.5)
    _, q, _ = plot.hyperparameters(ax, h)
    ys = q.get_paths()[0].vertices[:, 1]
    assert ys.max() - ys.min() > 0.5  # the 10–90 % band opens from 0.5 towards 0.1 and 0.9


def test_log_constrained_or_decade_spanning_hyperparameters_get_a_log_axis():
    h = pd.DataFrame({"iteration": range(4), "wd": [1e-4, 1e-3, 1e-2, 2e-2], "lr": [0.1, 0.11, 0.12, 0.13],
                      "mu": [0.5, 0.6, 0.7, 0.8], "b": [-1.0, 1.0, 20.0, 30.0]})  # fmt: skip
    h.attrs.update(hyperparameters=["wd", "lr", "mu", "b"], scalars=["wd", "lr", "mu", "b"], vectors=[],
                   log_scale=["lr"])  # fmt: skip
    # wd spans two decades; lr is constrained with log() (history.attrs["log_scale"]); mu neither; b is not positive.
    scales = {n: plot.hyperparameter_scale(h, n) for n in ("wd", "lr", "mu", "b")}
    assert scales == {"wd": "log", "lr": "log", "mu": "linear", "b": "linear"}
    for name, scale in scales.items():
        ax = Figure().subplots()
        plot.hyperparameters(ax, h, [name])
        assert ax.get_yscale() == scale, name
    ax = Figure().subplots()
    plot.hyperparameters(ax, h, ["wd", "mu"])  # together: log only if every one drawn is
    assert ax.get_yscale() == "linear"
    ax = Figure().subplots()
    plot.hyperparameters(ax, h, ["mu"], scale="log")  # or as asked
    assert ax.get_yscale() == "log"
    with pytest.raises(ValueError, match="scale must be one of"):
        plot.hyperparameters(ax, h, ["mu"], scale="symlog")


def test_a_log_axis_within_one_decade_has_short_tick_labels_and_iteration_axes_integer_ticks():
    """A hypergradient norm between 0.2 and 0.9: matplotlib labels the minor ticks as wide 2×10⁻¹ that run into
    the axis label; here they are short numbers, and the hyper-iteration axis has whole numbers only."""
    h = pd.DataFrame({"iteration": range(3), "grad_norm": [0.9, 0.5, 0.2], "grad_norm.lr": [0.9, 0.5, 0.2],
                      "lr": [0.1, 0.2, 0.3]})  # fmt: skip
    h.attrs.update(hyperparameters=["lr"], scalars=["lr"], vectors=[])
    fig = Figure(figsize=(4, 3), dpi=72)
    ax = fig.subplots()
    plot.grad_norms(ax, h)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels() if t.get_text()]
    assert labels and all(len(t) <= 4 and "times" not in t and "^" not in t for t in labels), labels
    assert all(float(t) == pytest.approx(float(t)) for t in labels)  # plain numbers
    renderer = canvas.get_renderer()
    ylabel = ax.yaxis.label.get_window_extent(renderer)
    for tick in ax.get_yticklabels(minor=True) + ax.get_yticklabels():
        if tick.get_text():
            assert not tick.get_window_extent(renderer).overlaps(ylabel), tick.get_text()
    xticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert all(float(t).is_integer() for t in xticks), xticks
    one = Figure().subplots()  # one hyper-iteration drawn (the axis spans ±0.05): still whole numbers
    plot.grad_norms(one, h.iloc[:1])
    assert list(one.get_xticks()) == [-1, 0, 1]


def test_legends_sit_beside_the_axes_off_the_data():
    """A legend inside the axes hides data ("best" cannot dodge a spike of the hypergradient norm that reaches
    every corner): the panels put theirs outside, at the right, which a constrained layout makes room for."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    norms = [10.0, 0.01, 8.0, 0.02, 9.0, 0.01]  # spikes down and up across the whole axes
    h = pd.DataFrame({"iteration": range(6), "val_loss": [1.0, 0.1, 0.9, 0.1, 0.8, 0.1],
                      "train_loss": [0.9, 0.2, 0.8, 0.2, 0.7, 0.2], "grad_norm": norms, "grad_norm.lr": norms,
                      "grad_norm.wd": norms, "lr": [0.1] * 6, "wd": [0.01] * 6})  # fmt: skip
    h.attrs.update(hyperparameters=["lr", "wd"], scalars=["lr", "wd"], vectors=[], objectives=["val_loss"])
    fig = Figure(figsize=(9, 3), dpi=72, layout="constrained")
    grad, loss, both = fig.subplots(1, 3)
    plot.grad_norms(grad, h)
    plot.losses(loss, h)
    plot.hyperparameters(both, h, ["lr", "wd"])
    FigureCanvasAgg(fig).draw()
    for ax in (grad, loss, both):
        legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
        assert legend.x0 >= frame.x1 and legend.x1 <= fig.bbox.width, (legend, frame)  # beside, and in the picture
    # The overview puts them above its panels, in place of titles, in as many columns as fit.
    fig, axes = plot.overview(h, fig=Figure(figsize=(9, 5), dpi=72, layout="constrained"))
    FigureCanvasAgg(fig).draw()
    for panel in ("grad_norm", "loss"):
        legend, frame = axes[panel].get_legend().get_window_extent(), axes[panel].get_window_extent()
        assert legend.y0 >= frame.y1 - 1 and legend.y1 <= fig.bbox.height, panel
        assert legend.x1 <= frame.x1 + 1 and not axes[panel].get_title(), panel  # as wide as its axes at most


@pytest.mark.parametrize(
    "low, high, at_least",
    [(0.05, 0.094, 4), (6e-4, 1e-3, 3), (0.081, 0.087, 3), (0.02, 0.3, 3), (1e-4, 1e-2, 3), (1e-9, 1e3, 3)],
)
def test_a_log_axis_carries_labels_enough_to_read_a_value_off(low, high, at_least):
    """matplotlib labels decades only: an axis from 0.05 to 0.094 showed one or two labels. Here: round values
    within a decade, mantissas (1, 2, 5, …) across a few, every k-th decade across many; all short numbers."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    h = pd.DataFrame({"iteration": range(2), "lr": [low, high], "grad_norm.lr": [1.0, 1.0]})
    h.attrs.update(hyperparameters=["lr"], scalars=["lr"], vectors=[])
    fig = Figure(figsize=(4, 1.2), dpi=72)  # small axes, as the dashboard's: about 60 pixels high
    ax = fig.add_axes((0.2, 0.15, 0.75, 0.7))
    plot.hyperparameters(ax, h, ["lr"], scale="log")
    ax.set_ylim(low, high)
    FigureCanvasAgg(fig).draw()
    labels = [
        t for t in ax.get_yticklabels() if t.get_text() and low * (1 - 1e-9) <= t.get_position()[1] <= high * (1 + 1e-9)
    ]
    assert len(labels) >= at_least, [t.get_text() for t in labels]
    assert all(len(t.get_text()) <= 6 and float(t.get_text()) > 0 for t in labels), [t.get_text() for t in labels]
    boxes = [t.get_window_extent() for t in labels]  # and they do not run into each other
    assert all(not a.overlaps(b) for a, b in zip(boxes, boxes[1:], strict=False))


@pytest.mark.parametrize("x,label", [("inner_steps", "inner training steps"), ("wall_time", "wall time (s)")])
def test_curves_against_inner_steps_or_wall_time(run, ax, x, label):
    h = run.history
    val, train = plot.losses(ax, h, x=x)
    np.testing.assert_array_equal(val.get_xdata(), h[x])
    np.testing.assert_array_equal(val.get_ydata(), h["val_loss"])
    np.testing.assert_array_equal(train.get_ydata(), h["train_loss"])
    assert ax.get_xlabel() == label and ax.get_ylabel() == "loss"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["validation loss", "training loss (last step)"]


def test_grad_norms_on_a_log_scale_overall_and_per_hyperparameter(run, ax):
    h = run.history
    lines = plot.grad_norms(ax, h)
    assert ax.get_yscale() == "log"
    assert len(lines) == 1 + len(h.attrs["hyperparameters"])
    np.testing.assert_array_equal(lines[0].get_ydata(), h["grad_norm"])
    for line, name in zip(lines[1:], h.attrs["hyperparameters"], strict=True):
        assert line.get_label() == name
        np.testing.assert_array_equal(line.get_ydata(), h[f"grad_norm.{name}"])
    assert "norm" in ax.get_ylabel()
    only_total = plot.grad_norms(Figure().subplots(), h, names=[])
    assert len(only_total) == 1


def test_each_hyperparameter_keeps_its_colour_in_every_panel(run):
    h = run.history
    fig, axes = plot.overview(run)
    try:
        names = h.attrs["hyperparameters"]
        colors = [axes[f"hp:{n}"].get_lines()[0].get_color() for n in names]
        assert len({to_rgba(c) for c in colors}) == len(names)  # distinct
        norms = {line.get_label(): line.get_color() for line in axes["grad_norm"].get_lines()}
        for n, c in zip(names, colors, strict=True):
            assert same_color(norms[n], c)
            assert same_color(axes[f"hp:{n}"].title.get_color(), c)
        # A panel drawn on its own, for a subset, gives the same colours.
        [mu] = plot.hyperparameters(Figure().subplots(), h, ["mu"])
        assert same_color(mu.get_color(), colors[names.index("mu")])
    finally:
        plt.close(fig)


def test_overview_draws_every_panel_of_a_run(run):
    h = run.history
    fig, axes = plot.overview(run, x="inner_steps")
    try:
        assert set(axes) == {"hp:ex_w", "hp:mu", "hp:sched", "hp:wd", "grad_norm", "loss", "metrics"}
        assert all(ax.get_xlabel() == "inner training steps" for ax in axes.values())
        np.testing.assert_array_equal(axes["hp:wd"].get_lines()[0].get_ydata(), h["wd"])
        assert len(axes["hp:sched"].collections) == 2  # a vector's 10–90 % and min–max bands
        assert axes["grad_norm"].get_yscale() == "log"
        np.testing.assert_array_equal(axes["loss"].get_lines()[0].get_ydata(), h["val_loss"])
        np.testing.assert_array_equal(axes["metrics"].get_lines()[0].get_ydata(), h["test_loss"])
        assert axes["metrics"].get_ylabel() == "test_loss"
        assert fig.get_suptitle() == "reverse mode: 6 hyper-iterations"
        assert all(ax.figure.figure is fig for ax in axes.values())
    finally:
        plt.close(fig)
    # Without metrics there is no metrics panel; names picks the hyperparameter panels.
    bare = h.drop(columns=["test_loss"])
    bare.attrs = {**h.attrs, "metrics": []}
    fig, axes = plot.overview(bare, names=["mu"])
    try:
        assert set(axes) == {"hp:mu", "grad_norm", "loss"}
        assert [line.get_label() for line in axes["grad_norm"].get_lines()] == ["all hyperparameters", "mu"]
    finally:
        plt.close(fig)


def test_several_objectives_get_one_line_each(run, ax):
    h = run.history.rename(columns={"val_loss": "val_loss.val"})
    h["val_loss.train"] = h["train_loss"] * 2
    h.attrs = {**run.history.attrs, "objectives": ["val_loss.val", "val_loss.train"]}
    lines = plot.losses(ax, h, train=False, logy=True)
    assert [line.get_label() for line in lines] == ["objective val", "objective train"]
    np.testing.assert_array_equal(lines[1].get_ydata(), h["val_loss.train"])
    assert lines[0].get_linestyle() != lines[1].get_linestyle()
    assert ax.get_yscale() == "log"


def test_the_panels_read_which_column_is_what_from_the_runs_info(run, ax):
    h = run.history
    # A frame that lost its attrs: given the names, its vectors, metrics and colours are read from its columns.
    no_attrs = h.copy()
    no_attrs.attrs = {}
    median, quantiles, band = plot.hyperparameters(ax, no_attrs, ["ex_w"])
    np.testing.assert_array_equal(median.get_ydata(), h["ex_w.median"])
    assert median.get_label() == "ex_w (median)" and band.get_label() == "ex_w (min–max)"
    [mu] = plot.hyperparameters(Figure().subplots(), h, ["mu"])
    [mu_no_attrs] = plot.hyperparameters(Figure().subplots(), no_attrs, ["mu"])
    assert same_color(mu.get_color(), mu_no_attrs.get_color())
    fig, axes = plot.overview(no_attrs, names=["mu"])
    try:
        np.testing.assert_array_equal(axes["metrics"].get_lines()[0].get_ydata(), h["test_loss"])
    finally:
        plt.close(fig)
    # A column that is not one of the run's hyperparameters is not drawn as one.
    with pytest.raises(ValueError, match="no hyperparameter 'test_loss'.*'ex_w', 'mu', 'sched', 'wd'"):
        plot.hyperparameters(ax, h, ["test_loss"])


# ----- hgkit.plot.snapshots ----------------------------------------------------------------------------------


def test_schedule_draws_the_snapshots_from_early_to_late(run, ax):
    lines = plot.schedule(ax, run, "sched", max_lines=3, ylabel="learning rate η_t")
    assert [line.get_label() for line in lines] == ["iteration 0", "iteration 2", "iteration 5"]
    for line, k in zip(lines, (0, 2, 5), strict=True):
        np.testing.assert_array_equal(line.get_xdata(), np.arange(T))
        np.testing.assert_array_equal(line.get_ydata(), run.snapshots[k]["sched"])
    assert len({to_rgba(line.get_color()) for line in lines}) == 3
    assert ax.get_xlabel() == "inner step t" and ax.get_ylabel() == "learning rate η_t"
    # The schedule did move: the hypergradient descent changed it.
    assert not np.allclose(lines[0].get_ydata(), lines[-1].get_ydata())
    chosen = plot.schedule(Figure().subplots(), run.snapshots, "sched", iterations=[1, 3])
    assert [line.get_label() for line in chosen] == ["iteration 1", "iteration 3"]


def test_example_weights_histogram_per_group(run, ax):
    weights = run.snapshots[5]["ex_w"]
    patches = plot.example_weights(ax, weights, CORRUPTED, names={False: "clean", True: "corrupted"}, bins=5)
    assert len(patches) == 2
    edges = np.histogram_bin_edges(weights, bins=5)
    for (polygon,), mask in zip(patches, (~CORRUPTED, CORRUPTED), strict=True):
        counts, _ = np.histogram(weights[mask], bins=edges)
        outline = polygon.get_xy()
        assert outline[:, 1].max() == counts.max()
        np.testing.assert_allclose([outline[:, 0].min(), outline[:, 0].max()], [edges[0], edges[-1]])
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == [f"clean ({(~CORRUPTED).sum()})", f"corrupted ({CORRUPTED.sum()})"]
    assert ax.get_xlabel() == "example weight" and ax.get_ylabel() == "number of examples"


def test_example_weights_sorted_by_rank(ax):
    weights = np.array([0.2, 0.9, 0.5, 0.1, 0.7])
    groups = np.array([1, 0, 1, 1, 0])
    clean, corrupted = plot.example_weights(ax, weights, groups, kind="sorted")
    ranks = np.concatenate([clean.get_offsets()[:, 0], corrupted.get_offsets()[:, 0]])
    values = np.concatenate([clean.get_offsets()[:, 1], corrupted.get_offsets()[:, 1]])
    assert sorted(ranks) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(values[np.argsort(ranks)], [0.9, 0.7, 0.5, 0.2, 0.1])
    np.testing.assert_array_equal(sorted(clean.get_offsets()[:, 1]), [0.7, 0.9])
    assert not same_color(clean.get_facecolor()[0], corrupted.get_facecolor()[0])
    with pytest.raises(ValueError, match="one label per weight"):
        plot.example_weights(ax, weights, groups[:3])
    with pytest.raises(ValueError, match="kind"):
        plot.example_weights(ax, weights, groups, kind="pie")


# ----- hgkit.plot.cost ---------------------------------------------------------------------------------------

COSTS = pd.DataFrame(
    {
        "method": ["reverse"] * 4 + ["forward"] * 4,
        "T": [10, 100, 1000, 100] * 2,
        "m": [4, 4, 4, 16] * 2,
        "seconds": [0.002, 0.02, 0.2, 0.021, 0.004, 0.04, 0.4, 0.16],
        "peak_bytes": [2**20, 5 * 2**20, 41 * 2**20, 5 * 2**20 + 100, 2**20, 2**20, 2**20, 3 * 2**20],
    }
)


def test_cost_curves_memory_against_T_with_the_theory(ax):
    lines = plot.cost_curves(ax, COSTS[COSTS["m"] == 4], x="T", y="peak_bytes", theory=True)
    assert [line.get_label() for line in lines] == ["forward", "forward: O(m·|s|)", "reverse", "reverse: O(T·|s|)"]
    forward, forward_theory, reverse, reverse_theory = lines
    np.testing.assert_array_equal(reverse.get_xdata(), [10, 100, 1000])
    np.testing.assert_array_equal(reverse.get_ydata(), [1, 5, 41])  # in MiB
    np.testing.assert_array_equal(forward_theory.get_ydata(), [1, 1])  # forward memory does not grow with T
    # Reverse: proportional to T, through the largest measurement.
    np.testing.assert_allclose(reverse_theory.get_ydata(), [0.41, 41])
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_ylabel() == "peak memory (MiB)" and ax.get_xlabel() == "inner steps T"
    assert same_color(reverse.get_color(), reverse_theory.get_color())
    assert not same_color(reverse.get_color(), forward.get_color())


def test_cost_curves_time_against_m_one_line_per_T(ax):
    lines = plot.cost_curves(ax, COSTS, x="m", y="seconds", theory=True)
    labels = [line.get_label() for line in lines]
    assert "reverse, T=100" in labels and "forward, T=100: O(m·T)" in labels
    forward = lines[labels.index("forward, T=100")]
    np.testing.assert_array_equal(forward.get_xdata(), [4, 16])
    np.testing.assert_allclose(forward.get_ydata(), [40, 160])  # in ms
    theory = lines[labels.index("forward, T=100: O(m·T)")]
    np.testing.assert_allclose(theory.get_ydata(), [40, 160])
    assert ax.get_ylabel() == "time per hypergradient (ms)" and ax.get_xlabel() == "number of hyperparameters m"
    flat = lines[labels.index("reverse, T=100: O(T)")]
    assert flat.get_ydata()[0] == flat.get_ydata()[1]  # reverse time does not depend on m


def test_cost_curves_colours_other_methods_apart(ax):
    costs = pd.concat([COSTS, COSTS.assign(method="jax.grad")])
    lines = plot.cost_curves(ax, costs[costs["m"] == 4], x="T", y="seconds")
    colors = {line.get_label(): to_rgba(line.get_color()) for line in lines}
    assert len(set(colors.values())) == 3


# ----- errors, and the package -------------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error(run, ax):
    h = run.history
    with pytest.raises(ValueError, match="no hyperparameter 'lr'.*'ex_w', 'mu', 'sched', 'wd'"):
        plot.hyperparameters(ax, h, ["lr"])
    with pytest.raises(ValueError, match="x must be one of"):
        plot.losses(ax, h, x="epoch")
    no_attrs = h.copy()
    no_attrs.attrs = {}
    with pytest.raises(ValueError, match="names="):
        plot.grad_norms(ax, no_attrs)
    plot.grad_norms(ax, no_attrs, names=["mu"])  # with names it needs no attrs
    with pytest.raises(TypeError, match="history DataFrame"):
        plot.overview({"val_loss": [1.0]})
    with pytest.raises(ValueError, match="no snapshot of 'sched' at iterations \\[9\\]"):
        plot.schedule(ax, run, "sched", iterations=[9])
    with pytest.raises(ValueError, match="no snapshot holds 'lr'"):
        plot.schedule(ax, run, "lr")
    with pytest.raises(ValueError, match="missing \\['peak_bytes'\\]"):
        plot.cost_curves(ax, COSTS.drop(columns=["peak_bytes"]))
    with pytest.raises(ValueError, match="no column 'train_loss'"):
        plot.losses(ax, h.drop(columns=["train_loss"]))


def test_an_empty_history_draws_empty_lines(run, ax):
    empty = run.history.iloc[:0]
    lines = plot.grad_norms(ax, empty)
    assert all(len(line.get_xdata()) == 0 for line in lines)


def test_the_package_keeps_its_public_names():
    assert set(plot.__all__) == {
        "COST_COLUMNS", "cost_curves", "example_weights", "grad_norms", "history_of", "hyperparameter_colors",
        "hyperparameter_names", "hyperparameter_scale", "hyperparameters", "losses", "metrics", "overview", "schedule",
    }  # fmt: skip
    assert all(callable(getattr(plot, name)) for name in plot.__all__ if name != "COST_COLUMNS")
    assert plot.COST_COLUMNS == ("method", "T", "m", "seconds", "peak_bytes")
    assert plot.cost.METHOD_COLORS == {"reverse": "tab:blue", "forward": "tab:orange"}


def test_import_hgkit_loads_neither_matplotlib_nor_ipywidgets():
    code = (
        "import sys, hgkit, hgkit.widgets\n"
        "assert not {'matplotlib', 'ipywidgets'} & set(sys.modules), sorted(sys.modules)\n"
        "hgkit.plot\n"
        "assert 'matplotlib' in sys.modules and 'ipywidgets' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, cwd=Path(__file__).parents[1])
