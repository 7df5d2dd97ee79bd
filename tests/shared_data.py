"""Where the optional shared data beside the project is: ``shared/`` in the first folder above the checkout that
has one (``/work/shared`` for the lead's checkout and for worktrees under ``/work/wt`` alike)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_path(*parts: str) -> Path:
    """The first ``<ancestor>/shared/<parts>`` that exists, else the one beside the checkout (for skip reasons)."""
    for ancestor in ROOT.parents:
        candidate = ancestor.joinpath("shared", *parts)
        if candidate.exists():
            return candidate
    return ROOT.parent.joinpath("shared", *parts)


SHARED_MNIST = shared_path("data", "mnist.npz")
