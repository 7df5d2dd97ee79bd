"""A live dashboard for :class:`hgkit.HyperOptimizer` runs: plots, current values and a Stop button.

``Dashboard(...)`` is a loop callback (``on_start``, ``on_record``, ``on_end``; the protocol is in
:mod:`hgkit.history`) that makes one of two views, chosen by ``mode`` (``"auto"``: the widget in a Jupyter kernel,
text elsewhere):

* :class:`Dashboard`, the shared base: the records, the throttle and the pacing of redraws, the ``history``
  DataFrame, the Stop flag, the expected time left and the callback protocol. The run's columns are read from its
  :class:`~hgkit.history.RunInfo` (the loop's, or inferred from the first record with
  :meth:`~hgkit.history.RunInfo.from_columns` when the dashboard is used as a plain callback).
* :class:`WidgetDashboard` shows an ipywidgets box:

  * panels drawn with :mod:`hgkit.plot` into a PNG (an ``ipywidgets.Image``, CSS class ``hgkit-dashboard-plot``):
    each hyperparameter's trajectory on its own small axes (a column of them, sharing the x axis), each with its
    own y range, on a log axis when it is constrained with ``log()`` or spans more than a decade
    (:func:`hgkit.plot.hyperparameter_scale`), a vector as its distribution (median, 10–90 % and min–max
    bands); the hypergradient norm ‖∇f‖ on a log scale; the validation (outer) and training losses;
  * the current values as text (``hgkit-dashboard-values``, each value a ``.hgkit-value[data-name]``: iteration,
    losses, ‖∇f‖, every hyperparameter (a vector's median) and metric, the time and the expected time left) and a
    status line (``hgkit-dashboard-status``: compiling, running with the time left, finished or stopped);
  * a Stop button (``hgkit-stop``): the run ends after the current hyper-iteration and still returns its result,
    with ``result.stopped == "callback"``;
  * a choice of the hyperparameters shown (``hgkit-dashboard-select``) and of the scales of each panel
    (``hgkit-dashboard-scale-hp``: auto, linear or log; ``-grad``, ``-loss``), during the run where the kernel
    handles them beside it (as the Stop button), else after it;
  * hidden (``hgkit-dashboard-extents``), what the last picture drew: each hyperparameter's values and the
    vertical extent in pixels of its line and its scale (``.hgkit-extent[data-name][data-low][data-high]
    [data-pixels][data-box][data-scale]``), also in ``WidgetDashboard.extents``; the browser test checks
    with it that no trajectory is drawn flat.

* :class:`TextDashboard` prints progress lines (to ``file``, default ``sys.stdout``).

The values are updated at most every ``min_interval`` seconds. Redrawing costs a matplotlib render (a few
tenths of a second on a busy CPU), so it is paced: at most one redraw every ``min_interval`` seconds, and never
more often than keeps drawing under ``max_overhead`` of the run's time (the wait after a redraw is at least its
duration / ``max_overhead``; the first redraw, which also loads matplotlib, does not count); the last record is
always drawn. ``benchmarks/dashboard_overhead.py`` measures what it costs a run.

**Time.** Until the first record the step is being compiled (the first hyper-iteration includes it), and both
views say so; from the second record on they show the expected time left: the mean time per hyper-iteration since
the first record (so without the compilation) times the hyper-iterations to go.

**The Stop button during a run.** The run occupies the kernel's main thread, where widget events are normally
handled only once the cell ends; :mod:`hgkit.widgets._subshell` has the button's clicks (and the choices of what
is drawn) handled in a kernel subshell (ipykernel ≥ 7) while the run goes on. With older kernels a click takes
effect only after the run (the button can still be pressed from code, ``dashboard.stop_button.click()``).

Example (a hand-made run; with the loop: ``opt.run(hparams, ..., callbacks=[Dashboard()])``):
    >>> import io
    >>> from hgkit.widgets.dashboard import Dashboard
    >>> out = io.StringIO()
    >>> dash = Dashboard(mode="text", min_interval=0, file=out)
    >>> type(dash).__name__, isinstance(dash, Dashboard)
    ('TextDashboard', True)
    >>> dash.on_start(dict(hyperparameters=["lr"], scalars=["lr"], vectors=[], objectives=["val_loss"],
    ...                    metrics=[], hyper_iterations=2, method="reverse mode"))
    >>> for i, (loss, lr) in enumerate([(0.9, 0.1), (0.5, 0.2)]):
    ...     assert not dash.on_record({"iteration": i, "inner_steps": 10 * (i + 1), "wall_time": 0.1 * i,
    ...         "val_loss": loss, "train_loss": loss, "grad_norm": 1.0, "grad_norm.lr": 1.0, "lr": lr})
    >>> print(out.getvalue(), end="")
    [hgkit] 2 hyper-iterations, reverse mode; hyperparameters lr; compiling the step (the first hyper-iteration)…
    [hgkit] 1/2  val_loss 0.9  train_loss 0.9  ‖∇f‖ 1  lr 0.1  (0.0 s)
    [hgkit] 2/2  val_loss 0.5  train_loss 0.5  ‖∇f‖ 1  lr 0.2  (0.1 s)
    >>> list(dash.history["val_loss"]), dash.history.attrs["hyperparameters"], dash.info.method
    ([0.9, 0.5], ['lr'], 'reverse mode')
"""

from __future__ import annotations

import dataclasses
import html
import inspect
import io
import sys
import threading
import time
from collections.abc import Mapping, Sequence

from ..history import RunInfo
from ._subshell import serve_clicks_in_subshell

__all__ = ["Dashboard", "TextDashboard", "WidgetDashboard", "in_notebook"]

MODES = ("auto", "widget", "text")
XS = ("iteration", "inner_steps", "wall_time")
SCALES = ("linear", "log")
HP_SCALES = ("auto", "linear", "log")  # auto: each hyperparameter's own (hgkit.plot.hyperparameter_scale)
MAX_ROWS = 4  # hyperparameter axes per column of the picture
COMPILING = "compiling the step (the first hyper-iteration)…"
STOP_REASONS = {"callback": "stopped by a callback", "interrupted": "interrupted", "diverged": "diverged"}
_clock = time.monotonic  # the throttle's clock (a module attribute, so tests can drive it)


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython shell with a kernel), without importing IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _fmt(value) -> str:
    """A number short enough for a status line: 4 significant digits, ints as ints."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _duration(seconds: float) -> str:
    """``"8 s"``, ``"2 min 05 s"``, ``"1 h 03 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"


def _run_info(info) -> RunInfo:
    """The loop's :class:`RunInfo` as it is, or one made from a hand-made run's info dict (its keys are
    RunInfo's fields; ``scalars`` defaults to the hyperparameters not in ``vectors``, which defaults to none)."""
    if isinstance(info, RunInfo):
        return info
    if not isinstance(info, Mapping) or "hyperparameters" not in info:
        raise ValueError(
            f"on_start expects the loop's info dict with a 'hyperparameters' list, or its RunInfo; got {info!r}"
        )
    fields = {f.name for f in dataclasses.fields(RunInfo)}
    given = {k: v for k, v in info.items() if k in fields and v is not None}
    given.setdefault("vectors", ())
    given.setdefault("scalars", [n for n in given["hyperparameters"] if n not in given["vectors"]])
    return RunInfo(**given)


class Dashboard:
    """Live progress of a hyperparameter-optimization run: the shared base of its views, and their factory.

    ``Dashboard(...)`` returns a :class:`WidgetDashboard` or a :class:`TextDashboard`, as ``mode`` says; both are
    Dashboards and take the same arguments (each view ignores the options of the other).

    Args:
        names: the hyperparameters drawn (default: all the run has). Changeable after the run (widget).
        min_interval: the least time in seconds between two updates of the values or the plots (widget) or two
            progress lines (text); default 0.5 s for the widget and 2 s for text.
        max_overhead: the largest fraction of the run's time spent redrawing: after a redraw that took d
            seconds the next waits at least d / max_overhead.
        x: the x axis: ``"iteration"``, ``"inner_steps"`` or ``"wall_time"``.
        mode: ``"widget"``, ``"text"``, or ``"auto"`` (widget in a Jupyter kernel, text elsewhere).
        display: show the widget in the notebook when the run starts (if it is not shown yet).
        file: where text mode prints (default ``sys.stdout``).
        figsize, dpi: the size of the rendered figure (widget).

    Attributes:
        mode: ``"widget"`` or ``"text"``: the view.
        records: the records received, in order (plain dicts, as the loop sends them).
        history: the records as a DataFrame with the run's ``attrs`` (:meth:`hgkit.history.RunInfo.attrs`).
        info: the run's :class:`~hgkit.history.RunInfo` (what ``on_start`` received, or inferred from the first
            record when there was no ``on_start``).
        stopped: whether the Stop button (or :meth:`stop`) ended the run.
        draws, draw_seconds: how many redraws were made and their total time (0 for text).

    The dashboard is also callable, ``dashboard(record)``, as a plain callback.
    """

    mode: str  # the view's: "widget" or "text"
    default_interval: float  # min_interval when none is given
    draws_plots = False  # whether the view redraws plots (then paced by max_overhead)

    def __new__(cls, *args, **kwargs):
        if cls is Dashboard:  # the factory: the view that mode asks for
            mode = inspect.signature(Dashboard.__init__).bind(None, *args, **kwargs).arguments.get("mode", "auto")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
            cls = WidgetDashboard if mode == "widget" or (mode == "auto" and in_notebook()) else TextDashboard
        return super().__new__(cls)

    def __init__(
        self,
        names: Sequence[str] | None = None,
        min_interval: float | None = None,
        max_overhead: float = 0.05,
        x: str = "iteration",
        mode: str = "auto",
        display: bool = True,
        file=None,
        figsize: tuple[float, float] = (13.0, 3.8),
        dpi: int = 72,
    ):
        if mode not in ("auto", self.mode):
            raise ValueError(f"mode must be {self.mode!r} or 'auto' for a {type(self).__name__}; got {mode!r}")
        if min_interval is not None and not (isinstance(min_interval, int | float) and min_interval >= 0):
            raise ValueError(f"min_interval must be a number ≥ 0 (seconds) or None; got {min_interval!r}")
        if not (isinstance(max_overhead, int | float) and 0 < max_overhead <= 1):
            raise ValueError(f"max_overhead must be a fraction in (0, 1]; got {max_overhead!r}")
        if x not in XS:
            raise ValueError(f"x must be 'iteration', 'inner_steps' or 'wall_time'; got {x!r}")
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"names must be a list of hyperparameter names (str); got {names!r}")
        self.min_interval = self.default_interval if min_interval is None else float(min_interval)
        self.max_overhead = float(max_overhead)
        self.x = x
        self.names = list(names) if names is not None else None
        self.records: list[dict] = []
        self.info: RunInfo | None = None
        self.result = None
        self.draws = 0
        self.draw_seconds = 0.0
        self._stop = threading.Event()
        self._next_values = self._next_draw = 0.0  # monotonic times before which values / plots are not updated
        self._shown = self._drawn = 0  # records shown as values, drawn
        self._running = False
        self._history = None
        self._setup(display=display, file=file, figsize=figsize, dpi=dpi)

    # ----- the loop's callback protocol ----------------------------------------------------------------------

    def on_start(self, info: RunInfo | Mapping) -> None:
        """A run starts: ``info`` (the loop's :class:`~hgkit.history.RunInfo`, or a dict of its fields for a
        hand-made run) names its hyperparameters, objectives, metrics, length and method."""
        self.info = _run_info(info)
        self.records, self.result, self._history = [], None, None
        self.draws, self.draw_seconds, self._shown, self._drawn = 0, 0.0, 0, 0
        self._next_values = self._next_draw = 0.0
        self._stop.clear()
        self._running = True
        self._started()

    def on_record(self, record: Mapping) -> bool:
        """One hyper-iteration done: keep its row, show it if the throttle allows. True asks the loop to stop."""
        if self.info is None:  # used as a plain callback: no on_start
            self.on_start(RunInfo.from_columns(list(record)))
        self.records.append(dict(record))
        self._history = None
        now = _clock()
        total = self.info.hyper_iterations
        final = (total is not None and self._iteration(record) >= total) or self._stop.is_set()
        draw = final or (self.draws_plots and now >= self._next_draw)
        if draw or now >= self._next_values:
            self._show(draw=draw)
        return self._stop.is_set()

    __call__ = on_record

    def on_end(self, result=None) -> None:
        """The run ended (``result``: the loop's result, with ``.stopped``): the last record shown, a summary that
        says whether the run finished or was stopped, and why."""
        self.result = result
        self._running = False
        n = len(self.records)
        if self._shown < n or (self.draws_plots and self._drawn < n):
            self._show()
        stopped = getattr(result, "stopped", None)
        if stopped is None and self._stop.is_set():
            stopped = "callback"
        self._ended(self._summary(stopped), stopped)

    def _summary(self, stopped) -> str:
        """``finished: 6 hyper-iterations``, or ``stopped after 3 of 6 hyper-iterations (the Stop button)``."""
        n = len(self.records)
        if n and "member" in self.records[-1]:  # a population: one record per member and iteration
            n = len({r["iteration"] for r in self.records})
        if stopped is None:
            return f"finished: {n} hyper-iteration{'s' if n != 1 else ''}"
        why = "the Stop button" if stopped == "callback" and self._stop.is_set() else STOP_REASONS.get(stopped, stopped)
        return f"stopped after {n} of {self._total()} hyper-iterations ({why})"

    def stop(self, _button=None) -> None:
        """End the run after the current hyper-iteration (what the Stop button does)."""
        self._stop.set()
        self._stopping()

    @property
    def stopped(self) -> bool:
        """Whether the Stop button (or :meth:`stop`) asked the run to end."""
        return self._stop.is_set()

    @property
    def history(self):
        """The records as a DataFrame (the loop's columns, as its records have them), ``attrs`` from the run's
        :class:`~hgkit.history.RunInfo`, as the loop's history has them."""
        if self._history is None:
            import pandas as pd

            info = self.info or RunInfo.from_columns([])
            history = pd.DataFrame(self.records) if self.records else pd.DataFrame(columns=info.columns)
            history.attrs.update(info.attrs())
            self._history = history
        return self._history

    def redraw(self) -> None:
        """Draw the plots from the records (a view without plots has nothing to draw)."""

    # ----- showing: the throttle and the pacing of redraws -------------------------------------------------

    def _show(self, draw: bool = True) -> None:
        """Show the latest record: its values at once, the plots when ``draw`` (the throttles decide)."""
        now = _clock()
        self._show_values(self.records[-1])
        self._next_values = now + self.min_interval
        if draw and self.draws_plots:
            start = _clock()
            self.redraw()
            # The first redraw also pays for loading matplotlib and its fonts: it says nothing of the next ones.
            spent = _clock() - start if self.draws > 1 else 0.0
            self._next_draw = _clock() + max(self.min_interval, spent / self.max_overhead)
        self._shown = len(self.records)

    def _iteration(self, record: Mapping) -> int:
        """The record's hyper-iteration, counted from 1."""
        return int(record.get("iteration", len(self.records) - 1)) + 1

    def _total(self) -> str:
        total = self.info.hyper_iterations if self.info is not None else None
        return str(total) if total is not None else "?"

    def time_left(self) -> float | None:
        """The expected seconds left: the mean time per hyper-iteration since the first record (whose time
        includes compiling the step) times the hyper-iterations to go; None before the second record, when the
        run's length is unknown, or when none is left."""
        total = self.info.hyper_iterations if self.info is not None else None
        if total is None or len(self.records) < 2:
            return None
        first, last = self.records[0], self.records[-1]
        try:
            i0, i1 = int(first["iteration"]), int(last["iteration"])
            t0, t1 = float(first["wall_time"]), float(last["wall_time"])
        except (KeyError, TypeError, ValueError):
            return None
        if i1 <= i0 or i1 + 1 >= total:
            return None
        return (t1 - t0) / (i1 - i0) * (total - 1 - i1)

    def _current(self, record: Mapping) -> list[tuple[str, object]]:
        """(label, value) pairs of a record: losses, ‖∇f‖, hyperparameters (a vector's median), metrics."""
        info = self.info
        pairs = [("member", record["member"])] if "member" in record else []  # a population: whose values these are
        pairs += [(c, record[c]) for c in (*info.objectives, "train_loss") if c in record]
        if "grad_norm" in record:
            pairs.append(("‖∇f‖", record["grad_norm"]))
        for name in info.hyperparameters:
            column, label = (name, name)
            if name in info.vectors:  # its median (a history from before quantiles were kept: its mean)
                column, label = (f"{name}.median", f"{name} (median)")
                if column not in record:
                    column, label = (f"{name}.mean", f"{name} (mean)")
            if column in record:
                pairs.append((label, record[column]))
        pairs += [(m, record[m]) for m in info.metrics if m in record]
        return pairs

    # ----- what a view does ----------------------------------------------------------------------------------

    def _setup(self, **options) -> None:
        """Take the view's options (``display``, ``file``, ``figsize``, ``dpi``: each view uses its own)."""
        raise NotImplementedError

    def _started(self) -> None:
        """A run started (``self.info`` is set)."""
        raise NotImplementedError

    def _show_values(self, record: Mapping) -> None:
        """Show a record's values."""
        raise NotImplementedError

    def _stopping(self) -> None:
        """The run was asked to stop."""

    def _ended(self, summary: str, stopped) -> None:
        """The run ended: ``summary`` says how many hyper-iterations, and why it stopped (``stopped``)."""
        raise NotImplementedError


class TextDashboard(Dashboard):
    """The dashboard as progress lines (``[hgkit] 3/10  val_loss 0.52  ...``), for terminals and scripts.

    Made by ``Dashboard(mode="text")`` (or ``mode="auto"`` outside a Jupyter kernel); see :class:`Dashboard`.
    It prints to ``file`` (default ``sys.stdout``) at most every ``min_interval`` seconds (default 2 s), and
    always the last record.
    """

    mode = "text"
    default_interval = 2.0

    def _setup(self, *, file=None, **_widget_options) -> None:
        self.file = file

    def _print(self, line: str) -> None:
        print(line, file=self.file or sys.stdout, flush=True)

    def _started(self) -> None:
        total, method = self.info.hyper_iterations, self.info.method
        self._print(
            f"[hgkit] {total if total is not None else '?'} hyper-iterations{', ' + str(method) if method else ''}; "
            f"hyperparameters {', '.join(self.info.hyperparameters)}; {COMPILING}"
        )

    def _show_values(self, record: Mapping) -> None:
        items = "  ".join(f"{label} {_fmt(value)}" for label, value in self._current(record))
        wall, left = record.get("wall_time"), self.time_left()
        times = [f"{wall:.1f} s"] if isinstance(wall, int | float) else []
        times += [f"{_duration(left)} left"] if left is not None else []
        self._print(
            f"[hgkit] {self._iteration(record)}/{self._total()}  {items}" + (f"  ({', '.join(times)})" if times else "")
        )

    def _ended(self, summary: str, stopped) -> None:
        self._print(f"[hgkit] {summary}")

    def _repr_mimebundle_(self, **kwargs):
        return {"text/plain": f"Dashboard(mode='text', {len(self.records)} records)"}


class WidgetDashboard(Dashboard):
    """The dashboard as an ipywidgets box: live plots, the current values, a Stop button (see the module).

    Made by ``Dashboard(mode="widget")`` (or ``mode="auto"`` in a Jupyter kernel); see :class:`Dashboard`.

    Attributes:
        widget: the box (CSS class ``hgkit-dashboard``), shown when the run starts (``display=True``) or when
            the dashboard is a cell's value.
        image, values, status, stop_button, select, scales: its parts (``scales``: ``{"hp", "grad", "loss"}``;
            ``"hp"`` is ``"auto"``, each hyperparameter's own scale, ``"linear"`` or ``"log"``).
        figure: the matplotlib Figure the panels are drawn in (then rendered into ``image``).
        axes: the last picture's axes: ``{"hp:<name>": ..., "grad": ..., "loss": ...}``.
        extents: what the last picture drew of each hyperparameter: ``{name: {"low", "high", "pixels", "box",
            "scale"}}``, its values' range, the vertical extent of its line in the picture's pixels, its axes' box
            ``(left, top, right, bottom)`` in the picture's pixels and their y scale (also published, hidden, in
            the widget).
    """

    mode = "widget"
    default_interval = 0.5
    draws_plots = True

    def _setup(self, *, display=True, figsize=(13.0, 3.8), dpi=72, **_text_options) -> None:
        import ipywidgets as widgets
        from matplotlib.figure import Figure

        self.auto_display = display
        self.figsize, self.dpi = figsize, dpi
        self._displayed = False
        self.figure = Figure(figsize=figsize, dpi=dpi)  # its dpi the PNG's: transforms give the picture's pixels
        self.axes: dict = {}
        self.extents: dict = {}
        self._layout = None  # what the axes were made for
        self.image = widgets.Image(format="png").add_class("hgkit-dashboard-plot")
        self.values = widgets.HTML("<i>not started</i>").add_class("hgkit-dashboard-values")
        self.status = widgets.HTML("").add_class("hgkit-dashboard-status")
        self.drawn = widgets.HTML("", layout=widgets.Layout(display="none")).add_class("hgkit-dashboard-extents")
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", button_style="danger", tooltip="end the run after this hyper-iteration"
        ).add_class("hgkit-stop")
        self.stop_button.on_click(self.stop)
        self.select = widgets.SelectMultiple(
            options=self.names or [], value=tuple(self.names or []), rows=4, description="shown", disabled=True
        ).add_class("hgkit-dashboard-select")
        self.scales = {
            panel: widgets.ToggleButtons(
                options=options, value=options[0] if panel == "hp" else default, description=label, disabled=True,
                style={"button_width": "4.5em"},
            ).add_class(f"hgkit-dashboard-scale-{panel}")
            for panel, label, options, default in (
                ("hp", "hyperparameters", HP_SCALES, "auto"),
                ("grad", "‖∇f‖", SCALES, "log"),
                ("loss", "losses", SCALES, "linear"),
            )
        }  # fmt: skip
        for control in self._controls():
            control.observe(self._on_choice, names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.stop_button, self.status]),
                self.values,
                self.image,
                widgets.HBox([self.select, widgets.VBox(list(self.scales.values()))]),
                self.drawn,
            ]
        ).add_class("hgkit-dashboard")

    def _controls(self) -> list:
        return [self.select, *self.scales.values()]

    def _method(self) -> str:
        method = self.info.method if self.info is not None else None
        return f": {html.escape(str(method))}" if method else ""

    def _started(self) -> None:
        names = list(self.info.hyperparameters)
        self.select.options = names
        self.select.value = tuple(n for n in (self.names or names) if n in names)
        self.stop_button.description, self.stop_button.disabled = "Stop", False
        self.status.value = f"running{self._method()}; {COMPILING}"
        self.values.value = (
            f"<i>{COMPILING[:-1]}: once per run settings, so it takes longer than the next ones; the values and "
            "the expected time left follow it…</i>"
        )
        if self.auto_display and not self._displayed and in_notebook():
            from IPython.display import display

            display(self.widget)
            self._displayed = True
        # The choices of what is drawn work during the run where the kernel handles their events beside it (as
        # the Stop button's); the next redraw uses them. Elsewhere they wait for the end of the run.
        for control in self._controls():
            control.disabled = False
        live = [serve_clicks_in_subshell(control) for control in self._controls()]
        if not all(live):
            for control in self._controls():
                control.disabled = True
        serve_clicks_in_subshell(self.stop_button)

    def _show_values(self, record: Mapping) -> None:
        cells = [("hyper-iteration", f"{self._iteration(record)} / {self._total()}")]
        cells += [(label, _fmt(value)) for label, value in self._current(record)]
        if isinstance(record.get("wall_time"), int | float):
            cells.append(("time", f"{record['wall_time']:.1f} s"))
        left = self.time_left()
        if left is not None:
            cells.append(("time left", f"≈ {_duration(left)}"))
        row = "".join(
            f"<td style='padding:0 0.8em 0 0'><b>{html.escape(label)}</b><br>"
            f"<span class='hgkit-value' data-name='{html.escape(label)}'>{html.escape(value)}</span></td>"
            for label, value in cells
        )
        self.values.value = f"<table><tr>{row}</tr></table>"
        if self._running and not self._stop.is_set():
            total = self.info.hyper_iterations
            if left is not None:
                when = f"about {_duration(left)} left"
            elif total is not None and self._iteration(record) >= total:
                when = "the last hyper-iteration is done"
            else:  # after the first record, whose time includes compiling
                when = "estimating the time left…"
            self.status.value = f"running{self._method()}; {when}"

    def _stopping(self) -> None:
        self.stop_button.description = "Stopping…" if self._running else "Stop"
        self.stop_button.disabled = True
        if self._running:
            self.status.value = "stopping after this hyper-iteration…"
        serve_clicks_in_subshell(self.stop_button)  # publishing above re-routed the button's events

    def _ended(self, summary: str, stopped) -> None:
        self.status.value = html.escape(summary) + f"; {self.draws} redraws, {self.draw_seconds:.2f} s drawing"
        self.stop_button.description = "Stopped" if stopped else "Stop"
        self.stop_button.disabled = True
        for control in self._controls():
            control.disabled = False

    def _on_choice(self, change) -> None:
        if self._running:  # during a run the next record redraws, whatever the pace
            self._next_draw = 0.0
            self._drawn = min(self._drawn, len(self.records) - 1)  # and the end of the run, if none comes
        else:
            self.redraw()

    def redraw(self) -> None:
        """Draw the panels from the records into the image: each hyperparameter on its own axes (a column of them,
        at most ``MAX_ROWS`` high), the hypergradient norms, the losses."""
        if not self.records:
            return
        start = _clock()
        from .. import plot

        history = self.history
        names = [n for n in self.select.value if n in self.info.hyperparameters]
        self._arrange(names)
        colors = plot.hyperparameter_colors(self.info.hyperparameters)
        rows = self._layout[1]
        for k, name in enumerate(names):
            bottom = k % rows == rows - 1 or k == len(names) - 1
            self._draw_hyperparameter(plot, self.axes[f"hp:{name}"], history, name, colors[name], bottom)
        ax_grad, ax_loss = self.axes["grad"], self.axes["loss"]
        plot.grad_norms(ax_grad, history, names, x=self.x, logy=self.scales["grad"].value == "log")
        ax_grad.set_title("hypergradient norm")
        train = "train_loss" in history.columns
        plot.losses(ax_loss, history, x=self.x, train=train, logy=self.scales["loss"].value == "log")
        ax_loss.set_title("validation and training loss")
        if len(history) == 1:  # a line of one point is invisible: mark it
            for ax in self.figure.axes:
                for line in ax.get_lines():
                    line.set_marker("o")
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png", dpi=self.dpi)
        self.image.value = buffer.getvalue()
        self._publish_extents(names)
        self._drawn = len(self.records)
        self.draws += 1
        self.draw_seconds += _clock() - start

    def _arrange(self, names) -> None:
        """The axes for these hyperparameters: made anew when what is shown changed, else emptied of what they drew
        (reusing the axes, and their ticks, halves the cost of a redraw)."""
        fig = self.figure
        rows = max(min(len(names), MAX_ROWS), 1)
        columns = max(-(-len(names) // rows), 1)
        layout = (tuple(names), rows, columns, self.figsize)
        if layout == self._layout and fig.axes:
            for ax in fig.axes:
                for artist in [*ax.lines, *ax.collections, *ax.texts]:
                    artist.remove()
                if ax.get_legend() is not None:
                    ax.get_legend().remove()
                ax.relim()  # forget the removed artists' data limits
            return
        self._layout = layout
        fig.clear()
        width, height = self.figsize[0], max(self.figsize[1], 0.95 * rows + 1.0)
        fig.set_size_inches(width, height)
        # Fixed margins (in inches, so that they hold at any size): constrained layout would double the cost of
        # every redraw. Each gap leaves room for the next panel's tick labels and its y label.
        outer = fig.add_gridspec(
            1, 3, width_ratios=[0.8 + 0.45 * columns, 1, 1], left=0.6 / width, right=1 - 0.15 / width,
            bottom=0.62 / height, top=1 - 0.34 / height, wspace=0.32,
        )  # fmt: skip
        hp_grid = outer[0, 0].subgridspec(rows, columns, hspace=0.12, wspace=0.45)
        self.axes, first = {}, None
        for k, name in enumerate(names):
            ax = fig.add_subplot(hp_grid[k % rows, k // rows], sharex=first)
            first = first or ax
            self.axes[f"hp:{name}"] = ax
        box = outer[0, 0].get_position(fig)
        fig.text((box.x0 + box.x1) / 2, 1 - 0.12 / height, "hyperparameters", ha="center", va="top", fontsize=12)
        self.axes.update(grad=fig.add_subplot(outer[0, 1]), loss=fig.add_subplot(outer[0, 2]))

    def _draw_hyperparameter(self, plot, ax, history, name: str, color, bottom: bool) -> None:
        """One hyperparameter on its own small axes, named inside them (with its scale, and a vector's bands)."""
        from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter, NullLocator

        scale = self.scales["hp"].value
        plot.hyperparameters(ax, history, [name], x=self.x, colors={name: color}, scale=scale)
        if ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_ylabel("")
        ax.tick_params(labelsize=8)
        if ax.get_yscale() == "log":  # a few short labels: small axes have room for three or four
            low, high = ax.get_ylim()
            if high < 10 * low:  # within a decade matplotlib labels every minor tick: a few plain ones instead
                ax.yaxis.set_major_locator(MaxNLocator(nbins=3))
                ax.yaxis.set_minor_locator(NullLocator())
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: plot.panels._short(v)))
            else:
                ax.yaxis.set_major_locator(LogLocator(numticks=4))
                ax.yaxis.set_minor_locator(LogLocator(subs="auto", numticks=4))
                ax.yaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.get_offset_text().set_fontsize(7)
        if not bottom:
            ax.tick_params(labelbottom=False)
            ax.set_xlabel("")
        label = name + (" (log)" if ax.get_yscale() == "log" else "")
        if name in self.info.vectors:
            label += ": median, 10–90 %, min–max"
        ax.text(
            0.01, 0.96, label, transform=ax.transAxes, ha="left", va="top", fontsize=8, color=color,
            bbox=dict(facecolor="white", alpha=0.75, edgecolor="none", pad=1.0),
        )  # fmt: skip

    def _publish_extents(self, names) -> None:
        """After a draw: each hyperparameter's values and its line's vertical extent in the picture's pixels
        (from matplotlib's transforms at the figure's dpi, the PNG's), kept in ``extents`` and in the hidden
        ``hgkit-dashboard-extents`` element."""
        import numpy as np

        height = self.figure.bbox.height
        self.extents, spans = {}, []
        for name in names:
            ax = self.axes[f"hp:{name}"]
            lines = [line for line in ax.get_lines() if len(line.get_xdata())]
            if not lines:
                continue
            data = np.concatenate([np.column_stack([line.get_xdata(), line.get_ydata()]) for line in lines])
            data = data[np.all(np.isfinite(data), axis=1)]
            if ax.get_yscale() == "log":
                data = data[data[:, 1] > 0]
            if not len(data):
                continue
            pixels = ax.transData.transform(data)[:, 1]
            x0, y0, x1, y1 = ax.bbox.extents
            extent = {
                "low": float(data[:, 1].min()),
                "high": float(data[:, 1].max()),
                "pixels": float(pixels.max() - pixels.min()),
                "box": (round(x0), round(height - y1), round(x1), round(height - y0)),
                "scale": ax.get_yscale(),
            }
            self.extents[name] = extent
            spans.append(
                f"<span class='hgkit-extent' data-name='{html.escape(name)}' data-low='{extent['low']!r}' "
                f"data-high='{extent['high']!r}' data-pixels='{extent['pixels']:.1f}' "
                f"data-box='{','.join(map(str, extent['box']))}' data-scale='{extent['scale']}'></span>"
            )
        self.drawn.value = "".join(spans)

    def _repr_mimebundle_(self, **kwargs):
        self._displayed = True
        return self.widget._repr_mimebundle_(**kwargs)
