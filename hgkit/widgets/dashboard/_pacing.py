"""When the dashboard updates, and how long the run has left.

The values are updated at most every ``min_interval`` seconds. Redrawing costs a matplotlib render (a few
tenths of a second on a busy CPU), so it is paced: at most one redraw every ``min_interval`` seconds, and no more
often than keeps drawing under ``max_overhead`` of the run's time (the wait after a redraw is its duration /
``max_overhead``; the first redraw, which also loads matplotlib, does not count). But the plots never lag the
values by more than ``max_interval`` seconds (3 s by default): the wait is capped there, even where a slow redraw
then takes more than ``max_overhead`` (a picture of 2 points beside values at hyper-iteration 6 says the wrong
thing); the last record is always drawn.

The time left is the mean time per hyper-iteration since the first record (whose time includes compiling the
step) times the hyper-iterations to go.

Example:
    >>> records = [{"iteration": i, "wall_time": 5.0 + 0.5 * i} for i in range(3)]  # 5 s of compiling first
    >>> time_left(records, total=10), duration(time_left(records, total=10))
    (3.5, '4 s')
    >>> duration(125), duration(3780)
    ('2 min 05 s', '1 h 03 min')
    >>> pace = Pacing(min_interval=0.5, max_overhead=0.05, max_interval=3.0)
    >>> pace.wait(0.01), pace.wait(0.1), pace.wait(1.0)  # 0.5 s at least, cost / 5 % beyond, 3 s at most
    (0.5, 2.0, 3.0)
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

clock = time.monotonic  # the throttle's clock (a module attribute, so tests can drive it)


class Pacing:
    """The throttle of one dashboard: the monotonic times before which its values and its plots wait."""

    def __init__(self, min_interval: float, max_overhead: float, max_interval: float = 3.0):
        self.min_interval = min_interval
        self.max_overhead = max_overhead
        self.max_interval = max_interval
        self.restart()

    def restart(self) -> None:
        """A new run: its first record is shown and drawn whatever the time."""
        self.next_values = self.next_draw = 0.0

    def due(self, final: bool, plots: bool) -> tuple[bool, bool]:
        """Whether the latest record is shown now, and whether the plots are redrawn with it (``plots``: the view
        has plots; the ``final`` record is always drawn)."""
        now = clock()
        draw = final or (plots and now >= self.next_draw)
        return draw or now >= self.next_values, draw

    def shown(self, at: float) -> None:
        """The values were shown at ``at``: the next wait ``min_interval``."""
        self.next_values = at + self.min_interval

    def wait(self, seconds: float) -> float:
        """The wait after a redraw that took ``seconds``: ``seconds / max_overhead``, at least ``min_interval`` and
        at most ``max_interval`` (``min_interval`` wins where it is the larger)."""
        return max(self.min_interval, min(seconds / self.max_overhead, self.max_interval))

    def drawn(self, seconds: float) -> None:
        """A redraw took ``seconds``: the next waits :meth:`wait`."""
        self.next_draw = clock() + self.wait(seconds)


def time_left(records: Sequence[Mapping], total: int | None) -> float | None:
    """The expected seconds left: the mean time per hyper-iteration since the first record times the
    hyper-iterations to go; None before the second record, when the run's length is unknown, or when none is
    left."""
    if total is None or len(records) < 2:
        return None
    first, last = records[0], records[-1]
    try:
        i0, i1 = int(first["iteration"]), int(last["iteration"])
        t0, t1 = float(first["wall_time"]), float(last["wall_time"])
    except (KeyError, TypeError, ValueError):
        return None
    if i1 <= i0 or i1 + 1 >= total:
        return None
    return (t1 - t0) / (i1 - i0) * (total - 1 - i1)


def duration(seconds: float) -> str:
    """``"8 s"``, ``"2 min 05 s"``, ``"1 h 03 min"``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s:02d} s"
    h, m = divmod(m, 60)
    return f"{h} h {m:02d} min"
