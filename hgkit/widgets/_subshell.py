"""The Stop button's clicks during a run: have the kernel handle them in a subshell thread (ipykernel ≥ 7).

Why this module exists: a run started from a notebook cell occupies the kernel's main thread, and the kernel
handles widget events (a click on the dashboard's Stop button) on that same thread, so normally only once the cell
has ended, too late to stop anything. ipykernel ≥ 7 has *subshells*: a shell-channel thread routes each message to
a subshell, and each subshell runs in its own thread. :func:`serve_clicks_in_subshell` routes one button's events
to a subshell of ours, where they are handled while the run goes on.

It relies on ipykernel's private hooks (``kernel.shell_channel_thread``, its ``manager._create_subshell()``,
``comm._reply_subshell_for`` / ``_reply_subshell_id``), so it falls back silently: on an older or unknown kernel, or
outside a kernel, it changes nothing and returns False; the click then takes effect when the cell ends (the button
can still be pressed from code, ``dashboard.stop_button.click()``).

Example (outside a kernel, as here, there is nothing to do):
    >>> serve_clicks_in_subshell(object())
    False
"""

from __future__ import annotations

import sys
from concurrent.futures import Future

__all__ = ["serve_clicks_in_subshell"]

_SUBSHELLS: dict[int, str] = {}  # id(kernel) -> the subshell created for our buttons (one per kernel)


def _kernel():
    """The running IPython kernel, or None (IPython is not imported for that)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return getattr(shell, "kernel", None)


def serve_clicks_in_subshell(button) -> bool:
    """Have the kernel handle ``button``'s events in a subshell thread, so a click lands while a cell runs.

    ipykernel ≥ 7 runs a shell-channel thread that routes each widget message to the subshell its comm last
    replied from (``comm._reply_subshell_for``). Pointing the button's comm at a subshell of our own (created
    once per kernel, on the shell-channel thread as the kernel itself does) makes its clicks run there, beside
    the busy main thread. Call it again after the button's state was published from the main thread (that
    re-routes the comm). Returns whether the button's events now go to the subshell.
    """
    try:
        kernel = _kernel()
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
