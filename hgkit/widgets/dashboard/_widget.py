"""The dashboard as an ipywidgets box: :class:`WidgetDashboard` (the view that ``Dashboard(mode="auto")``
makes in a Jupyter kernel). Its picture is drawn by :mod:`._layout`; ipywidgets and matplotlib are imported when
one is made, not with this module.
"""

from __future__ import annotations

import html
import io
import threading
from collections.abc import Mapping

from .._subshell import serve_clicks_in_subshell
from . import _layout, _pacing
from ._base import COMPILING, Dashboard, format_value, in_notebook
from ._pacing import duration

SCALES = ("linear", "log")
HP_SCALES = ("auto", "linear", "log")  # auto: each hyperparameter's own (hgkit.plot.hyperparameter_scale)
WAITING = "compiling the step: the plots appear here after the first hyper-iteration…"


class WidgetDashboard(Dashboard, view="widget"):
    """The dashboard as an ipywidgets box: live plots, the current values, a Stop button (see the module).

    Made by ``Dashboard(mode="widget")`` (or ``mode="auto"`` in a Jupyter kernel); see :class:`Dashboard`.

    Attributes:
        widget: the box (CSS class ``hgkit-dashboard``), shown when the run starts (``display=True``) or when
            the dashboard is a cell's value.
        image, values, status, stop_button, select, scales: its parts (``scales``: ``{"hp", "grad", "loss"}``;
            ``"hp"`` is ``"auto"``, each hyperparameter's own scale, ``"linear"`` or ``"log"``).
        placeholder: what stands in the picture's place until the run's first figure exists (CSS class
            ``hgkit-dashboard-plot-placeholder``): an empty image would show as a broken one.
        figure: the matplotlib Figure the panels are drawn in (then rendered into ``image``).
        axes: the last picture's axes: ``{"hp:<name>": ..., "grad": ..., "loss": ...}``.
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
        self._axes_for = None  # what the axes were made for
        self._draw_lock = threading.RLock()  # a choice is drawn from a kernel subshell, beside the run's redraws
        self.image = widgets.Image(format="png").add_class("hgkit-dashboard-plot")
        self.placeholder = widgets.HTML().add_class("hgkit-dashboard-plot-placeholder")
        self._plot_area = widgets.Box([self.placeholder])  # the placeholder, then the image (never an empty one)
        self._wait_for_figure("the plots appear here during the run")
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
                self._plot_area,
                widgets.HBox([self.select, widgets.VBox(list(self.scales.values()))]),
            ]
        ).add_class("hgkit-dashboard")

    def _controls(self) -> list:
        return [self.select, *self.scales.values()]

    def _wait_for_figure(self, why: str) -> None:
        """Show the placeholder, saying ``why``, in the picture's place (about the picture's size)."""
        width, height = (round(v * self.dpi) for v in self.figsize)
        self.placeholder.value = (
            f"<div style='width:{width}px;max-width:100%;height:{height}px;display:flex;align-items:center;"
            f"justify-content:center;color:#666;border:1px dashed #bbb;box-sizing:border-box'>"
            f"<i>{html.escape(why)}</i></div>"
        )
        if self._plot_area.children != (self.placeholder,):
            self._plot_area.children = (self.placeholder,)

    def _method(self) -> str:
        method = self.info.method if self.info is not None else None
        return f": {html.escape(str(method))}" if method else ""

    def _started(self) -> None:
        names = list(self.info.hyperparameters)
        self.select.options = names
        self.select.value = tuple(n for n in (self.names or names) if n in names)
        self.stop_button.description, self.stop_button.disabled = "Stop", False
        self.status.value = f"running{self._method()}; {COMPILING}"
        self._wait_for_figure(WAITING)  # a new run: the last run's picture is not this one's
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
        done, total, unit = self._count(record)
        cells = [(unit, f"{done} / {total}")]
        cells += [(label, format_value(value)) for label, value in self._current(record)]
        if isinstance(record.get("wall_time"), int | float):
            cells.append(("time", f"{record['wall_time']:.1f} s"))
        left = self._time_left_shown()  # none once the run ended or was asked to stop
        if left is not None:
            cells.append(("time left", f"≈ {duration(left)}"))
        row = "".join(
            f"<td style='padding:0 0.8em 0 0'><b>{html.escape(label)}</b><br>"
            f"<span class='hgkit-value' data-name='{html.escape(label)}'>{html.escape(value)}</span></td>"
            for label, value in cells
        )
        self.values.value = f"<table><tr>{row}</tr></table>"
        if self._running and not self._stop.is_set():
            iterations = self.info.hyper_iterations
            if left is not None:
                when = f"about {duration(left)} left"
            elif iterations is not None and self._iteration(record) >= iterations:
                when = f"the last {unit} is done"
            else:  # after the first record, whose time includes compiling
                when = "estimating the time left…"
            self.status.value = f"running{self._method()}; {when}"

    def _stopping(self) -> None:
        self.stop_button.description = "Stopping…" if self._running else "Stop"
        self.stop_button.disabled = True
        if self._running:
            self.status.value = "stopping after this hyper-iteration…"
            if self.records:  # without the time left, which no longer holds
                self._show_values(self.records[-1])
        serve_clicks_in_subshell(self.stop_button)  # publishing above re-routed the button's events

    def _ended(self, summary: str, stopped) -> None:
        method = self.info.method if self.info is not None else None
        self.status.value = (
            html.escape(f"{method} — {summary}" if method else summary)
            + f"; {self.draws} redraws, {self.draw_seconds:.2f} s drawing"
        )
        if self.records:  # the last values again, without the time left
            self._show_values(self.records[-1])
        else:
            self.values.value = "<i>no hyper-iteration completed</i>"
            self._wait_for_figure("nothing to draw: the run ended before its first hyper-iteration")
        self.stop_button.description = "Stopped" if stopped else "Stop"
        self.stop_button.disabled = True
        for control in self._controls():
            control.disabled = False
        # Publishing above routed the controls' events to the main thread, which may go on with other work in the
        # same cell (another run): back to the subshell, so that the choices still redraw at once.
        for control in self._controls():
            serve_clicks_in_subshell(control)

    def _on_choice(self, change) -> None:
        # Drawn at once, during the run too: its clicks are then handled in a kernel subshell beside the run
        # (:mod:`hgkit.widgets._subshell`), and the lock in redraw keeps this drawing apart from the run's own.
        self.redraw()
        # ipywidgets echoed the change from this thread, which routed the control's next events back to the
        # thread the click came from (the main one, busy with the run): to the subshell again.
        serve_clicks_in_subshell(change["owner"])

    def redraw(self) -> None:
        """Draw the panels from the records into the image (:func:`._layout.draw`): each hyperparameter on its own
        axes, the hypergradient norms, the losses."""
        with self._draw_lock:
            records = self.records[:]  # as they are now: a choice's redraw runs beside the run, which adds more
            if not records or self.info is None:
                return
            start = _pacing.clock()
            names = [n for n in self.select.value if n in self.info.hyperparameters]
            self._arrange(names)
            scales = {panel: control.value for panel, control in self.scales.items()}
            _layout.draw(self.axes, self._frame(records), self.info, names, x=self.x, scales=scales)
            buffer = io.BytesIO()
            self.figure.savefig(buffer, format="png", dpi=self.dpi)
            self.image.value = buffer.getvalue()
            if self._plot_area.children != (self.image,):
                self._plot_area.children = (self.image,)
            self._drawn = len(records)
            self.draws += 1
            self.draw_seconds += _pacing.clock() - start

    def _arrange(self, names) -> None:
        """The axes for these hyperparameters: made anew when what is shown changed, else emptied of what they
        drew."""
        made_for = (tuple(names), self.figsize)
        if made_for == self._axes_for and self.figure.axes:
            _layout.empty(self.figure)
        else:
            self._axes_for = made_for
            self.axes = _layout.arrange(self.figure, names, self.figsize)

    def _repr_mimebundle_(self, **kwargs):
        self._displayed = True
        return self.widget._repr_mimebundle_(**kwargs)
