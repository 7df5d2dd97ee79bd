"""A live dashboard for :class:`hgkit.HyperOptimizer` runs: plots, current values and a Stop button.

:class:`Dashboard` is a loop callback (``on_start``, ``on_record``, ``on_end``; the contract is in :mod:`hgkit.outer`).
In a Jupyter notebook it shows an ipywidgets box:

* three panels drawn with :mod:`hgkit.plot` into a PNG (an ``ipywidgets.Image``, CSS class
  ``hgkit-dashboard-plot``): hyperparameter trajectories, the hypergradient norm ‖∇f‖ on a log scale, and the
  validation (outer) and training losses;
* the current values as text (``hgkit-dashboard-values``: iteration, losses, ‖∇f‖, every hyperparameter and
  metric) and a status line (``hgkit-dashboard-status``);
* a Stop button (``hgkit-stop``): the run ends after the current hyper-iteration and still returns its result,
  with ``result.stopped == "callback"``;
* after the run, a choice of the hyperparameters shown (``hgkit-dashboard-select``) and linear/log scales for each
  panel (``hgkit-dashboard-scale-hp``, ``-grad``, ``-loss``).

The values are updated at most every ``min_interval`` seconds. Redrawing costs a matplotlib render (a few
tenths of a second on a busy CPU), so it is paced: at most one redraw every ``min_interval`` seconds, and never
more often than keeps drawing under ``max_overhead`` of the run's time (the wait after a redraw is at least its
duration / ``max_overhead``; the first redraw, which also loads matplotlib, does not count); the last record is
always drawn. ``benchmarks/dashboard_overhead.py`` measures what it costs a run.

Outside a notebook (no IPython kernel) it prints progress lines instead, throttled the same way.

**The Stop button during a run.** The run occupies the kernel's main thread, where widget events are normally
handled only once the cell ends. With ipykernel ≥ 7 (kernel subshells) the dashboard asks the kernel to deliver
the button's clicks to a subshell thread, which handles them while the run goes on; with older kernels a click
takes effect only after the run (the button can still be pressed from code, ``dashboard.stop_button.click()``).

Example (a hand-made run; with the loop: ``opt.run(hparams, ..., callbacks=[Dashboard()])``):
    >>> import io
    >>> from hgkit.widgets.dashboard import Dashboard
    >>> out = io.StringIO()
    >>> dash = Dashboard(mode="text", min_interval=0, file=out)
    >>> dash.on_start(dict(hyperparameters=["lr"], scalars=["lr"], vectors=[], objectives=["val_loss"],
    ...                    metrics=[], hyper_iterations=2, method="Reverse()"))
    >>> for i, (loss, lr) in enumerate([(0.9, 0.1), (0.5, 0.2)]):
    ...     assert not dash.on_record({"iteration": i, "inner_steps": 10 * (i + 1), "wall_time": 0.1 * i,
    ...         "val_loss": loss, "train_loss": loss, "grad_norm": 1.0, "grad_norm.lr": 1.0, "lr": lr})
    >>> print(out.getvalue().splitlines()[-1])
    [hgkit] 2/2  val_loss 0.5  train_loss 0.5  ‖∇f‖ 1  lr 0.2  (0.1 s)
    >>> list(dash.history["val_loss"]), dash.history.attrs["hyperparameters"]
    ([0.9, 0.5], ['lr'])
"""

from __future__ import annotations

import html
import io
import sys
import threading
import time
from collections.abc import Mapping, Sequence

__all__ = ["Dashboard", "in_notebook"]

STANDARD = ("iteration", "member", "inner_steps", "wall_time", "val_loss", "train_loss", "grad_norm")
VECTOR_SUFFIXES = (".mean", ".min", ".max", ".norm")
MODES = ("auto", "widget", "text")
SCALES = ("linear", "log")
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
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


def _infer_info(record: Mapping) -> dict:
    """What ``on_start`` would have said, from a record's columns (for a dashboard used as a plain callback)."""
    objectives = [c for c in record if c == "val_loss" or c.startswith("val_loss.")]
    names, scalars, vectors = [], [], []
    for column in record:
        if column in STANDARD or column.startswith(("grad_norm.", "val_loss.")):
            continue
        base, dot, suffix = column.rpartition(".")
        if dot and "." + suffix in VECTOR_SUFFIXES:
            if base not in vectors:
                vectors.append(base)
                names.append(base)
        elif f"grad_norm.{column}" in record:
            scalars.append(column)
            names.append(column)
    metrics = [c for c in record if c not in STANDARD and c not in objectives and not c.startswith("grad_norm.")]
    metrics = [c for c in metrics if c not in scalars and c.rpartition(".")[0] not in vectors]
    return dict(
        hyperparameters=names,
        scalars=scalars,
        vectors=vectors,
        objectives=objectives,
        metrics=metrics,
        hyper_iterations=None,
        method=None,
    )


class Dashboard:
    """Live plots, current values and a Stop button for a hyperparameter-optimization run.

    Args:
        names: the hyperparameters drawn (default: all the run has). Changeable after the run.
        min_interval: the least time in seconds between two updates of the values or the plots (widget) or two
            progress lines (text); default 0.5 s for the widget and 2 s for text.
        max_overhead: the largest fraction of the run's time spent redrawing: after a redraw that took d
            seconds the next waits at least d / max_overhead.
        x: the x axis: ``"iteration"``, ``"inner_steps"`` or ``"wall_time"``.
        mode: ``"widget"``, ``"text"``, or ``"auto"`` (widget in a Jupyter kernel, text elsewhere).
        display: show the widget in the notebook when the run starts (if it is not shown yet).
        file: where text mode prints (default ``sys.stdout``).
        figsize, dpi: the size of the rendered figure.

    Attributes:
        records: the records received, in order (plain dicts, as the loop sends them).
        history: the records as a DataFrame with the loop's ``attrs`` (hyperparameters, objectives, ...).
        info: what ``on_start`` received.
        stopped: whether the Stop button (or :meth:`stop`) ended the run.
        draws, draw_seconds: how many redraws were made and their total time.
        widget, image, values, status, stop_button, select, scales: the ipywidgets (widget mode).

    The dashboard is also callable, ``dashboard(record)``, as a plain callback.
    """

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
        if mode not in MODES:
            raise ValueError(f"mode must be one of {list(MODES)}; got {mode!r}")
        if min_interval is not None and not (isinstance(min_interval, int | float) and min_interval >= 0):
            raise ValueError(f"min_interval must be a number ≥ 0 (seconds) or None; got {min_interval!r}")
        if not (isinstance(max_overhead, int | float) and 0 < max_overhead <= 1):
            raise ValueError(f"max_overhead must be a fraction in (0, 1]; got {max_overhead!r}")
        if x not in ("iteration", "inner_steps", "wall_time"):
            raise ValueError(f"x must be 'iteration', 'inner_steps' or 'wall_time'; got {x!r}")
        if names is not None and (isinstance(names, str) or not all(isinstance(n, str) for n in names)):
            raise ValueError(f"names must be a list of hyperparameter names (str); got {names!r}")
        self.mode = ("widget" if in_notebook() else "text") if mode == "auto" else mode
        self.min_interval = (0.5 if self.mode == "widget" else 2.0) if min_interval is None else float(min_interval)
        self.max_overhead = float(max_overhead)
        self.x = x
        self.names = list(names) if names is not None else None
        self.auto_display = display
        self.file = file
        self.figsize, self.dpi = figsize, dpi
        self.records: list[dict] = []
        self.info: dict | None = None
        self.result = None
        self.draws = 0
        self.draw_seconds = 0.0
        self._stop = threading.Event()
        self._next_values = self._next_draw = 0.0  # monotonic times before which values / plots are not updated
        self._shown = self._drawn = 0  # records shown as values, drawn
        self._displayed = False
        self._running = False
        self._history = None
        if self.mode == "widget":
            self._build_widgets()

    # ----- the loop's callback interface ---------------------------------------------------------------------

    def on_start(self, info: Mapping) -> None:
        """A run starts: ``info`` names its hyperparameters, objectives, metrics and length."""
        if not isinstance(info, Mapping) or "hyperparameters" not in info:
            raise ValueError(f"on_start expects the loop's info dict with a 'hyperparameters' list; got {info!r}")
        self.info = dict(info)
        self.records, self.result, self._history = [], None, None
        self.draws, self.draw_seconds, self._shown, self._drawn = 0, 0.0, 0, 0
        self._next_values = self._next_draw = 0.0
        self._stop.clear()
        self._running = True
        if self.mode == "text":
            total = self.info.get("hyper_iterations")
            method = self.info.get("method")
            print(
                f"[hgkit] {total if total is not None else '?'} hyper-iterations"
                f"{', ' + str(method) if method else ''}; hyperparameters {', '.join(self.info['hyperparameters'])}",
                file=self.file or sys.stdout,
                flush=True,
            )
            return
        names = list(self.info["hyperparameters"])
        self.select.options = names
        self.select.value = tuple(n for n in (self.names or names) if n in names)
        self.stop_button.description, self.stop_button.disabled = "Stop", False
        for control in (self.select, *self.scales.values()):
            control.disabled = True
        self.status.value = f"running{': ' + html.escape(str(self.info['method'])) if self.info.get('method') else ''}"
        self.values.value = "<i>waiting for the first hyper-iteration…</i>"
        if self.auto_display and not self._displayed and in_notebook():
            from IPython.display import display

            display(self.widget)
            self._displayed = True
        _serve_clicks_in_subshell(self.stop_button)

    def on_record(self, record: Mapping) -> bool:
        """One hyper-iteration done: keep its row, show it if the throttle allows. True asks the loop to stop."""
        if self.info is None:  # used as a plain callback: no on_start
            self.on_start(_infer_info(record))
        self.records.append(dict(record))
        self._history = None
        now = _clock()
        total = self.info.get("hyper_iterations")
        last = total is not None and int(record.get("iteration", len(self.records) - 1)) + 1 >= total
        final = last or self._stop.is_set()
        draw = final or (self.mode == "widget" and now >= self._next_draw)
        if draw or now >= self._next_values:
            self._show(draw=draw)
        return self._stop.is_set()

    __call__ = on_record

    def on_end(self, result=None) -> None:
        """The run ended: the final redraw, and the controls to choose what is shown."""
        self.result = result
        self._running = False
        n = len(self.records)
        if self._shown < n or (self.mode == "widget" and self._drawn < n):
            self._show()
        if n and "member" in self.records[-1]:  # a population: one record per member and iteration
            n = len({r["iteration"] for r in self.records})
        stopped = getattr(result, "stopped", None)
        if stopped is None and self._stop.is_set():
            stopped = "callback"
        summary = f"finished: {n} hyper-iteration{'s' if n != 1 else ''}" + (
            f" (stopped: {stopped})" if stopped else ""
        )
        if self.mode == "text":
            print(f"[hgkit] {summary}", file=self.file or sys.stdout, flush=True)
            return
        self.status.value = html.escape(summary) + f"; {self.draws} redraws, {self.draw_seconds:.2f} s drawing"
        self.stop_button.description = "Stopped" if stopped else "Stop"
        self.stop_button.disabled = True
        for control in (self.select, *self.scales.values()):
            control.disabled = False

    def stop(self, _button=None) -> None:
        """End the run after the current hyper-iteration (what the Stop button does)."""
        self._stop.set()
        if self.mode == "widget":
            self.stop_button.description = "Stopping…" if self._running else "Stop"
            self.stop_button.disabled = True
            self.status.value = "stopping after this hyper-iteration…" if self._running else self.status.value
            _serve_clicks_in_subshell(self.stop_button)  # publishing above re-routed the button's events

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    @property
    def history(self):
        """The records as a DataFrame, ``attrs`` as the loop's history has them."""
        if self._history is None:
            import pandas as pd

            history = pd.DataFrame(self.records)
            info = self.info or (_infer_info(self.records[0]) if self.records else {})
            for key in ("hyperparameters", "scalars", "vectors", "objectives", "metrics"):
                history.attrs[key] = list(info.get(key) or [])
            history.attrs["method"] = info.get("method")
            self._history = history
        return self._history

    def _repr_mimebundle_(self, **kwargs):
        if self.mode != "widget":
            return {"text/plain": f"Dashboard(mode='text', {len(self.records)} records)"}
        self._displayed = True
        return self.widget._repr_mimebundle_(**kwargs)

    # ----- showing -------------------------------------------------------------------------------------------

    def _show(self, draw: bool = True) -> None:
        """Show the latest record: its values at once, the plots when ``draw`` (the throttles decide)."""
        now = _clock()
        if self.mode == "text":
            print(self._line(self.records[-1]), file=self.file or sys.stdout, flush=True)
        else:
            self.values.value = self._values_html(self.records[-1])
        self._next_values = now + self.min_interval
        if draw and self.mode == "widget":
            start = _clock()
            self.redraw()
            # The first redraw also pays for loading matplotlib and its fonts: it says nothing of the next ones.
            spent = _clock() - start if self.draws > 1 else 0.0
            self._next_draw = _clock() + max(self.min_interval, spent / self.max_overhead)
        self._shown = len(self.records)

    def _total(self) -> str:
        total = (self.info or {}).get("hyper_iterations")
        return str(total) if total is not None else "?"

    def _current(self, record: Mapping) -> list[tuple[str, object]]:
        """(label, value) pairs of a record: losses, ‖∇f‖, hyperparameters, metrics."""
        info = self.info or {}
        pairs = [("member", record["member"])] if "member" in record else []  # a population: whose values these are
        pairs += [(c, record[c]) for c in info.get("objectives") or [] if c in record]
        pairs += [(c, record[c]) for c in ("train_loss",) if c in record]
        if "grad_norm" in record:
            pairs.append(("‖∇f‖", record["grad_norm"]))
        for name in info.get("hyperparameters") or []:
            if name in record:
                pairs.append((name, record[name]))
            elif f"{name}.mean" in record:
                pairs.append((f"{name} (mean)", record[f"{name}.mean"]))
        pairs += [(m, record[m]) for m in info.get("metrics") or [] if m in record]
        return pairs

    def _line(self, record: Mapping) -> str:
        items = "  ".join(f"{label} {_fmt(value)}" for label, value in self._current(record))
        wall = record.get("wall_time")
        return f"[hgkit] {int(record.get('iteration', len(self.records) - 1)) + 1}/{self._total()}  {items}" + (
            f"  ({wall:.1f} s)" if isinstance(wall, int | float) else ""
        )

    def _values_html(self, record: Mapping) -> str:
        iteration = int(record.get("iteration", len(self.records) - 1)) + 1
        cells = [("hyper-iteration", f"{iteration} / {self._total()}")]
        cells += [(label, _fmt(value)) for label, value in self._current(record)]
        if isinstance(record.get("wall_time"), int | float):
            cells.append(("time", f"{record['wall_time']:.1f} s"))
        row = "".join(
            f"<td style='padding:0 0.8em 0 0'><b>{html.escape(label)}</b><br>"
            f"<span class='hgkit-value' data-name='{html.escape(label)}'>{html.escape(value)}</span></td>"
            for label, value in cells
        )
        return f"<table><tr>{row}</tr></table>"

    def _on_choice(self, change) -> None:
        if not self._running:  # during a run the next record redraws anyway
            self.redraw()

    def redraw(self) -> None:
        """Draw the three panels from the records into the image (widget mode)."""
        if self.mode != "widget" or not self.records:
            return
        start = _clock()
        from .. import plot

        history = self.history
        names = [n for n in self.select.value if n in history.attrs["hyperparameters"]]
        fig = self._figure
        fig.clear()
        # Fixed margins: constrained layout would double the cost of every redraw.
        margins = dict(left=0.055, right=0.99, bottom=0.17, top=0.9, wspace=0.3)
        ax_hp, ax_grad, ax_loss = fig.subplots(1, 3, gridspec_kw=margins)
        if names:
            plot.hyperparameters(ax_hp, history, names, x=self.x)
        ax_hp.set_yscale(self.scales["hp"].value)
        ax_hp.set_title("hyperparameters")
        plot.grad_norms(ax_grad, history, names, x=self.x)
        ax_grad.set_yscale(self.scales["grad"].value)
        ax_grad.set_title("hypergradient norm")
        plot.losses(ax_loss, history, x=self.x, train="train_loss" in history.columns)
        ax_loss.set_yscale(self.scales["loss"].value)
        ax_loss.set_title("validation and training loss")
        if len(history) == 1:  # a line of one point is invisible: mark it
            for ax in (ax_hp, ax_grad, ax_loss):
                for line in ax.get_lines():
                    line.set_marker("o")
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=self.dpi)
        self.image.value = buffer.getvalue()
        self._drawn = len(self.records)
        self.draws += 1
        self.draw_seconds += _clock() - start

    def _build_widgets(self) -> None:
        import ipywidgets as widgets
        from matplotlib.figure import Figure

        self._figure = Figure(figsize=self.figsize)
        self.image = widgets.Image(format="png").add_class("hgkit-dashboard-plot")
        self.values = widgets.HTML("<i>not started</i>").add_class("hgkit-dashboard-values")
        self.status = widgets.HTML("").add_class("hgkit-dashboard-status")
        self.stop_button = widgets.Button(
            description="Stop", icon="stop", button_style="danger", tooltip="end the run after this hyper-iteration"
        ).add_class("hgkit-stop")
        self.stop_button.on_click(self.stop)
        self.select = widgets.SelectMultiple(
            options=self.names or [], value=tuple(self.names or []), rows=4, description="shown", disabled=True
        ).add_class("hgkit-dashboard-select")
        self.scales = {
            panel: widgets.ToggleButtons(
                options=SCALES, value=default, description=label, disabled=True, style={"button_width": "4.5em"}
            ).add_class(f"hgkit-dashboard-scale-{panel}")
            for panel, label, default in (
                ("hp", "hyperparameters", "linear"),
                ("grad", "‖∇f‖", "log"),
                ("loss", "losses", "linear"),
            )
        }
        for control in (self.select, *self.scales.values()):
            control.observe(self._on_choice, names="value")
        self.widget = widgets.VBox(
            [
                widgets.HBox([self.stop_button, self.status]),
                self.values,
                self.image,
                widgets.HBox([self.select, widgets.VBox(list(self.scales.values()))]),
            ]
        ).add_class("hgkit-dashboard")


# ----- the Stop button while the kernel is busy -------------------------------------------------------------

_SUBSHELLS: dict[int, str] = {}


def _serve_clicks_in_subshell(button) -> bool:
    """Have the kernel handle ``button``'s events in a subshell thread, so a click lands while a cell runs.

    ipykernel ≥ 7 runs a shell-channel thread that routes each widget message to the subshell its comm last
    replied from (``comm._reply_subshell_for``). Pointing the button's comm at a subshell of our own (created
    once per kernel, on the shell-channel thread as the kernel itself does) makes its clicks run there, beside
    the busy main thread. Returns False (and changes nothing) on kernels without subshells, where the click is
    handled when the cell ends.
    """
    if not in_notebook():
        return False
    try:
        from concurrent.futures import Future

        from IPython import get_ipython

        kernel = get_ipython().kernel
        channel = getattr(kernel, "shell_channel_thread", None)
        comm = getattr(button, "comm", None)
        if channel is None or comm is None or not hasattr(comm, "_reply_subshell_for"):
            return False
        subshell = _SUBSHELLS.get(id(kernel))
        if subshell is None:
            created: Future = Future()

            def create():
                try:
                    created.set_result(channel.manager._create_subshell())
                except BaseException as e:  # handed to the waiting thread
                    created.set_exception(e)

            channel.io_loop.add_callback(create)
            subshell = _SUBSHELLS[id(kernel)] = created.result(timeout=10)
        comm._reply_subshell_id = subshell
        return True
    except Exception:  # an unknown kernel: the click then takes effect when the cell ends
        return False
