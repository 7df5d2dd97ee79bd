"""Ctrl-C during a long run: finish the step in flight, then stop cleanly (used by :mod:`hgkit.outer`)."""

from __future__ import annotations

import signal
import threading


class DeferredInterrupt:
    """A context in which the first Ctrl-C (SIGINT) only sets ``pending``; a second one interrupts at once.

    Why: a KeyboardInterrupt raised in the middle of JAX's dispatch or a device transfer can leave them half done
    (it hung a run on a loaded machine), so the loop checks ``pending`` between hyper-iterations instead. Only the
    main thread can own signal handlers; elsewhere this does nothing.
    """

    def __init__(self):
        self.pending, self._previous = False, None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False
