"""Classroom widgets: a hypergradient you can see, and what each mode stores and costs.

**The explorer's toy problem.** Two weights ``w ∈ R²`` trained by heavy-ball momentum (learning rate η,
momentum μ, T steps) on an ill-conditioned quadratic, from ``w_0 = (−2, −1.5)``::

    L_train(w) = ½ Σ_i h_i (w_i − a_i)²,   h = (0.5, 5),  a = (2, 1)
    f(η, μ)    = ½ ‖w_T − b‖²,              b = (0.5, 0)

Training heads for ``a`` but passes near ``b`` on its way, so for a fixed T the validation loss f has minima
inside the learning-rate range: the hypergradient ``df/dη`` is the slope of that curve, drawn as its tangent.

**The cost problem.** Logistic regression with d weights, heavy-ball momentum, and m per-group learning rates
(weight j uses ``lr[j mod m]``): reverse mode stores the T states ``s = (w, v)`` of |s| = 2d numbers, forward
mode carries one tangent of the state per hyperparameter (m·|s| numbers).

This module owns the two teaching problems, what the widgets show about them, and the widgets. The computing
parts are pure functions (:func:`explorer_state`, :func:`measure_cost`, :func:`cost_table`); the training runs
drawn are :func:`hgkit.unroll`'s, and the cost is measured by the definition the cost experiment uses
(:mod:`hgkit.measure`: compiled temporaries + outputs, fastest of several calls). The widgets
(:class:`Explorer`, :class:`CostExplorer`) are thin layers of ipywidgets over them, driveable from code (set a
slider's ``.value``, read the displayed numbers) and marked with CSS classes (``hgkit-...``) for browser tests.

Example:
    >>> from hgkit.widgets.classroom import explorer_state
    >>> rev = explorer_state(lr=0.1, mu=0.5, T=10, mode="reverse")
    >>> fwd = explorer_state(lr=0.1, mu=0.5, T=10, mode="forward")
    >>> abs(rev["hypergradient"] - fwd["hypergradient"]) < 1e-9 * abs(rev["hypergradient"])
    True
    >>> abs(rev["hypergradient"] - rev["finite_difference"]) < 1e-6 * abs(rev["hypergradient"])
    True
    >>> rev["trajectory"].shape
    (11, 2)
"""

from __future__ import annotations

import functools
import html
import io
import math

import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg

from .._checks import positive_int
from ..measure import measure_hypergradient

__all__ = [
    "CostExplorer",
    "Explorer",
    "TOY",
    "cost_table",
    "draw_costs",
    "draw_explorer",
    "explorer_state",
    "measure_cost",
    "memory_growth",
    "stored_numbers",
    "toy_data",
]

# ----- the explorer's toy problem ----------------------------------------------------------------------------

CURVATURE = (0.5, 5.0)
TRAIN_TARGET = (2.0, 1.0)
VAL_TARGET = (0.5, 0.0)
START = (-2.0, -1.5)
RANGES = {"lr": (0.01, 0.35), "mu": (0.0, 0.95)}  # momentum keeps η·h_max < 2(1 + μ): every run stays stable
SYMBOLS = {"lr": "η", "mu": "μ"}
T_MAX = 60
MODES = {"reverse": hg.Reverse(), "forward": hg.Forward()}


def _train_loss(w, hparams, target):
    return 0.5 * jnp.sum(jnp.asarray(CURVATURE, w.dtype) * (w - target) ** 2)


def _val_loss(w, hparams, target):
    return 0.5 * jnp.sum((w - target) ** 2)


TOY = hg.BilevelProblem(
    init=lambda hparams, key: jnp.asarray(START, jnp.result_type(hparams["lr"])),
    train_loss=_train_loss,
    val_loss=_val_loss,
    optimizer=hg.optim.momentum(lr="lr", momentum="mu"),
)


def toy_data(dtype=None):
    """The toy's training and validation "batches": the targets ``a`` and ``b``."""
    return jnp.asarray(TRAIN_TARGET, dtype), jnp.asarray(VAL_TARGET, dtype)


def unrolled(hparams, T: int, train, val):
    """The weights ``w_0..w_T`` of the run (shape (T+1, 2)) and ``f(λ)``: the dynamics hgkit differentiates."""
    run = hg.unroll(TOY, hg.initial_state(TOY, hparams, None), hparams, train, 0, T, store=True)
    return jnp.concatenate([run.states.params, run.state.params[None]]), TOY.val_loss(run.state.params, hparams, val)


def validation_loss(hparams, T: int, train, val):
    """``f(λ)``, the validation loss after T steps (no weights kept: what the swept curve evaluates)."""
    run = hg.unroll(TOY, hg.initial_state(TOY, hparams, None), hparams, train, 0, T)
    return TOY.val_loss(run.state.params, hparams, val)


@functools.partial(jax.jit, static_argnames=("T", "mode", "wrt"))
def _explore(hparams, T, mode, wrt, grid, h, train, val):
    result = hg.hypergradient_result(TOY, hparams, T, train, val, method=MODES[mode])
    path, _ = unrolled(hparams, T, train, val)

    def value_at(x):
        return validation_loss({**hparams, wrt: x}, T, train, val)

    sweep = jax.vmap(value_at)(grid)
    # Richardson-extrapolated central differences: (4 D(h/2) − D(h)) / 3 has an O(h⁴) truncation error.
    f = jax.vmap(value_at)(hparams[wrt] + h * jnp.asarray([1.0, -1.0, 0.5, -0.5], grid.dtype))
    fd = (4 * (f[2] - f[3]) / h - (f[0] - f[1]) / (2 * h)) / 3
    return result, path, sweep, fd


def explorer_state(
    lr: float, mu: float, T: int, mode: str = "reverse", wrt: str = "lr", points: int = 61, dtype=None
) -> dict:
    """Everything the explorer shows, as numbers.

    Args:
        lr, mu: the learning rate η > 0 and momentum 0 ≤ μ < 1.
        T: the number of training steps (≥ 1).
        mode: ``"reverse"`` or ``"forward"``: which hgkit method computes the hypergradient.
        wrt: ``"lr"`` or ``"mu"``: the hyperparameter swept and differentiated.
        points: the number of points of the swept curve.
        dtype: the float dtype (default: JAX's default float, float64 when x64 is enabled).

    Returns:
        A dict: the inputs; ``val_loss`` f(λ) and ``grads`` ``{"lr": df/dη, "mu": df/dμ}`` from
        ``hg.hypergradient_result``; ``hypergradient`` (the one for ``wrt``) and ``finite_difference`` (its
        Richardson central difference with step ``fd_step``); ``trajectory`` (the weights, shape (T+1, 2));
        ``sweep_x``, ``sweep_y`` (f along ``wrt``'s range, the other hyperparameter fixed); ``train_losses``.

    Raises:
        ValueError: an argument out of range (before any compute). ``hg.DivergenceError``: training diverged.
    """
    if not (isinstance(lr, int | float) and math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive number; got {lr!r}")
    if not (isinstance(mu, int | float) and 0 <= mu < 1):
        raise ValueError(f"mu must be a number in [0, 1); got {mu!r}")
    if not positive_int(T):
        raise ValueError(f"T must be a positive int; got {T!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
    if wrt not in RANGES:
        raise ValueError(f"wrt must be one of {list(RANGES)}; got {wrt!r}")
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points must be an int ≥ 2; got {points!r}")
    train, val = toy_data(dtype)
    hparams = {"lr": jnp.asarray(lr, train.dtype), "mu": jnp.asarray(mu, train.dtype)}
    x = float(hparams[wrt])
    lo, hi = RANGES[wrt]
    grid = jnp.linspace(min(lo, x), max(hi, x), points, dtype=train.dtype)
    # Balances truncation (h⁴) against rounding (ε/h) for the extrapolated difference.
    h = float(jnp.finfo(train.dtype).eps) ** 0.2 * max(abs(x), 0.1)
    result, path, sweep, fd = _explore(hparams, int(T), mode, wrt, grid, jnp.asarray(h, train.dtype), train, val)
    hg.raise_if_diverged(result, int(T), hparams, where="explorer: ")
    grads = {k: float(v) for k, v in result.grads.items()}
    return {
        "lr": float(hparams["lr"]),
        "mu": float(hparams["mu"]),
        "T": int(T),
        "mode": mode,
        "wrt": wrt,
        "dtype": str(train.dtype),
        "val_loss": float(result.value),
        "grads": grads,
        "hypergradient": grads[wrt],
        "finite_difference": float(fd),
        "fd_step": h,
        "trajectory": np.asarray(path),
        "sweep_x": np.asarray(grid),
        "sweep_y": np.asarray(sweep),
        "train_losses": np.asarray(result.train_losses),
    }


def draw_explorer(fig, state: dict) -> dict:
    """Draw an :func:`explorer_state` into ``fig``: the run on the loss contours, and f with its tangent.

    Returns ``{"path": ax, "sweep": ax}``. The tangent line is ``f(x₀) + g (x − x₀)`` with g the hypergradient.
    """
    ax_path, ax_sweep = fig.subplots(1, 2)
    path = state["trajectory"]
    targets = np.asarray([TRAIN_TARGET, VAL_TARGET, START])
    lo = np.minimum(path.min(0), targets.min(0)) - 0.5
    hi = np.maximum(path.max(0), targets.max(0)) + 0.5
    g0, g1 = np.meshgrid(np.linspace(lo[0], hi[0], 80), np.linspace(lo[1], hi[1], 80))
    pts = jnp.asarray(np.stack([g0.ravel(), g1.ravel()], -1))
    train_surface = np.asarray(jax.vmap(lambda w: _train_loss(w, None, jnp.asarray(TRAIN_TARGET, w.dtype)))(pts))
    train_surface = train_surface.reshape(g0.shape)
    ax_path.contour(g0, g1, train_surface, levels=12, colors="0.75", linewidths=0.8)
    ax_path.plot(path[:, 0], path[:, 1], "-o", color="tab:blue", markersize=3, label=f"w_0 … w_{state['T']}")
    ax_path.plot(*TRAIN_TARGET, "x", color="black", markersize=9, label="training minimum a")
    ax_path.plot(*VAL_TARGET, "*", color="tab:green", markersize=12, label="validation target b")
    ax_path.set_xlabel("w₁")
    ax_path.set_ylabel("w₂")
    ax_path.set_title(f"training run: η={state['lr']:.3f}, μ={state['mu']:.2f}, T={state['T']}")
    ax_path.legend(loc="best", fontsize="small")

    wrt, x0, f0, g = state["wrt"], state[state["wrt"]], state["val_loss"], state["hypergradient"]
    xs, ys = state["sweep_x"], state["sweep_y"]
    ax_sweep.plot(xs, ys, color="black", label="validation loss f")
    half = 0.12 * (xs[-1] - xs[0])
    tx = np.asarray([x0 - half, x0 + half])
    ax_sweep.plot(tx, f0 + g * (tx - x0), color="tab:red", linewidth=2, label=f"tangent ({state['mode']} mode)")
    ax_sweep.plot([x0], [f0], "o", color="tab:red")
    pad = 0.08 * (ys.max() - ys.min() + 1e-12)
    ax_sweep.set_ylim(ys.min() - pad, ys.max() + pad)  # a steep tangent must not squash the curve
    ax_sweep.set_xlabel(f"{'learning rate' if wrt == 'lr' else 'momentum'} {SYMBOLS[wrt]}")
    ax_sweep.set_ylabel(f"f = ½‖w_{state['T']} − b‖²")
    ax_sweep.set_title(f"df/d{SYMBOLS[wrt]} = {g:.6g}   (finite difference {state['finite_difference']:.6g})")
    ax_sweep.legend(loc="best", fontsize="small")
    return {"path": ax_path, "sweep": ax_sweep}


# ----- the cost problem --------------------------------------------------------------------------------------

COST_TS = (10, 50, 200, 1000)
COST_MS = (1, 4, 16, 64)


@functools.cache
def cost_problem(d: int, dtype_name: str):
    """The logistic-regression problem with m per-group learning rates, and its data (2d examples each)."""
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=d)

    def data(n):
        x = rng.normal(size=(n, d))
        return jnp.asarray(x, dtype_name), jnp.asarray(np.sign(x @ w_true + 0.5 * rng.normal(size=n)), dtype_name)

    def loss(w, hparams, batch):
        x, y = batch
        return jnp.mean(jax.nn.softplus(-y * (x @ w)))

    def group_lr(hparams, step):  # weight j uses lr[j mod m]
        return hparams["lr"][jnp.arange(d) % hparams["lr"].shape[0]]

    problem = hg.BilevelProblem(
        init=lambda hparams, key: jnp.zeros(d, hparams["lr"].dtype),
        train_loss=loss,
        val_loss=loss,
        optimizer=hg.optim.momentum(lr=group_lr, momentum=0.9),
    )
    return problem, data(2 * d), data(2 * d)


def stored_numbers(method: str, T: int, m: int, d: int) -> int:
    """What the algorithm keeps, in numbers: reverse the T states (T·|s|), forward the m tangents (m·|s|).

    ``|s| = 2d`` (weights and velocity).

    Example:
        >>> stored_numbers("reverse", T=100, m=4, d=64), stored_numbers("forward", T=100, m=4, d=64)
        (12800, 512)
    """
    if method not in MODES:
        raise ValueError(f"method must be one of {list(MODES)}; got {method!r}")
    return (T if method == "reverse" else m) * 2 * d


def measure_cost(method: str, T: int, m: int, d: int = 64, repeats: int = 5, dtype=None) -> dict:
    """Compile and time one hypergradient of the cost problem; a row of :data:`hgkit.plot.COST_COLUMNS`.

    Measured as the cost experiment measures (:func:`hgkit.measure.measure`): ``peak_bytes`` is the
    compiled program's temporaries + outputs as XLA assigns them
    (``jax.jit(...).lower(...).compile().memory_analysis()``; the arguments, the same for both modes, left out),
    so it is exact and free of timing noise; ``seconds`` is the fastest of ``repeats`` calls after a warm-up
    (compilation excluded). Results are cached per arguments.
    """
    if method not in MODES:
        raise ValueError(f"method must be one of {list(MODES)}; got {method!r}")
    for name, value in (("T", T), ("m", m), ("d", d), ("repeats", repeats)):
        if not positive_int(value):
            raise ValueError(f"{name} must be a positive int; got {value!r}")
    if m > d:
        raise ValueError(f"m (the number of learning-rate groups) must be at most d={d}; got {m}")
    return _measure(method, int(T), int(m), int(d), int(repeats), jnp.dtype(dtype or jnp.asarray(0.0).dtype).name)


@functools.cache
def _measure(method: str, T: int, m: int, d: int, repeats: int, dtype_name: str) -> dict:
    problem, train, val = cost_problem(d, dtype_name)
    hparams = {"lr": jnp.full((m,), 0.1, dtype_name)}
    cost = measure_hypergradient(problem, hparams, T, train, val, method=MODES[method], repeats=repeats)
    return {"method": method, "T": T, "m": m, **cost}


def cost_table(T: int, m: int, Ts=COST_TS, ms=COST_MS, d: int = 64, repeats: int = 5, dtype=None):
    """Both methods measured along T (at this m) and along m (at this T): a DataFrame of ``COST_COLUMNS``."""
    import pandas as pd

    points = sorted({(t, m) for t in Ts} | {(T, k) for k in ms})
    rows = [measure_cost(method, t, k, d, repeats, dtype) for method in MODES for t, k in points]
    return pd.DataFrame(rows)


def memory_growth(costs, T: int, m: int) -> dict:
    """Measured bytes per extra inner step (at m) and per extra hyperparameter (at T), for each method.

    The slope between the smallest and the largest measured point: for reverse mode per step it is what one
    stored state costs (|s| numbers), for forward mode per hyperparameter what one tangent costs.

    Returns ``{(method, "T"): bytes per step, (method, "m"): bytes per hyperparameter}``.
    """
    out = {}
    for method in MODES:
        for x, other, fixed in (("T", "m", m), ("m", "T", T)):
            rows = costs[(costs["method"] == method) & (costs[other] == fixed)].sort_values(x)
            xs, ys = rows[x].to_numpy(float), rows["peak_bytes"].to_numpy(float)
            out[method, x] = (ys[-1] - ys[0]) / (xs[-1] - xs[0]) if len(xs) > 1 else float("nan")
    return out


def draw_costs(fig, costs, T: int, m: int) -> dict:
    """Memory and time against T (at m) and against m (at T), measured with the theory beside.

    Returns the axes as ``{"peak_bytes/T": ax, "peak_bytes/m": ax, "seconds/T": ax, "seconds/m": ax}``.
    """
    from .. import plot

    axes = {}
    grid = fig.subplots(2, 2)
    for row, y in enumerate(("peak_bytes", "seconds")):
        for col, (x, other, fixed) in enumerate((("T", "m", m), ("m", "T", T))):
            ax = grid[row, col]
            plot.cost_curves(ax, costs[costs[other] == fixed], x=x, y=y, theory=True)
            ax.set_title(f"{other} = {fixed}")
            ax.legend(fontsize="x-small")
            axes[f"{y}/{x}"] = ax
    return axes


# ----- the widgets -------------------------------------------------------------------------------------------


def _number(description: str, css: str):
    import ipywidgets as widgets

    return widgets.HTML(description=description, style={"description_width": "initial"}).add_class(css)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def _error(status, e: Exception) -> None:
    """Show an exception in the widget: one raised in an observer would otherwise vanish into the log."""
    status.value = f"<span style='color:#b00020'>{html.escape(type(e).__name__)}: {html.escape(str(e))}</span>"


class _Widget:
    """Displays as its ``widget`` (an ipywidgets box) in a notebook."""

    widget = None

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)


class Explorer(_Widget):
    """Sliders for η, μ and T; the run, the validation curve and the hypergradient as its tangent.

    Attributes (all ipywidgets, to drive or read from code): ``lr``, ``mu``, ``T`` (sliders), ``mode``
    (reverse/forward), ``wrt`` (which hyperparameter is swept); ``hypergradient``, ``finite_difference``,
    ``difference`` (their relative difference), ``val_loss`` (HTML widgets whose ``value`` is the number),
    ``status``, ``image`` (the figure as PNG), and ``widget`` (the whole box). ``state`` is the last
    :func:`explorer_state`. CSS classes: ``hgkit-explorer``, ``hgkit-lr``, ``hgkit-mu``, ``hgkit-T``,
    ``hgkit-mode``, ``hgkit-wrt``, ``hgkit-hypergradient``, ``hgkit-finite-difference``, ``hgkit-fd-difference``,
    ``hgkit-val-loss``, ``hgkit-status``, ``hgkit-explorer-plot``.
    """

    def __init__(self, lr=0.1, mu=0.5, T=10, mode="reverse", wrt="lr", points=61):
        import ipywidgets as widgets
        from matplotlib.figure import Figure

        wide = {"description_width": "initial"}
        self.lr = widgets.FloatSlider(
            value=lr,
            min=RANGES["lr"][0],
            max=RANGES["lr"][1],
            step=0.005,
            readout_format=".3f",
            description="learning rate η",
            continuous_update=False,
            style=wide,
        ).add_class("hgkit-lr")
        self.mu = widgets.FloatSlider(
            value=mu,
            min=RANGES["mu"][0],
            max=RANGES["mu"][1],
            step=0.01,
            description="momentum μ",
            continuous_update=False,
            style=wide,
        ).add_class("hgkit-mu")
        self.T = widgets.IntSlider(
            value=T, min=1, max=T_MAX, description="steps T", continuous_update=False, style=wide
        ).add_class("hgkit-T")
        self.mode = widgets.ToggleButtons(options=list(MODES), value=mode, description="mode").add_class("hgkit-mode")
        self.wrt = widgets.ToggleButtons(
            options=[("learning rate η", "lr"), ("momentum μ", "mu")], value=wrt, description="sweep"
        ).add_class("hgkit-wrt")
        self.val_loss = _number("validation loss f", "hgkit-val-loss")
        self.hypergradient = _number("hypergradient", "hgkit-hypergradient")
        self.finite_difference = _number("finite difference", "hgkit-finite-difference")
        self.difference = _number("relative difference", "hgkit-fd-difference")
        self.status = widgets.HTML().add_class("hgkit-status")
        self.image = widgets.Image(format="png").add_class("hgkit-explorer-plot")
        self.points = points
        self.state = None
        self._figure = Figure(figsize=(10, 4.2), layout="constrained")
        controls = (self.lr, self.mu, self.T, self.mode, self.wrt)
        numbers = (self.val_loss, self.hypergradient, self.finite_difference, self.difference)
        self.widget = widgets.VBox(
            [
                widgets.HBox([widgets.VBox(controls[:3]), widgets.VBox(controls[3:])]),
                widgets.HBox(numbers),
                self.status,
                self.image,
            ]
        ).add_class("hgkit-explorer")
        for control in controls:
            control.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        """Recompute from the controls' values and redraw (called whenever one of them changes)."""
        try:
            state = explorer_state(
                self.lr.value, self.mu.value, self.T.value, self.mode.value, self.wrt.value, self.points
            )
        except Exception as e:
            _error(self.status, e)
            return
        self.state = state
        g, fd = state["hypergradient"], state["finite_difference"]
        self.hypergradient.description = f"df/d{SYMBOLS[state['wrt']]} ({state['mode']})"
        self.hypergradient.value = f"{g:.12g}"
        self.finite_difference.value = f"{fd:.12g}"
        self.difference.value = f"{abs(g - fd) / max(abs(g), 1e-300):.1e}"
        self.val_loss.value = f"{state['val_loss']:.12g}"
        self.status.value = f"{state['dtype']}, finite-difference step {state['fd_step']:.1e}"
        self._figure.clear()
        draw_explorer(self._figure, state)
        self.image.value = _png(self._figure)


class CostExplorer(_Widget):
    """What reverse and forward mode store and cost as T and the number of hyperparameters m grow.

    Measured on the cost problem (module docstring) with :func:`measure_cost`: compiled memory and time, with
    the O(T·|s|) and O(m·|s|) theory drawn beside. Moving a slider measures what it has not measured yet
    (a compilation each, about a second).

    Attributes: ``T``, ``m`` (selection sliders); ``reverse_stores``, ``forward_stores`` (what the algorithm keeps,
    in numbers), ``reverse_memory``, ``forward_memory`` (measured peak bytes at the current T and m: the value
    is ``"<bytes> bytes (...)"``), ``reverse_time``, ``forward_time``; ``status``, ``image``, ``widget``; ``costs``
    (the last :func:`cost_table`). CSS classes ``hgkit-cost``, ``hgkit-cost-T``, ``hgkit-cost-m``,
    ``hgkit-reverse-stores``, ``hgkit-forward-stores``, ``hgkit-reverse-memory``, ``hgkit-forward-memory``,
    ``hgkit-reverse-time``, ``hgkit-forward-time``, ``hgkit-cost-growth`` (the measured bytes per step and per
    hyperparameter, :func:`memory_growth`), ``hgkit-status``, ``hgkit-cost-plot``.
    """

    def __init__(self, T=200, m=4, Ts=COST_TS, ms=COST_MS, d=64, repeats=5):
        import ipywidgets as widgets
        from matplotlib.figure import Figure

        wide = {"description_width": "initial"}
        self.Ts, self.ms, self.d, self.repeats = tuple(Ts), tuple(ms), d, repeats
        self.T = widgets.SelectionSlider(
            options=self.Ts, value=T, description="inner steps T", continuous_update=False, style=wide
        ).add_class("hgkit-cost-T")
        self.m = widgets.SelectionSlider(
            options=self.ms, value=m, description="hyperparameters m", continuous_update=False, style=wide
        ).add_class("hgkit-cost-m")
        self.labels = {}
        for method in MODES:
            for what, text in (("stores", "stores"), ("memory", "peak memory"), ("time", "time")):
                self.labels[method, what] = _number(f"{method} {text}", f"hgkit-{method}-{what}")
        self.reverse_stores, self.forward_stores = self.labels["reverse", "stores"], self.labels["forward", "stores"]
        self.reverse_memory, self.forward_memory = self.labels["reverse", "memory"], self.labels["forward", "memory"]
        self.reverse_time, self.forward_time = self.labels["reverse", "time"], self.labels["forward", "time"]
        self.growth = widgets.HTML().add_class("hgkit-cost-growth")
        self.status = widgets.HTML().add_class("hgkit-status")
        self.image = widgets.Image(format="png").add_class("hgkit-cost-plot")
        self.costs = None
        self._figure = Figure(figsize=(10, 7), layout="constrained")
        columns = [widgets.VBox([self.labels[method, w] for w in ("stores", "memory", "time")]) for method in MODES]
        self.widget = widgets.VBox(
            [widgets.HBox([self.T, self.m]), widgets.HBox(columns), self.growth, self.status, self.image]
        ).add_class("hgkit-cost")
        self.T.observe(self.update, names="value")
        self.m.observe(self.update, names="value")
        self.update()

    def update(self, change=None) -> None:
        """Measure what is missing for the current T and m, and redraw."""
        T, m, d = self.T.value, self.m.value, self.d
        self.status.value = "measuring…"
        try:
            costs = cost_table(T, m, self.Ts, self.ms, d, self.repeats)
        except Exception as e:
            _error(self.status, e)
            return
        self.costs = costs
        state = 2 * d
        for method in MODES:
            row = costs[(costs["method"] == method) & (costs["T"] == T) & (costs["m"] == m)].iloc[0]
            count = T if method == "reverse" else m
            self.labels[method, "stores"].value = (
                f"{'T' if method == 'reverse' else 'm'}·|s| = {count} × {state} = "
                f"{stored_numbers(method, T, m, d):,} numbers"
            )
            self.labels[
                method, "memory"
            ].value = f"{int(row['peak_bytes']):,} bytes ({row['peak_bytes'] / 2**10:.0f} KiB)"
            self.labels[method, "time"].value = f"{row['seconds'] * 1e3:.3g} ms"
        growth = memory_growth(costs, T, m)
        itemsize = jnp.dtype(jnp.asarray(0.0).dtype).itemsize
        self.growth.value = (
            f"measured: reverse memory grows by {growth['reverse', 'T']:,.0f} bytes per inner step, forward by "
            f"{growth['forward', 'm']:,.0f} bytes per hyperparameter; one state |s| is {state * itemsize:,} bytes"
        )
        self.status.value = f"|s| = 2d = {state} numbers (d = {d} weights and their velocity)"
        self._figure.clear()
        draw_costs(self._figure, costs, T, m)
        self.image.value = _png(self._figure)
