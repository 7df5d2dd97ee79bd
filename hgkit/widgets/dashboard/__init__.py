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
    bands); the hypergradient norm ‖∇f‖ on a log scale; the validation (outer) and training losses. Nothing is
    written on the data: names are y labels, legends sit above their axes, and log axes carry enough labels to
    read a value off. Until the run's first figure exists a placeholder (``hgkit-dashboard-plot-placeholder``)
    stands in the picture's place (an empty image would show as a broken one);
  * the current values as text (``hgkit-dashboard-values``, each value a ``.hgkit-value[data-name]``: iteration,
    losses, ‖∇f‖, every hyperparameter (a vector's median) and metric, the time and the expected time left) and a
    status line (``hgkit-dashboard-status``: compiling, running with the time left, then the method and how the
    run ended: finished, stopped (the Stop button, a callback, divergence) or ended by an error, with no time
    left);
  * a Stop button (``hgkit-stop``): the run ends after the current hyper-iteration and still returns its result,
    with ``result.stopped == "callback"``;
  * a choice of the hyperparameters shown (``hgkit-dashboard-select``) and of the scales of each panel
    (``hgkit-dashboard-scale-hp``: auto, linear or log; ``-grad``, ``-loss``), redrawn at once: during the run
    where the kernel handles them beside it (as the Stop button), else after it.

* :class:`TextDashboard` prints progress lines (to ``file``, default ``sys.stdout``).

The values are updated at most every ``min_interval`` seconds, and the plots redrawn no more often than keeps
drawing under ``max_overhead`` of the run's time, but at least every ``max_interval`` seconds (3 s), so that the
picture never lags the numbers by more (:mod:`._pacing`); the last record is always drawn.
``benchmarks/dashboard_overhead.py`` measures what it costs a run.

**Modules.** :mod:`._base` (the shared :class:`Dashboard`), :mod:`._pacing` (the throttle, the pacing of redraws
and the time left), :mod:`._text` and :mod:`._widget` (the two views), :mod:`._layout` (the widget's matplotlib
picture).

**Time.** Until the first record the step is being compiled (the first hyper-iteration includes it), and both
views say so; from the second record on they show the expected time left: the mean time per hyper-iteration since
the first record (so without the compilation) times the hyper-iterations to go.

**The Stop button during a run.** The run occupies the kernel's main thread, where widget events are normally
handled only once the cell ends; :mod:`hgkit.widgets._subshell` has the button's clicks (and the choices of what
is drawn) handled in a kernel subshell (ipykernel ≥ 7) while the run goes on, and routes them there again after
each (ipywidgets' echo of a change, and any state published from the run, route a widget's next events back to the
main thread). With older kernels a click takes effect only after the run (the button can still be pressed from
code, ``dashboard.stop_button.click()``).

**Counting.** The progress counts hyper-iterations, or inner steps with ``x="inner_steps"`` (``inner step 1072 /
2000``): the unit of an online method's run (``hg.RealTime``: one training run in chunks of Δ steps).

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

from ._base import Dashboard, in_notebook
from ._text import TextDashboard
from ._widget import WidgetDashboard

__all__ = ["Dashboard", "TextDashboard", "WidgetDashboard", "in_notebook"]
