"""The classroom widgets: their numbers against hgkit and finite differences, driven through their sliders."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import finite_differences, rel_err
from matplotlib.figure import Figure

import hgkit as hg
from hgkit.widgets import classroom
from hgkit.widgets.classroom import CostExplorer, Explorer, explorer_state

LR, MU, T = 0.1, 0.5, 10


def toy_hypergradient(lr, mu, T, method):
    train, val = classroom.toy_data()
    hp = {"lr": jnp.asarray(lr), "mu": jnp.asarray(mu)}
    return hg.hypergradient(classroom.TOY, hp, T, train, val, method=method)


@pytest.fixture(scope="module")
def reverse_state():
    return explorer_state(LR, MU, T, mode="reverse", wrt="lr")


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_explorer_numbers_are_hgkits(mode, reverse_state):
    state = explorer_state(LR, MU, T, mode=mode, wrt="lr")
    value, grads = toy_hypergradient(LR, MU, T, classroom.MODES[mode])
    assert state["val_loss"] == pytest.approx(float(value), rel=1e-14)
    assert state["grads"]["lr"] == pytest.approx(float(grads["lr"]), rel=1e-14)
    assert state["grads"]["mu"] == pytest.approx(float(grads["mu"]), rel=1e-14)
    assert state["hypergradient"] == state["grads"]["lr"]
    # The two modes differentiate the same computation: they agree to rounding.
    assert state["hypergradient"] == pytest.approx(reverse_state["hypergradient"], rel=1e-9)
    assert state["dtype"] == "float64"


def test_explorer_hypergradient_against_finite_differences(reverse_state):
    # The explorer's own (displayed) difference, and an independent one of hgkit's value.
    assert reverse_state["finite_difference"] == pytest.approx(reverse_state["hypergradient"], rel=1e-6)

    def f(hp):
        train, val = classroom.toy_data()
        return hg.hypergradient(classroom.TOY, hp, T, train, val)[0]

    fd = finite_differences(f, {"lr": jnp.asarray(LR), "mu": jnp.asarray(MU)})
    assert rel_err(reverse_state["grads"], fd) < 1e-6


def test_explorer_with_respect_to_momentum_far_from_the_defaults():
    state = explorer_state(0.3, 0.9, 40, mode="forward", wrt="mu")
    _, grads = toy_hypergradient(0.3, 0.9, 40, hg.Reverse())
    assert state["hypergradient"] == pytest.approx(float(grads["mu"]), rel=1e-9)
    assert state["finite_difference"] == pytest.approx(state["hypergradient"], rel=1e-6)
    np.testing.assert_allclose(state["sweep_x"][[0, -1]], classroom.RANGES["mu"])


def test_explorer_curve_and_trajectory_are_the_run_hgkit_differentiates(reverse_state):
    s = reverse_state
    train, val = classroom.toy_data()
    result = hg.hypergradient_result(classroom.TOY, {"lr": jnp.asarray(LR), "mu": jnp.asarray(MU)}, T, train, val)
    assert s["trajectory"].shape == (T + 1, 2)
    np.testing.assert_array_equal(s["trajectory"][0], classroom.START)
    np.testing.assert_allclose(s["trajectory"][-1], result.state.params, rtol=1e-14)
    np.testing.assert_allclose(s["train_losses"], result.train_losses, rtol=1e-14)
    for i in (0, 17, len(s["sweep_x"]) - 1):
        value, _ = toy_hypergradient(float(s["sweep_x"][i]), MU, T, hg.Reverse())
        assert s["sweep_y"][i] == pytest.approx(float(value), rel=1e-12)
    # The curve has an interior minimum in η: the lesson of the toy (too small and too large both hurt).
    assert np.argmin(s["sweep_y"]) not in (0, len(s["sweep_y"]) - 1)


def test_the_drawn_tangent_has_the_hypergradient_as_slope(reverse_state):
    s = reverse_state
    axes = classroom.draw_explorer(Figure(), s)
    path = axes["path"].get_lines()[0]
    np.testing.assert_array_equal(path.get_xdata(), s["trajectory"][:, 0])
    np.testing.assert_array_equal(path.get_ydata(), s["trajectory"][:, 1])
    curve, tangent = axes["sweep"].get_lines()[:2]
    np.testing.assert_array_equal(curve.get_ydata(), s["sweep_y"])
    (x0, x1), (y0, y1) = tangent.get_xdata(), tangent.get_ydata()
    assert (y1 - y0) / (x1 - x0) == pytest.approx(s["hypergradient"], rel=1e-9)
    assert x0 < LR < x1
    assert axes["sweep"].get_xlabel() == "learning rate η"


def test_explorer_state_refuses_bad_input():
    with pytest.raises(ValueError, match="lr must be a positive number; got -0.1"):
        explorer_state(-0.1, MU, T)
    with pytest.raises(ValueError, match="mu must be a number in \\[0, 1\\); got 1.5"):
        explorer_state(LR, 1.5, T)
    with pytest.raises(ValueError, match="T must be a positive int; got 0"):
        explorer_state(LR, MU, 0)
    with pytest.raises(ValueError, match="mode must be one of \\['reverse', 'forward'\\]; got 'sideways'"):
        explorer_state(LR, MU, T, mode="sideways")
    with pytest.raises(ValueError, match="wrt must be one of"):
        explorer_state(LR, MU, T, wrt="T")


def test_explorer_reports_divergence():
    with pytest.raises(hg.DivergenceError, match="explorer: "):
        explorer_state(1e6, 0.0, 60)  # |1 − η h₂|^T overflows float64


def displayed(widget) -> float:
    return float(widget.value)


def test_moving_the_sliders_changes_the_displayed_hypergradient(reverse_state):
    e = Explorer(lr=LR, mu=MU, T=T)
    assert displayed(e.hypergradient) == pytest.approx(reverse_state["hypergradient"], rel=1e-11)
    assert displayed(e.finite_difference) == pytest.approx(reverse_state["finite_difference"], rel=1e-11)
    assert displayed(e.val_loss) == pytest.approx(reverse_state["val_loss"], rel=1e-11)
    assert float(e.difference.value) < 1e-6
    assert e.image.value[:8] == b"\x89PNG\r\n\x1a\n"
    first_image = e.image.value

    e.lr.value = 0.2
    moved = explorer_state(0.2, MU, T)
    assert displayed(e.hypergradient) == pytest.approx(moved["hypergradient"], rel=1e-11)
    assert abs(displayed(e.hypergradient) - reverse_state["hypergradient"]) > 1e-3
    assert e.image.value != first_image

    e.mode.value = "forward"  # the other mode shows the same number
    assert displayed(e.hypergradient) == pytest.approx(moved["hypergradient"], rel=1e-9)
    assert "forward" in e.hypergradient.description

    e.T.value = 20
    assert displayed(e.hypergradient) == pytest.approx(explorer_state(0.2, MU, 20)["hypergradient"], rel=1e-9)
    assert e.state["trajectory"].shape == (21, 2)

    e.wrt.value = "mu"
    assert e.hypergradient.description.startswith("df/dμ")
    assert displayed(e.hypergradient) == pytest.approx(e.state["grads"]["mu"], rel=1e-11)


def test_explorer_shows_errors_in_the_widget_and_has_css_hooks():
    e = Explorer(lr=LR, mu=MU, T=T)
    before = e.state
    e.points = 1  # not a valid curve: the next update fails, visibly
    e.mu.value = 0.6
    assert "ValueError" in e.status.value and "points" in e.status.value
    assert e.state is before
    classes = {
        name: getattr(e, name)._dom_classes
        for name in ("widget", "lr", "mu", "T", "mode", "hypergradient", "finite_difference", "image")
    }
    assert classes["widget"] == ("hgkit-explorer",)
    assert classes["hypergradient"] == ("hgkit-hypergradient",)
    assert classes["finite_difference"] == ("hgkit-finite-difference",)
    assert classes["lr"] == ("hgkit-lr",)
    assert "application/vnd.jupyter.widget-view+json" in e._repr_mimebundle_()


# Small sizes, shared by the cost tests (measure_cost caches per arguments, so each compiles once).
D, TS, MS = 32, (5, 40), (1, 8)


def test_measured_memory_grows_with_T_for_reverse_and_with_m_for_forward():
    costs = classroom.cost_table(T=40, m=1, Ts=TS, ms=MS, d=D, repeats=1)
    assert set(costs.columns) >= {"method", "T", "m", "seconds", "peak_bytes"}
    assert len(costs) == 2 * 3
    growth = classroom.memory_growth(costs, T=40, m=1)
    state_bytes = 2 * D * 8  # |s| = 2d float64 numbers
    # Reverse stores one state per step; forward's memory does not depend on T.
    assert 0.9 * state_bytes <= growth["reverse", "T"] <= 1.5 * state_bytes
    assert abs(growth["forward", "T"]) < 0.05 * state_bytes
    # Forward carries one tangent of the state per hyperparameter; reverse only a few numbers per hyperparameter
    # (the accumulated hypergradient and its per-step increments).
    assert growth["forward", "m"] >= 0.9 * state_bytes
    assert growth["reverse", "m"] < 8 * 8
    assert (costs["seconds"] > 0).all()


def test_cost_widget_displays_the_measured_memory_as_sliders_move():
    c = CostExplorer(T=5, m=1, Ts=TS, ms=MS, d=D, repeats=1)

    def shown(label):
        return int(label.value.split(" bytes")[0].replace(",", ""))

    rev, fwd = shown(c.reverse_memory), shown(c.forward_memory)
    assert c.reverse_stores.value.startswith("T·|s| = 5 × 64 = 320 numbers")
    c.T.value = 40
    assert shown(c.reverse_memory) >= rev + 0.9 * 35 * 2 * D * 8
    assert shown(c.forward_memory) == pytest.approx(fwd, rel=0.02)
    assert c.reverse_stores.value.startswith("T·|s| = 40 × 64")
    c.m.value = 8
    assert shown(c.forward_memory) >= fwd + 0.9 * 7 * 2 * D * 8
    assert c.forward_stores.value.startswith("m·|s| = 8 × 64")
    assert "bytes per inner step" in c.growth.value
    assert c.image.value[:4] == b"\x89PNG"
    assert c.widget._dom_classes == ("hgkit-cost",) and c.reverse_memory._dom_classes == ("hgkit-reverse-memory",)


def test_the_cost_figure_shows_measurements_and_theory():
    costs = classroom.cost_table(T=40, m=1, Ts=TS, ms=MS, d=D, repeats=1)
    axes = classroom.draw_costs(Figure(), costs, T=40, m=1)
    assert set(axes) == {"peak_bytes/T", "peak_bytes/m", "seconds/T", "seconds/m"}
    labels = [line.get_label() for line in axes["peak_bytes/T"].get_lines()]
    assert labels == ["forward", "forward: O(m·|s|)", "reverse", "reverse: O(T·|s|)"]
    reverse = axes["peak_bytes/T"].get_lines()[2]
    np.testing.assert_array_equal(reverse.get_xdata(), TS)


def test_measured_cost_is_the_compiled_programs_temporaries_and_outputs():
    # The one definition the cost experiment shares: XLA's temp + output bytes; the arguments are left out.
    problem, train, val = classroom.cost_problem(D, "float64")
    hparams = {"lr": jnp.full((8,), 0.1)}
    fn = jax.jit(lambda hp, tr, va: hg.hypergradient_result(problem, hp, 40, tr, va, method=hg.Forward())[:2])
    stats = fn.lower(hparams, train, val).compile().memory_analysis()
    row = classroom.measure_cost("forward", 40, 8, d=D, repeats=1)
    assert row["peak_bytes"] == stats.temp_size_in_bytes + stats.output_size_in_bytes
    assert list(row) == ["method", "T", "m", "seconds", "peak_bytes"] and row["seconds"] > 0


def test_stored_numbers_and_cost_input_checks():
    assert classroom.stored_numbers("reverse", T=40, m=4, d=D) == 40 * 2 * D
    assert classroom.stored_numbers("forward", T=40, m=4, d=D) == 4 * 2 * D
    with pytest.raises(ValueError, match="m \\(the number of learning-rate groups\\) must be at most d=32; got 33"):
        classroom.measure_cost("forward", 5, 33, d=D)
    with pytest.raises(ValueError, match="T must be a positive int; got 0"):
        classroom.measure_cost("reverse", 0, 1, d=D)
    with pytest.raises(ValueError, match="method must be one of"):
        classroom.stored_numbers("backward", 1, 1, 1)
