"""The dashboard as progress lines, for terminals and scripts: :class:`TextDashboard` (the view that
``Dashboard(mode="auto")`` makes outside a Jupyter kernel)."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from ._base import COMPILING, Dashboard, format_value
from ._pacing import duration


class TextDashboard(Dashboard, view="text"):
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
        items = "  ".join(f"{label} {format_value(value)}" for label, value in self._current(record))
        wall, left = record.get("wall_time"), self._time_left_shown()
        times = [f"{wall:.1f} s"] if isinstance(wall, int | float) else []
        times += [f"{duration(left)} left"] if left is not None else []
        done, total, unit = self._count(record)
        where = f"{done}/{total}" + ("" if unit == "hyper-iteration" else f" {unit}s")
        self._print(f"[hgkit] {where}  {items}" + (f"  ({', '.join(times)})" if times else ""))

    def _ended(self, summary: str, stopped) -> None:
        self._print(f"[hgkit] {summary}")

    def _repr_mimebundle_(self, **kwargs):
        return {"text/plain": f"Dashboard(mode='text', {len(self.records)} records)"}
