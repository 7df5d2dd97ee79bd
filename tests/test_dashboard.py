"""The live dashboard: what it shows as records arrive, its throttle, its Stop button, its text fallback.

``Dashboard(...)`` makes one of two views (``WidgetDashboard``, ``TextDashboard``) over a shared base; driven with
records shaped as the loop sends them (hgkit/history.py), and (at the end) by real ``hg.HyperOptimizer`` runs.
"""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from dashboard_extents import drawn_extents

from hgkit.history import RunInfo
from hgkit.widgets.dashboard import Dashboard, TextDashboard, WidgetDashboard, _base, _pacing

N = 6
INFO = dict(
    hyperparameters=["lr", "ex_w"],
    scalars=["lr"],
    vectors=["ex_w"],
    objectives=["val_loss"],
    metrics=["accuracy"],
    hyper_iterations=N,
    method="reverse mode",
)


def record(i):
    """Row i of a made-up run: losses halving, lr growing, ex_w's mean fixed while its spread grows."""
    return {
        "iteration": i,
        "inner_steps": 20 * (i + 1),
        "wall_time": 0.25 * (i + 1),
        "val_loss": 2.0 / 2**i,
        "train_loss": 1.5 / 2**i,
        "grad_norm": 3.0 / (i + 1),
        "grad_norm.lr": 2.0 / (i + 1),
        "grad_norm.ex_w": 1.0 / (i + 1),
        "lr": 0.1 + 0.05 * i,
        "ex_w.mean": 0.5,  # fixed, as per-example weights under a budget: the distribution is what moves
        "ex_w.min": 0.5 - 0.4 * (i + 1) / N,
        "ex_w.max": 0.5 + 0.4 * (i + 1) / N,
        "ex_w.norm": 3.0,
        "ex_w.q10": 0.5 - 0.3 * (i + 1) / N,
        "ex_w.median": 0.5 + 0.02 * i,
        "ex_w.q90": 0.5 + 0.3 * (i + 1) / N,
        "accuracy": 0.5 + 0.05 * i,
    }


def widget_dashboard(**kwargs):
    """A widget dashboard drawing a small picture (quicker to render; what is checked does not depend on it)."""
    return Dashboard(mode="widget", figsize=(6.0, 2.0), dpi=40, **kwargs)


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(_pacing, "clock", clock)
    return clock


def values_of(dash):
    """The numbers shown in the values widget, by label, read back from its HTML."""
    import re

    return dict(re.findall(r"data-name='([^']*)'>([^<]*)<", dash.values.value))


def panels(dash):
    """The picture's axes: ``hp:<name>`` (one per hyperparameter shown), ``grad``, ``loss``."""
    assert set(dash.axes.values()) == set(dash.figure.axes)
    return dash.axes


def test_every_record_is_shown_and_drawn_when_they_come_slower_than_the_throttle(clock):
    dash = widget_dashboard(min_interval=0.5)
    dash.on_start(INFO)
    images = []
    for i in range(N):
        clock.now += 1.0
        assert dash.on_record(record(i)) is False
        shown = values_of(dash)
        assert shown["hyper-iteration"] == f"{i + 1} / {N}"
        assert float(shown["val_loss"]) == pytest.approx(record(i)["val_loss"], rel=1e-3)
        assert float(shown["lr"]) == pytest.approx(record(i)["lr"], rel=1e-3)
        assert float(shown["ex_w (median)"]) == pytest.approx(record(i)["ex_w.median"])
        assert float(shown["accuracy"]) == pytest.approx(record(i)["accuracy"], rel=1e-3)
        assert dash.image.value[:8] == b"\x89PNG\r\n\x1a\n"
        images.append(dash.image.value)
        # The panels hold exactly the records so far.
        ax = panels(dash)
        [val_line, train_line] = ax["loss"].get_lines()
        np.testing.assert_allclose(val_line.get_ydata(), [record(k)["val_loss"] for k in range(i + 1)])
        np.testing.assert_allclose(train_line.get_ydata(), [record(k)["train_loss"] for k in range(i + 1)])
        [lr_line] = ax["hp:lr"].get_lines()
        np.testing.assert_allclose(lr_line.get_ydata(), [record(k)["lr"] for k in range(i + 1)])
        [median] = ax["hp:ex_w"].get_lines()  # the vector's median, within its two bands
        np.testing.assert_allclose(median.get_ydata(), [record(k)["ex_w.median"] for k in range(i + 1)])
        assert len(ax["hp:ex_w"].collections) == 2
        assert ax["grad"].get_yscale() == "log"
    assert len(set(images)) == N  # every new record changed the picture
    assert dash.draws == N
    dash.on_end(None)
    assert dash.draws == N  # everything was drawn already: no extra redraw
    assert "finished: 6 hyper-iterations" in dash.status.value
    assert list(dash.history["val_loss"]) == [record(i)["val_loss"] for i in range(N)]
    assert dash.history.attrs["hyperparameters"] == ["lr", "ex_w"]


def test_throttle_waits_min_interval_and_always_draws_the_last_record(clock):
    dash = widget_dashboard(min_interval=1.0, max_overhead=1.0)
    dash.on_start(INFO)
    dash.on_record(record(0))  # the first record is shown at once
    first_image, first_values = dash.image.value, dash.values.value
    assert dash.draws == 1
    clock.now += 0.5
    dash.on_record(record(1))
    dash.on_record(record(2))
    assert (dash.draws, dash.image.value, dash.values.value) == (1, first_image, first_values)
    clock.now += 0.6  # 1.1 s after the first draw
    dash.on_record(record(3))
    assert dash.draws == 2 and values_of(dash)["hyper-iteration"] == f"4 / {N}"
    assert len(panels(dash)["loss"].get_lines()[0].get_ydata()) == 4
    dash.on_record(record(4))
    assert dash.draws == 2
    dash.on_record(record(5))  # the last of the announced hyper-iterations: drawn whatever the clock
    assert dash.draws == 3 and values_of(dash)["hyper-iteration"] == f"{N} / {N}"
    dash.on_end(None)
    assert dash.draws == 3


def test_a_run_shorter_than_announced_gets_its_final_redraw_at_the_end(clock):
    dash = widget_dashboard(min_interval=10.0)
    dash.on_start(INFO)
    for i in range(3):
        dash.on_record(record(i))
    assert dash.draws == 1
    dash.on_end(None)
    assert dash.draws == 2
    assert values_of(dash)["hyper-iteration"] == f"3 / {N}"
    assert len(panels(dash)["loss"].get_lines()[0].get_ydata()) == 3


def test_slow_redraws_are_spaced_to_keep_their_share_of_time_under_max_overhead(clock, monkeypatch):
    dash = widget_dashboard(min_interval=0.1, max_overhead=0.05, max_interval=10.0)
    draw = dash.redraw

    def slow_redraw():
        draw()
        clock.now += 0.2  # every redraw "takes" 0.2 s: the next may come 0.2 / 0.05 = 4 s later

    monkeypatch.setattr(dash, "redraw", slow_redraw)
    dash.on_start({**INFO, "hyper_iterations": 100})
    drawn_at = []
    for i in range(9):
        before = dash.draws
        dash.on_record(record(i))
        if dash.draws > before:
            drawn_at.append(clock.now)
        clock.now += 1.1  # one hyper-iteration every 1.1 s
    # The first redraw (which also loads matplotlib) does not set the pace; after the second, 4 s pass.
    assert dash.draws == len(drawn_at) == 3
    assert drawn_at[1] - drawn_at[0] < 2 and drawn_at[2] - drawn_at[1] >= 4
    assert values_of(dash)["hyper-iteration"] == "9 / 100"  # the values are updated at every record


def drawn_points(dash) -> int:
    """How many records the last picture holds (the validation loss's points)."""
    return len(panels(dash)["loss"].get_lines()[0].get_ydata())


def test_the_plots_catch_up_every_max_interval_seconds_and_at_the_end(clock, monkeypatch):
    """A redraw that "takes" 1 s would wait 20 s at max_overhead 5 %: the picture would show 2 points while the
    values say 40. The wait is capped at max_interval (3 s by default), and the end of the run is always drawn."""
    dash = widget_dashboard(min_interval=0.5, max_overhead=0.05)
    assert dash._pace.max_interval == 3.0
    draw = dash.redraw

    def slow_redraw():
        draw()
        clock.now += 1.0

    monkeypatch.setattr(dash, "redraw", slow_redraw)
    dash.on_start({**INFO, "hyper_iterations": 100})
    drawn_at, lag = [], 0.0
    for i in range(40):
        before = dash.draws
        dash.on_record(record(i))
        if dash.draws > before:
            drawn_at.append(clock.now)
            assert drawn_points(dash) == i + 1  # a redraw draws every record so far
        # what the picture shows against what the values say, in seconds of this run (0.25 s per record)
        lag = max(lag, 0.25 * (i + 1 - drawn_points(dash)))
        clock.now += 0.25
    gaps = np.diff(drawn_at)
    assert len(drawn_at) >= 4 and gaps[1:].max() <= 3.0 + 1.0 + 0.25, gaps  # the wait, the redraw, one record
    assert lag <= 4.25, lag
    dash.on_end(None)  # the run ended early (40 of 100): its last records are drawn
    assert drawn_points(dash) == len(dash.records) == 40


def test_no_time_left_once_the_run_ended_by_stop_error_or_divergence(clock):
    def run_until_stopped(dash, stopped, stop=False):
        dash.on_start(INFO)
        for i in range(3):  # 0.25 s per hyper-iteration: a time left is shown from the second record on
            clock.now += 1.0
            dash.on_record(record(i))
        assert "time left" in values_of(dash) and "left" in dash.status.value
        if stop:
            dash.stop_button.click()
            assert "time left" not in values_of(dash)  # at once: the estimate no longer holds
            assert dash.on_record(record(3)) is True
            assert "time left" not in values_of(dash)
        dash.on_end(type("Result", (), {"stopped": stopped})())
        return dash.status.value

    dash = widget_dashboard(min_interval=0)
    status = run_until_stopped(dash, "callback", stop=True)
    assert "reverse mode — stopped after 4 of 6 hyper-iterations (the Stop button)" in status
    assert "left" not in status and "time left" not in values_of(dash)
    assert values_of(dash)["hyper-iteration"] == "4 / 6"
    status = run_until_stopped(dash, "error")
    assert "reverse mode — ended by an error after 3 of 6 hyper-iterations" in status, status
    assert "left" not in status and "time left" not in values_of(dash)
    status = run_until_stopped(dash, "diverged")
    assert "stopped after 3 of 6 hyper-iterations (diverged)" in status and "time left" not in values_of(dash)
    status = run_until_stopped(dash, "callback")  # another callback asked to stop
    assert "stopped after 3 of 6 hyper-iterations (stopped by a callback)" in status
    assert "time left" not in values_of(dash)
    # Text mode: the lines printed at the end say how it ended, with no time left.
    out = io.StringIO()
    text = Dashboard(mode="text", min_interval=0, file=out)
    text.on_start(INFO)
    for i in range(3):
        clock.now += 1.0
        text.on_record(record(i))
    text.stop()
    text.on_record(record(3))
    text.on_end(type("Result", (), {"stopped": "callback"})())
    *_, last_values, summary = out.getvalue().splitlines()
    assert "left" not in last_values and summary == "[hgkit] stopped after 4 of 6 hyper-iterations (the Stop button)"
    text.on_start(INFO)
    text.on_record(record(0))
    text.on_end(type("Result", (), {"stopped": "error"})())
    assert out.getvalue().splitlines()[-1] == "[hgkit] ended by an error after 1 of 6 hyper-iterations"


def shown_parts(dash) -> list:
    """The widgets in the dashboard's tree, depth first (what the browser gets)."""
    parts, todo = [], [dash.widget]
    while todo:
        widget = todo.pop()
        parts.append(widget)
        todo.extend(getattr(widget, "children", ()))
    return parts


def test_a_placeholder_stands_for_the_picture_until_the_first_figure_exists():
    """An ipywidgets Image with no value shows as a broken image: it is not in the box until a figure exists."""
    dash = widget_dashboard(min_interval=0)
    assert dash.image not in shown_parts(dash) and dash.placeholder in shown_parts(dash)
    dash.on_start(INFO)  # compiling the first hyper-iteration
    assert dash.image not in shown_parts(dash) and dash.placeholder in shown_parts(dash)
    assert "after the first hyper-iteration" in dash.placeholder.value
    dash.on_record(record(0))
    assert dash.image in shown_parts(dash) and dash.placeholder not in shown_parts(dash)
    assert dash.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    dash.on_end(None)
    dash.on_start(INFO)  # a new run: the last run's picture is not this one's
    assert dash.image not in shown_parts(dash) and dash.placeholder in shown_parts(dash)
    dash.on_end(type("Result", (), {"stopped": "error"})())  # it failed before its first hyper-iteration
    assert dash.image not in shown_parts(dash) and "nothing to draw" in dash.placeholder.value
    assert "ended by an error after 0 of 6" in dash.status.value


def test_nothing_is_written_on_the_data_and_log_axes_have_labels_to_read_off(clock):
    """Names as y labels in the margin, legends above their axes (not on a spike), and every log axis with at
    least three labelled ticks, also within one decade."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    dash = Dashboard(mode="widget", min_interval=0)  # the notebook's picture size
    dash.on_start({**WIDE, "log_scale": ["lr"]})
    for i in range(N):
        dash.on_record(wide_run(i))
    renderer = FigureCanvasAgg(dash.figure).get_renderer()
    dash.figure.draw(renderer)
    ax = panels(dash)
    for name in ("lr", "wd", "mu", "ex_w"):
        axes = ax[f"hp:{name}"]
        assert not axes.texts and axes.get_legend() is None, name
        assert axes.get_ylabel() == name + (" (log)" if axes.get_yscale() == "log" else ""), name
        box = axes.yaxis.label.get_window_extent(renderer)
        assert box.x1 <= axes.get_window_extent(renderer).x0, name  # in the margin, left of the axes
    assert "median, 10–90 %, min–max" in next(t.get_text() for t in dash.figure.texts)
    for panel in ("grad", "loss"):
        legend = ax[panel].get_legend().get_window_extent(renderer)
        frame = ax[panel].get_window_extent(renderer)
        assert legend.y0 >= frame.y1 - 1, panel  # above the axes
        assert legend.y1 <= dash.figure.bbox.height, panel  # and inside the picture
    for name in ("lr", "wd"):  # lr spans 30 %, within a decade; wd two decades
        axes = ax[f"hp:{name}"]
        low, high = axes.get_ylim()
        labelled = [t for t in axes.get_yticklabels() if t.get_text() and low <= t.get_position()[1] <= high]
        assert len(labelled) >= 3, (name, [t.get_text() for t in labelled])


def test_an_online_run_counted_in_inner_steps(clock):
    """With x="inner_steps" the progress counts inner steps, as the x axis does (an online method's run: one
    training run in chunks of Δ steps)."""
    dash = widget_dashboard(min_interval=0, x="inner_steps")
    dash.on_start({**INFO, "method": "RTHO (Δ = 20)"})
    for i in range(3):
        dash.on_record(record(i))  # 20 inner steps each
    assert values_of(dash)["inner step"] == "60 / 120"
    assert panels(dash)["loss"].get_xlabel() == "inner training steps"
    dash.on_end(None)
    assert dash.status.value.startswith("RTHO (Δ = 20) — finished: 60 inner steps")
    out = io.StringIO()
    text = Dashboard(mode="text", min_interval=0, x="inner_steps", file=out)
    text.on_start(INFO)
    text.on_record(record(0))
    assert out.getvalue().splitlines()[-1].startswith("[hgkit] 20/120 inner steps  val_loss 2")


def test_stop_button_click_makes_on_record_return_true():
    dash = widget_dashboard(min_interval=0)
    dash.on_start(INFO)
    assert dash.on_record(record(0)) is False
    dash.stop_button.click()
    assert dash.stopped and dash.stop_button.disabled
    assert dash.on_record(record(1)) is True
    assert values_of(dash)["hyper-iteration"] == f"2 / {N}"  # the stopping row is shown
    dash.on_end(type("Result", (), {"stopped": "callback"})())
    assert "stopped after 2 of 6 hyper-iterations (the Stop button)" in dash.status.value
    assert dash.stop_button.description == "Stopped"
    # A new run starts unstopped.
    dash.on_start(INFO)
    assert not dash.stopped and not dash.stop_button.disabled
    assert dash.on_record(record(0)) is False


def test_after_the_run_the_shown_hyperparameters_and_scales_can_be_chosen():
    dash = widget_dashboard(min_interval=0)
    dash.on_start(INFO)
    assert dash.select.disabled and all(s.disabled for s in dash.scales.values())
    for i in range(N):
        dash.on_record(record(i))
    dash.on_end(None)
    assert not dash.select.disabled and not any(s.disabled for s in dash.scales.values())
    assert dash.select.options == ("lr", "ex_w")
    before = dash.draws
    dash.select.value = ("lr",)
    assert dash.draws == before + 1
    ax = panels(dash)
    assert [k for k in ax if k.startswith("hp:")] == ["hp:lr"]
    assert [line.get_label() for line in ax["grad"].get_lines()] == ["all hyperparameters", "lr"]
    assert ax["hp:lr"].get_yscale() == "linear"  # auto: lr spans less than a decade and is not log()-constrained
    dash.scales["hp"].value = "log"
    dash.scales["grad"].value = "linear"
    dash.scales["loss"].value = "log"
    ax = panels(dash)
    assert (ax["hp:lr"].get_yscale(), ax["grad"].get_yscale(), ax["loss"].get_yscale()) == ("log", "linear", "log")


def test_status_says_compiling_then_the_time_left_then_how_it_ended(clock):
    dash = widget_dashboard(min_interval=0)
    dash.on_start(INFO)
    assert dash.status.value.startswith("running: reverse mode; compiling the step")
    assert "compiling" in dash.values.value
    dash.on_record(record(0))  # its time includes compiling: no estimate from it
    assert "estimating the time left" in dash.status.value and "time left" not in values_of(dash)
    dash.on_record(record(1))
    dash.on_record(record(2))  # 0.25 s per hyper-iteration since the first, 3 to go
    assert dash.time_left() == pytest.approx(0.75)
    assert dash.status.value == "running: reverse mode; about 1 s left"
    assert values_of(dash)["time left"] == "≈ 1 s"
    dash.on_end(None)
    assert "stopped after" not in dash.status.value
    assert dash.status.value.startswith("reverse mode — finished: 3 hyper-iterations")
    assert "time left" not in values_of(dash)


def wide_run(i):
    """Hyperparameters of very different sizes: wd spans two decades, lr changes by 30 %, mu by 12 %."""
    return {
        **record(i),
        "grad_norm.wd": 1.0,
        "grad_norm.mu": 1.0,
        "wd": 1e-4 * 10 ** (2 * i / (N - 1)),
        "lr": 0.1 * (1 + 0.3 * i / (N - 1)),
        "mu": 0.8 * (1 + 0.12 * i / (N - 1)),
    }


WIDE = {**INFO, "hyperparameters": ["lr", "wd", "mu", "ex_w"], "scalars": ["lr", "wd", "mu"]}


def test_every_hyperparameter_is_drawn_legibly_on_its_own_axes(clock):
    """Each on its own y range (wd's two decades on a log axis): every trajectory that changes by more than 10 %
    spans many pixels, and a vector whose mean is fixed is seen spreading."""
    dash = Dashboard(mode="widget", min_interval=0)  # the notebook's picture size
    dash.on_start({**WIDE, "log_scale": ["lr"]})  # lr constrained with log()
    for i in range(N):
        dash.on_record(wide_run(i))
    ax = panels(dash)
    assert {n: ax[f"hp:{n}"].get_yscale() for n in ("lr", "wd", "mu", "ex_w")} == {
        "lr": "log", "wd": "log", "mu": "linear", "ex_w": "linear",
    }  # fmt: skip
    extents = drawn_extents(dash)
    assert set(extents) == {"lr", "wd", "mu", "ex_w"}
    assert {n: e["scale"] for n, e in extents.items()} == {
        "lr": "log",
        "wd": "log",
        "mu": "linear",
        "ex_w": "linear",
    }
    for name, extent in extents.items():
        assert extent["high"] > 1.1 * extent["low"], name
        # A scalar fills its own axes; a vector's median line shares them with its bands (0.1 to 0.9 here).
        assert extent["pixels"] > (20 if name in WIDE["scalars"] else 5), (name, extent)
        left, top, right, bottom = extent["box"]
        assert 0 <= left < right <= dash.figure.bbox.width and 0 <= top < bottom <= dash.figure.bbox.height
    bands = [band.get_paths()[0].vertices[:, 1] for band in ax["hp:ex_w"].collections]
    assert [round(float(b.max() - b.min()), 6) for b in bands] == [0.6, 0.8]  # 10–90 % and min–max at the end
    # Switching the scale during the run redraws at once (in a kernel the click is handled beside the run).
    dash2 = Dashboard(mode="widget", min_interval=10, figsize=(6.0, 2.0), dpi=40)
    dash2.on_start(WIDE)
    dash2.on_record(wide_run(0))
    dash2.on_record(wide_run(1))  # not drawn: within min_interval
    assert panels(dash2)["hp:mu"].get_yscale() == "linear" and dash2.draws == 1
    dash2.scales["hp"].value = "log"
    assert dash2.draws == 2 and dash2._running
    assert all(panels(dash2)[f"hp:{n}"].get_yscale() == "log" for n in ("lr", "wd", "mu", "ex_w"))
    assert len(panels(dash2)["loss"].get_lines()[0].get_ydata()) == 2  # with every record so far
    dash2.scales["hp"].value = "linear"
    assert panels(dash2)["hp:wd"].get_yscale() == "linear"


def test_names_restrict_what_is_drawn_from_the_start():
    dash = widget_dashboard(names=["ex_w"], min_interval=0)
    dash.on_start(INFO)
    dash.on_record(record(0))
    assert [line.get_label() for line in panels(dash)["hp:ex_w"].get_lines()] == ["ex_w (median)"]


def test_text_fallback_outside_a_notebook(clock):
    out = io.StringIO()
    dash = Dashboard(file=out)  # mode="auto": no IPython kernel here
    assert isinstance(dash, TextDashboard) and dash.mode == "text" and dash.min_interval == 2.0
    assert not hasattr(dash, "widget")
    dash.on_start(INFO)
    for i in range(N):
        assert dash.on_record(record(i)) is False
        clock.now += 0.75  # a line at most every 2 s: records 0, 3 and the last
    dash.on_end(type("Result", (), {"stopped": None})())
    lines = out.getvalue().splitlines()
    assert lines[0] == (
        "[hgkit] 6 hyper-iterations, reverse mode; hyperparameters lr, ex_w; compiling the step (the first "
        "hyper-iteration)…"
    )
    assert [line.split()[1] for line in lines[1:-1]] == ["1/6", "4/6", "6/6"]
    assert lines[1] == (
        "[hgkit] 1/6  val_loss 2  train_loss 1.5  ‖∇f‖ 3  lr 0.1  ex_w (median) 0.5  accuracy 0.5  (0.2 s)"
    )
    assert lines[-1] == "[hgkit] finished: 6 hyper-iterations"


def test_stop_in_text_mode():
    out = io.StringIO()
    dash = Dashboard(mode="text", file=out)
    dash.on_start(INFO)
    dash.stop()
    assert dash.on_record(record(0)) is True
    dash.on_end(type("Result", (), {"stopped": "callback"})())
    assert out.getvalue().splitlines()[-1] == "[hgkit] stopped after 1 of 6 hyper-iterations (the Stop button)"


def test_as_a_plain_callback_it_reads_the_hyperparameters_from_the_record():
    dash = widget_dashboard(min_interval=0)
    for i in range(2):
        assert dash(record(i)) is False
    assert isinstance(dash.info, RunInfo) and dash.info.hyperparameters == ("lr", "ex_w")
    assert dash.info.vectors == ("ex_w",) and dash.info.metrics == ("accuracy",)
    assert values_of(dash)["hyper-iteration"] == "2 / ?"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(mode="browser"), "mode must be one of"),
        (dict(min_interval=-1), "min_interval must be a number ≥ 0"),
        (dict(max_overhead=0), "max_overhead must be a fraction in (0, 1]"),
        (dict(x="epoch"), "x must be 'iteration'"),
        (dict(names="lr"), "names must be a list"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Dashboard(**kwargs)


def test_dashboard_makes_the_view_its_mode_asks_for(monkeypatch):
    out = io.StringIO()
    assert type(Dashboard(mode="text", file=out)) is TextDashboard
    widget = Dashboard(mode="widget", file=out)  # each view takes (and ignores) the other's options
    assert type(widget) is WidgetDashboard and isinstance(widget, Dashboard) and widget.mode == "widget"
    assert widget.min_interval == 0.5 and widget.widget._dom_classes == ("hgkit-dashboard",)
    assert type(Dashboard(None, 0, 0.05, "iteration", "widget")) is WidgetDashboard  # mode given by position
    assert type(TextDashboard(file=out, min_interval=0)) is TextDashboard  # a view made directly
    with pytest.raises(ValueError, match="mode must be 'text' or 'auto' for a TextDashboard"):
        TextDashboard(mode="widget")
    # mode="auto" picks the widget in a Jupyter kernel.
    monkeypatch.setattr(_base, "in_notebook", lambda: True)
    auto = Dashboard(display=False)
    assert type(auto) is WidgetDashboard and auto.min_interval == 0.5


def test_on_start_takes_the_loops_run_info_or_a_dict_of_its_fields():
    info = RunInfo(**INFO)
    dash = Dashboard(mode="text", file=io.StringIO())
    dash.on_start(info)
    assert dash.info is info
    assert list(dash.history.columns) == info.columns and dash.history.attrs == info.attrs()
    dash.on_start(dict(hyperparameters=["lr", "ex_w"], vectors=["ex_w"], method=None))  # a hand-made run
    assert dash.info == RunInfo(hyperparameters=("lr", "ex_w"), scalars=("lr",), vectors=("ex_w",))


def test_on_start_refuses_something_else_than_the_loops_info():
    with pytest.raises(ValueError, match="on_start expects the loop's info dict"):
        Dashboard(mode="text").on_start({"names": ["lr"]})


def test_import_hgkit_loads_neither_ipywidgets_nor_matplotlib():
    code = (
        "import sys, hgkit, hgkit.widgets, hgkit.widgets.dashboard as d\n"
        "d.Dashboard(mode='text').on_start(dict(hyperparameters=['lr']))\n"
        "print(sorted(m for m in ('ipywidgets', 'matplotlib', 'IPython') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.splitlines()[-1] == "[]", out.stdout + out.stderr


# ----- with the real loop -----------------------------------------------------------------------------------


def ridge_problem():
    """Ridge regression on a line: w = b / (1 + wd) after training, so the best weight decay is 1."""
    import jax.numpy as jnp

    import hgkit as hg

    problem = hg.BilevelProblem(
        init=lambda hp, key: jnp.zeros(2),
        train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
        val_loss=lambda w, hp, b: jnp.sum((w - 0.5 * b) ** 2),
        optimizer=hg.optim.momentum(lr="lr", momentum=0.5),
    )
    hparams = {"lr": jnp.asarray(0.1), "wd": jnp.asarray(0.1)}
    return problem, hparams, dict(T=20, train_data=jnp.ones(2), val_data=jnp.ones(2), progress=False)


@pytest.fixture(scope="module")
def optimizer():
    import optax

    import hgkit as hg

    problem, hparams, run_args = ridge_problem()
    opt = hg.HyperOptimizer(
        problem,
        hyper_optimizer=optax.sgd(0.2),
        constraints={"wd": hg.constraints.positive(), "lr": hg.constraints.box(0.01, 0.4)},
    )
    return opt, hparams, run_args


def test_clicking_stop_during_a_real_run_ends_it_after_that_hyper_iteration(optimizer):
    opt, hparams, run_args = optimizer
    dash = widget_dashboard(min_interval=0)

    def click_at_iteration_2(record):
        if record["iteration"] == 2:
            dash.stop_button.click()

    result = opt.run(hparams, hyper_iterations=10, callbacks=[click_at_iteration_2, dash], **run_args)
    assert result.stopped == "callback"
    assert len(result.history) == 3 and list(result.history["iteration"]) == [0, 1, 2]
    assert len(dash.records) == 3
    assert "stopped after 3 of 10 hyper-iterations (the Stop button)" in dash.status.value
    assert dash.stop_button.description == "Stopped" and dash.stop_button.disabled


def test_a_real_run_ended_by_an_error_says_so_with_no_time_left(optimizer):
    """The loop calls on_end(result) also when an exception ends the run (result.stopped == "error")."""
    opt, hparams, run_args = optimizer
    dash = widget_dashboard(min_interval=0)

    def fail_at_iteration_3(record):
        if record["iteration"] == 3:
            raise RuntimeError("a callback failed")

    with pytest.raises(RuntimeError, match="a callback failed"):
        opt.run(hparams, hyper_iterations=10, callbacks=[dash, fail_at_iteration_3], **run_args)
    assert "reverse mode — ended by an error after 4 of 10 hyper-iterations" in dash.status.value, dash.status.value
    assert "left" not in dash.status.value and "time left" not in values_of(dash)
    assert len(panels(dash)["loss"].get_lines()[0].get_ydata()) == len(dash.records) == 4  # drawn to the end


def test_a_real_run_is_shown_as_its_history(optimizer):
    opt, hparams, run_args = optimizer
    dash = Dashboard(mode="widget")
    result = opt.run(hparams, hyper_iterations=8, callbacks=[dash], **run_args)
    assert result.stopped is None
    history = result.history
    # The dashboard's records are the history's rows, and its attrs the loop's.
    for column in history.columns:
        np.testing.assert_array_equal(dash.history[column].to_numpy(), history[column].to_numpy())
    assert dash.history.attrs == history.attrs
    shown = values_of(dash)
    assert shown["hyper-iteration"] == "8 / 8"
    assert float(shown["val_loss"]) == pytest.approx(history["val_loss"].iloc[-1], rel=1e-3)
    assert float(shown["wd"]) == pytest.approx(history["wd"].iloc[-1], rel=1e-3)
    # The final picture holds the whole run: the validation curve and both trajectories.
    ax = panels(dash)
    np.testing.assert_allclose(ax["loss"].get_lines()[0].get_ydata(), history["val_loss"])
    for name in ("wd", "lr"):
        [line] = ax[f"hp:{name}"].get_lines()
        np.testing.assert_allclose(line.get_ydata(), history[name])
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]


def test_a_real_run_with_log_constrained_hyperparameters_draws_them_on_a_log_axis():
    import optax

    import hgkit as hg

    problem, hparams, run_args = ridge_problem()
    opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.adam(0.5), constraints={"wd": hg.constraints.log()})
    dash = widget_dashboard(min_interval=0)
    result = opt.run(hparams, hyper_iterations=4, callbacks=[dash], **run_args)
    assert result.history.attrs["log_scale"] == ["wd"] and dash.info.log_scale == ("wd",)
    assert panels(dash)["hp:wd"].get_yscale() == "log" and panels(dash)["hp:lr"].get_yscale() == "linear"
    assert dash.info.method == "reverse mode"  # the label, not the method's repr
    assert dash.status.value.startswith("reverse mode — finished: 4 hyper-iterations")


def test_a_real_run_in_text_mode(optimizer):
    opt, hparams, run_args = optimizer
    out = io.StringIO()
    result = opt.run(hparams, hyper_iterations=4, callbacks=[Dashboard(file=out, min_interval=0)], **run_args)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[hgkit] 4 hyper-iterations, reverse mode; hyperparameters lr, wd; compiling")
    assert [line.split()[1] for line in lines[1:-1]] == ["1/4", "2/4", "3/4", "4/4"]
    last = result.history.iloc[-1]
    assert f"val_loss {last['val_loss']:.4g}" in lines[-2] and f"wd {last['wd']:.4g}" in lines[-2]
    assert lines[-1] == "[hgkit] finished: 4 hyper-iterations"


def test_a_real_time_run(optimizer):
    import hgkit as hg

    _, hparams, run_args = optimizer
    problem, _, _ = ridge_problem()
    opt = hg.HyperOptimizer(problem, method=hg.RealTime(5), constraints={"wd": hg.constraints.positive()})
    dash = widget_dashboard()
    result = opt.run(hparams, callbacks=[dash], **run_args)  # one run of T = 20 steps: 4 chunks of 5
    assert len(result.history) == len(dash.records) == 4
    assert values_of(dash)["hyper-iteration"] == "4 / 4"
    np.testing.assert_array_equal(dash.history["inner_steps"], [5, 10, 15, 20])


def test_readme_see_it_live_snippet_runs(capsys):
    """The README's "See it live" block, run after its quickstart, shortened to 2 hyper-iterations of 5 steps."""
    from helpers import readme_block

    quickstart, live = readme_block("## Quickstart"), readme_block("<!-- live-snippet -->")
    short = live.replace("hyper_iterations=30, T=100", "hyper_iterations=2, T=5")
    assert short != live
    quickstart = quickstart.replace("T=100", "T=5")
    namespace: dict = {}
    exec(compile(quickstart + short, "README.md", "exec"), namespace)
    result, fig = namespace["result"], namespace["fig"]
    assert len(result.history) == 2 and result.stopped is None
    assert fig.axes and "[hgkit] finished: 2 hyper-iterations" in capsys.readouterr().out  # text mode here
    import matplotlib.pyplot as plt

    plt.close(fig)
