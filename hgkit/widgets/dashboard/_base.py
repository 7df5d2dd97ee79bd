"""The dashboard's shared base, :class:`Dashboard`: the loop's callback protocol, the records and their
``history``, the Stop flag and the summary of how the run ended; what a view shows is its subclass's
(:mod:`._text`, :mod:`._widget`). ``Dashboard(...)`` is also the factory of the views, as ``mode`` says.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import threading
from collections.abc import Mapping, Sequence

from ...history import RunInfo
from . import _pacing

MODES = ("auto", "widget", "text")
XS = ("iteration", "inner_steps", "wall_time")
COMPILING = "compiling the step (the first hyper-iteration)…"
STOP_REASONS = {"callback": "stopped by a callback", "interrupted": "interrupted", "diverged": "diverged"}
UNITS = {"inner_steps": "inner step"}  # what the progress counts, by the x axis (else hyper-iterations)


def in_notebook() -> bool:
    """Whether this code runs in a Jupyter kernel (an IPython shell with a kernel), without importing IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def format_value(value) -> str:
    """A number short enough for a status line: 4 significant digits, ints as ints."""
    if isinstance(value, bool) or value is None or isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


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
            seconds the next waits at least d / max_overhead, but no more than ``max_interval``.
        x: the x axis: ``"iteration"``, ``"inner_steps"`` or ``"wall_time"``. With ``"inner_steps"`` the
            progress also counts inner steps (``inner step 1072 / 2000``): what an online method's run
            (``hg.RealTime``, one training run in chunks) is best followed by.
        mode: ``"widget"``, ``"text"``, or ``"auto"`` (widget in a Jupyter kernel, text elsewhere).
        display: show the widget in the notebook when the run starts (if it is not shown yet).
        file: where text mode prints (default ``sys.stdout``).
        figsize, dpi: the size of the rendered figure (widget).
        max_interval: the most seconds the plots lag the values (widget): a redraw is made at least this often,
            even where that costs more than ``max_overhead``.

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

    _views: dict[str, type] = {}  # "text" / "widget" -> the view's class: each view registers itself

    def __init_subclass__(cls, *, view: str | None = None, **kwargs):
        # The views subclass this class and register here, so that the factory below needs no import of them.
        super().__init_subclass__(**kwargs)
        if view is not None:
            Dashboard._views[view] = cls

    def __new__(cls, *args, **kwargs):
        if cls is Dashboard:  # the factory: the view that mode asks for
            mode = inspect.signature(Dashboard.__init__).bind(None, *args, **kwargs).arguments.get("mode", "auto")
            if mode not in MODES:
                raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
            cls = Dashboard._views["widget" if mode == "widget" or (mode == "auto" and in_notebook()) else "text"]
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
        max_interval: float = 3.0,
    ):
        if mode not in ("auto", self.mode):
            raise ValueError(f"mode must be {self.mode!r} or 'auto' for a {type(self).__name__}; got {mode!r}")
        if min_interval is not None and not (isinstance(min_interval, int | float) and min_interval >= 0):
            raise ValueError(f"min_interval must be a number ≥ 0 (seconds) or None; got {min_interval!r}")
        if not (isinstance(max_overhead, int | float) and 0 < max_overhead <= 1):
            raise ValueError(f"max_overhead must be a fraction in (0, 1]; got {max_overhead!r}")
        if not (isinstance(max_interval, int | float) and max_interval > 0):
            raise ValueError(f"max_interval must be a number > 0 (seconds); got {max_interval!r}")
        if x not in XS:
            raise ValueError(f"x must be 'iteration', 'inner_steps' or 'wall_time'; got {x!r}")
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"names must be a list of hyperparameter names (str); got {names!r}")
        interval = self.default_interval if min_interval is None else float(min_interval)
        self._pace = _pacing.Pacing(interval, float(max_overhead), float(max_interval))
        self.x = x
        self.names = list(names) if names is not None else None
        self.records: list[dict] = []
        self.info: RunInfo | None = None
        self.result = None
        self.draws = 0
        self.draw_seconds = 0.0
        self._stop = threading.Event()
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
        self._pace.restart()
        self._stop.clear()
        self._running = True
        self._started()

    def on_record(self, record: Mapping) -> bool:
        """One hyper-iteration done: keep its row, show it if the throttle allows. True asks the loop to stop."""
        if self.info is None:  # used as a plain callback: no on_start
            self.on_start(RunInfo.from_columns(list(record)))
        self.records.append(dict(record))
        self._history = None
        total = self.info.hyper_iterations
        final = (total is not None and self._iteration(record) >= total) or self._stop.is_set()
        show, draw = self._pace.due(final, self.draws_plots)
        if show:
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
        """``finished: 6 hyper-iterations``, ``stopped after 3 of 6 hyper-iterations (the Stop button)``, or
        ``ended by an error after 3 of 6 hyper-iterations`` (in inner steps where they are counted)."""
        done, total, unit = self._count()
        if stopped is None:
            return f"finished: {done} {unit}{'s' if done != 1 else ''}"
        if stopped == "error":
            return f"ended by an error after {done} of {total} {unit}s"
        why = "the Stop button" if stopped == "callback" and self._stop.is_set() else STOP_REASONS.get(stopped, stopped)
        return f"stopped after {done} of {total} {unit}s ({why})"

    def _count(self, record: Mapping | None = None) -> tuple[int, str, str]:
        """How far the run is at ``record`` (default: the last): ``(done, total, unit)``, in hyper-iterations,
        or in inner steps with ``x="inner_steps"`` (the total then the hyper-iterations times the inner steps of
        each, read from the first record); ``total`` is ``"?"`` where unknown."""
        record = record if record is not None else (self.records[-1] if self.records else None)
        if record is None:
            return 0, self._total(), "hyper-iteration"
        iterations = self._iteration(record)
        if self.x in UNITS and isinstance(record.get(self.x), int | float):
            first = self.records[0] if self.records else record
            per = float(first[self.x]) / self._iteration(first) if isinstance(first.get(self.x), int | float) else 0
            total = self.info.hyper_iterations if self.info is not None else None
            return int(record[self.x]), str(round(per * total)) if total and per else "?", UNITS[self.x]
        return iterations, self._total(), "hyper-iteration"

    def stop(self, _button=None) -> None:
        """End the run after the current hyper-iteration (what the Stop button does)."""
        self._stop.set()
        self._stopping()

    @property
    def min_interval(self) -> float:
        """The least time in seconds between two updates."""
        return self._pace.min_interval

    @property
    def max_overhead(self) -> float:
        """The largest fraction of the run's time spent redrawing."""
        return self._pace.max_overhead

    @property
    def stopped(self) -> bool:
        """Whether the Stop button (or :meth:`stop`) asked the run to end."""
        return self._stop.is_set()

    @property
    def history(self):
        """The records as a DataFrame (the loop's columns, as its records have them), ``attrs`` from the run's
        :class:`~hgkit.history.RunInfo`, as the loop's history has them."""
        if self._history is None:
            self._history = self._frame(self.records)
        return self._history

    def _frame(self, records: Sequence[Mapping]):
        """``records`` as a DataFrame with the run's ``attrs`` (what :attr:`history` is made of)."""
        import pandas as pd

        info = self.info or RunInfo.from_columns([])
        history = pd.DataFrame(list(records)) if records else pd.DataFrame(columns=info.columns)
        history.attrs.update(info.attrs())
        return history

    def redraw(self) -> None:
        """Draw the plots from the records (a view without plots has nothing to draw)."""

    # ----- showing: the throttle and the pacing of redraws -------------------------------------------------

    def _show(self, draw: bool = True) -> None:
        """Show the latest record: its values at once, the plots when ``draw`` (the throttles decide)."""
        now = _pacing.clock()
        self._show_values(self.records[-1])
        self._pace.shown(now)
        if draw and self.draws_plots:
            start = _pacing.clock()
            self.redraw()
            # The first redraw also pays for loading matplotlib and its fonts: it says nothing of the next ones.
            self._pace.drawn(_pacing.clock() - start if self.draws > 1 else 0.0)
        self._shown = len(self.records)

    def _iteration(self, record: Mapping) -> int:
        """The record's hyper-iteration, counted from 1."""
        return int(record.get("iteration", len(self.records) - 1)) + 1

    def _total(self) -> str:
        total = self.info.hyper_iterations if self.info is not None else None
        return str(total) if total is not None else "?"

    def _time_left_shown(self) -> float | None:
        """The time left to show: :meth:`time_left` while the run goes on, None once it ended or was asked to stop
        (a Stop, a callback, an error: nothing of the estimate holds then)."""
        return self.time_left() if self._running and not self._stop.is_set() else None

    def time_left(self) -> float | None:
        """The expected seconds left (:func:`~hgkit.widgets.dashboard._pacing.time_left`): the mean time per
        hyper-iteration since the first record (whose time includes compiling the step) times the hyper-iterations
        to go; None before the second record, when the run's length is unknown, or when none is left."""
        return _pacing.time_left(self.records, self.info.hyper_iterations if self.info is not None else None)

    def _current(self, record: Mapping) -> list[tuple[str, object]]:
        """(label, value) pairs of a record: losses, ‖∇f‖, hyperparameters (a vector's median), metrics."""
        info = self.info
        pairs = [("member", record["member"])] if "member" in record else []  # a population: whose values these are
        pairs += [(c, record[c]) for c in (*info.objectives, "train_loss") if c in record]
        if "grad_norm" in record:
            pairs.append(("‖∇f‖", record["grad_norm"]))
        for name in info.hyperparameters:
            column, label = (name, name)
            if name in info.vectors:  # its median
                column, label = (f"{name}.median", f"{name} (median)")
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
