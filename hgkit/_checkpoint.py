"""Checkpoints of the optimization loop: one ``.npz`` file per run directory, replaced atomically.

``checkpoint_dir/hyperopt.npz`` holds, readable with ``np.load(path, allow_pickle=False)`` (no pickle, so loading
a checkpoint never runs code):

* ``u/<j>``, ``opt_state/<j>``, ``carry/<j>``, ``state/<j>``, ``last_hp/<j>``: the leaves, in tree order, of the
  optimizer's variable, the optax state, what runs on between iterations (warm-restart state or real-time carry),
  the last trained state and the hyperparameters of the last completed iteration;
* ``snap/<iteration>/<j>``: the snapshots, leaf ``j`` in the hyperparameters' order;
* ``meta``: a JSON string with the format version, the next iteration, the elapsed seconds, the history rows
  (JSON writes floats with ``repr``, so they come back bit for bit), the population members dropped (diverged)
  and why, and the run's fingerprint (hyperparameter names, shapes and dtypes, method, T, population), which a
  resuming run must match.

Tree structures are not stored: the resuming run rebuilds them from its own settings.
"""

from __future__ import annotations

import json
import os
import zipfile

import jax
import jax.numpy as jnp
import numpy as np

FILE = "hyperopt.npz"
FORMAT = 1
TREES = ("u", "opt_state", "carry", "state", "last_hp")


class CheckpointError(ValueError):
    """A checkpoint exists but cannot be read or does not belong to this run; ``path`` names its file."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path


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
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
        raise CheckpointError(f"checkpoint {path} has format {meta.get('format')!r}; this hgkit reads {FORMAT}", path)
    saved = meta.get("fingerprint")
    if saved != json.loads(json.dumps(fingerprint)):
        saved = saved if isinstance(saved, dict) else {}
        diff = {k: (saved.get(k), v) for k, v in fingerprint.items() if saved.get(k) != v}
        raise CheckpointError(
            f"checkpoint_dir {directory!r} holds a run with other settings, so it cannot be resumed: "
            f"{ {k: f'saved {a!r}, now {b!r}' for k, (a, b) in diff.items()} }. "
            "Use another checkpoint_dir or the same settings.",
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
