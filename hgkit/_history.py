"""The loop's history rows and callbacks (used by :mod:`hgkit.outer`): plain Python numbers on the host."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

HOOKS = ("on_start", "on_record", "on_end")


def as_callbacks(callbacks) -> list:
    """A list of callbacks: plain functions ``record -> bool | None`` or objects with some of the hooks."""
    if callable(callbacks) or any(hasattr(callbacks, h) for h in HOOKS):
        callbacks = [callbacks]
    out = list(callbacks)
    for cb in out:
        if not (callable(cb) or any(hasattr(cb, h) for h in HOOKS)):
            raise TypeError(
                f"each callback must be a function record -> bool | None or an object with on_start / on_record / "
                f"on_end; got {cb!r}"
            )
    return out


def on_record(cb, record) -> Any:
    if any(hasattr(cb, h) for h in HOOKS):
        hook = getattr(cb, "on_record", None)
        return hook(dict(record)) if hook is not None else None
    return cb(dict(record))


def columns(info) -> list[str]:
    """The history's columns, in order (see the contract)."""
    member = ["member"] if info.get("population") is not None else []
    cols = ["iteration", *member, "inner_steps", "wall_time", *info["objectives"], "train_loss", "grad_norm"]
    cols += [f"grad_norm.{n}" for n in info["hyperparameters"]]
    for n in info["hyperparameters"]:
        cols += [f"{n}.{s}" for s in STATS] if n in info["vectors"] else [n]
    return cols + info["metrics"]


STATS = ("mean", "min", "max", "norm")


def to_record(i: int, inner_steps: int, wall_time: float, row, info, member: int | None = None) -> dict:
    """One history row as plain Python numbers, from the values the compiled step returned."""
    rec = {"iteration": i} if member is None else {"iteration": i, "member": member}
    rec.update(inner_steps=inner_steps, wall_time=wall_time)
    rec.update({col: float(v) for col, v in zip(info["objectives"], row["values"], strict=True)})
    rec.update(train_loss=float(row["train_loss"]), grad_norm=float(row["grad_norm"]))
    names = info["hyperparameters"]
    rec.update({f"grad_norm.{n}": float(g) for n, g in zip(names, row["grad_norms"], strict=True)})
    for n, v in zip(names, row["hp"], strict=True):
        if n in info["vectors"]:
            rec.update({f"{n}.{s}": float(x) for s, x in zip(STATS, v, strict=True)})
        else:
            rec[n] = float(np.reshape(v, ()))
    rec.update({m: float(v) for m, v in zip(info["metrics"], row["metrics"], strict=True)})
    return rec


def named(info, hparams) -> dict:
    leaves = jax.tree_util.tree_leaves(hparams)
    return {n: np.asarray(x) for n, x in zip(info["hyperparameters"], leaves, strict=True)}
