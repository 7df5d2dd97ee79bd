"""Checkpoints of the optimization loop: one ``.npz`` file per run directory, replaced atomically.

``checkpoint_dir/hyperopt.npz`` holds, readable with ``np.load(path, allow_pickle=False)`` (no pickle, so loading
a checkpoint never runs code):

* ``u/<j>``, ``opt_state/<j>``, ``carry/<j>``, ``state/<j>``, ``last_hp/<j>``: the leaves, in tree order, of the
  optimizer's variable, the optax state, what runs on between iterations (warm-restart state or real-time carry),
  the last trained state and the hyperparameters of the last completed iteration;
* ``snap/<iteration>/<j>``: the snapshots, leaf ``j`` in the hyperparameters' order;
* ``meta``: a JSON string with the format version, the next iteration, the elapsed seconds, the history rows
  (JSON writes floats with ``repr``, so they come back bit for bit), the population members dropped (diverged)
  and why, and the run's fingerprint, which a resuming run must match: the hyperparameters' names, shapes and
  dtypes, the method, T, the population, and the model: every leaf of the training state (path, shape, dtype:
  the parameters and the optimizer's state) and the model's static leaves (path and what they are).

Tree structures are not stored: the resuming run rebuilds them from its own settings, which the fingerprint
guarantees are the saved run's. A mismatch, an unreadable file or a directory that cannot be written is a
:class:`CheckpointError` that names the file and what to do; a file that exists is never overwritten by another
run's state.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

FILE = "hyperopt.npz"
FORMAT = 2  # 2 (hgkit 0.3): the fingerprint describes the model
TREES = ("u", "opt_state", "carry", "state", "last_hp")


class CheckpointError(ValueError):
    """A checkpoint cannot be read, cannot be written, or does not belong to this run; ``path`` names its file (or
    the directory)."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


def describe_state(state) -> dict:
    """The model part of a run's fingerprint, from its (abstract) training state: every leaf's path, shape and
    dtype, and the static leaves (path and what they are: a function by its qualified name, a number or string by
    its value, anything else by its type), so that a checkpoint knows the model it was saved with."""
    leaves = [[_path(p), list(np.shape(x)), str(x.dtype)] for p, x in jax.tree_util.tree_leaves_with_path(state)]
    static = getattr(state, "static", None)
    fixed = [] if static is None else jax.tree_util.tree_leaves_with_path(static.tree)
    return dict(state=leaves, static=[["params" + jax.tree_util.keystr(p), _what(x)] for p, x in fixed])


def _path(path) -> str:
    return jax.tree_util.keystr(path).lstrip(".")


def _what(x) -> str:
    if isinstance(x, bool | int | float | str | type(None)):
        return repr(x)
    name = getattr(x, "__qualname__", None) or getattr(x, "__name__", None)
    if name is not None:
        return f"{getattr(x, '__module__', None) or ''}.{name}".lstrip(".")
    return type(x).__qualname__


def check_writable(directory) -> None:
    """Refuse, before any compute, a ``checkpoint_dir`` that cannot be made or written (a file's name, a read-only
    place), naming it and why."""
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".{FILE}.probe-{os.getpid()}")
        with open(probe, "wb") as f:
            f.write(b"hgkit")
        os.remove(probe)
    except OSError as e:
        raise CheckpointError(
            f"checkpoint_dir {os.fspath(directory)!r} cannot be written ({type(e).__name__}: {e.strerror or e}); "
            "nothing has run yet. Give a directory that can be created and written, or checkpoint_dir=None.",
            os.fspath(directory),
        ) from e


def save_checkpoint(directory, fingerprint: dict, loop: dict) -> None:
    """Write the loop's state (a dict with the fields of ``outer._LoopState``)."""
    os.makedirs(directory, exist_ok=True)
    arrays, present = {}, {}
    for field in TREES:
        if loop[field] is not None:
            leaves = jax.tree_util.tree_leaves(jax.device_get(loop[field]))
            present[field] = len(leaves)
            arrays.update({f"{field}/{j}": np.asarray(x) for j, x in enumerate(leaves)})
    for it, snap in loop["snapshots"].items():
        for j, x in enumerate(snap.values()):
            arrays[f"snap/{it}/{j}"] = np.asarray(x)
    meta = dict(
        format=FORMAT,
        next=loop["next"],
        elapsed=loop["elapsed"],
        rows=list(loop["rows"]),
        snapshots=sorted(loop["snapshots"]),
        dropped={str(k): v for k, v in loop["dropped"].items()},
        present=present,
        fingerprint=fingerprint,
    )
    arrays["meta"] = np.asarray(json.dumps(meta))
    path = os.path.join(directory, FILE)
    tmp = path + ".tmp"
    # Write a temporary file, flush it to disk, then rename it over the old checkpoint: os.replace is atomic, so a
    # kill or Ctrl-C at any moment leaves either the previous checkpoint or the new one, never a torn file.
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # a half-written temporary file helps nobody; the old checkpoint stays
            os.remove(tmp)
        raise


def _read(path: str) -> tuple[dict, dict]:
    """The checkpoint file's meta data and arrays, or :class:`CheckpointError` if it cannot be read whole."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        meta = json.loads(str(arrays.pop("meta")))
        if not isinstance(meta, dict):
            raise ValueError(f"its meta data is a {type(meta).__name__}, not a mapping")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"checkpoint file {path} is unreadable ({type(e).__name__}: {e}); it was probably cut short (a full "
            "disk, or a copy that did not finish). hgkit leaves it as it is. To start the run over, move it aside "
            f"(e.g. mv {path} {path}.damaged) and run again; to resume, put back an intact copy.",
            path,
        ) from e
    return meta, arrays


def load_checkpoint(directory, fingerprint: dict, templates: dict) -> dict | None:
    """The saved loop state as a dict of ``outer._LoopState`` fields, or None if ``directory`` has no checkpoint.

    Nothing is written here: a damaged or foreign checkpoint raises :class:`CheckpointError` and stays untouched.
    """
    if directory is None or not os.path.exists(path := os.path.join(directory, FILE)):
        return None
    meta, z = _read(path)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"checkpoint {path} has format {meta.get('format')!r} (written by another hgkit version); this hgkit "
            f"reads format {FORMAT} and leaves the file as it is. Use another checkpoint_dir, or move the file aside.",
            path,
        )
    saved = meta.get("fingerprint")
    now = json.loads(json.dumps(fingerprint))
    if saved != now:
        differences = "; ".join(fingerprint_differences(saved if isinstance(saved, dict) else {}, now))
        raise CheckpointError(
            f"checkpoint {path} was saved by another run, so it cannot be resumed: {differences}. hgkit leaves the "
            "file as it is. Resume with the model and settings it was saved with, or give this run another "
            "checkpoint_dir (or move the file aside to start over).",
            path,
        )
    try:
        out = dict(next=meta["next"], elapsed=meta["elapsed"], rows=tuple(meta["rows"]))
        out["dropped"] = {int(k): v for k, v in meta.get("dropped", {}).items()}
        for field in TREES:
            treedef = templates[field]
            if field not in meta["present"]:
                out[field] = None
                continue
            if meta["present"][field] != treedef.num_leaves:
                raise CheckpointError(
                    f"checkpoint_dir {directory!r}: its {field} has {meta['present'][field]} arrays where this run "
                    f"has {treedef.num_leaves} (another hyper_optimizer or problem?), so it cannot be resumed",
                    path,
                )
            leaves = [jnp.asarray(z[f"{field}/{j}"]) for j in range(treedef.num_leaves)]
            out[field] = jax.tree_util.tree_unflatten(treedef, leaves)
        names = [n for n, *_ in fingerprint["hparams"]]
        out["snapshots"] = {it: {n: z[f"snap/{it}/{j}"] for j, n in enumerate(names)} for it in meta["snapshots"]}
    except KeyError as e:
        raise CheckpointError(
            f"checkpoint file {path} is incomplete: it lacks {e}. hgkit leaves it as it is; move it aside to start "
            "over.",
            path,
        ) from e
    return out


def fingerprint_differences(saved: dict, now: dict, most: int = 4) -> list[str]:
    """What differs between two fingerprints, in words: ``params['W1']: (5, 8) saved, (5, 16) now`` for the
    model's leaves, ``T: saved 20, now 30`` for the settings (at most ``most`` leaves, then how many more)."""
    out = []
    for key in now.keys() | saved.keys():
        a, b = saved.get(key), now.get(key)
        if a == b:
            continue
        if key in ("state", "static", "hparams") and isinstance(a, list) and isinstance(b, list):
            out += _leaf_differences(key, a, b, most)
        else:
            out.append(f"{key}: saved {a!r}, now {b!r}")
    return out


def _leaf_differences(key: str, saved: list, now: list, most: int) -> list[str]:
    before, after = ({row[0]: tuple(map(_text, row[1:])) for row in rows} for rows in (saved, now))
    rows = []
    for name in [*after, *(n for n in before if n not in after)]:
        a, b = before.get(name), after.get(name)
        if a != b:
            what = {"state": "", "static": "static ", "hparams": "hyperparameter "}[key]
            rows.append(f"{what}{name}: {' '.join(a) if a else 'absent'} saved, {' '.join(b) if b else 'absent'} now")
    return rows[:most] + ([f"and {len(rows) - most} more"] if len(rows) > most else [])


def _text(x) -> str:
    return str(tuple(x)) if isinstance(x, list) else str(x)
