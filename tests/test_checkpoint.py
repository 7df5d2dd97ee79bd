"""Checkpoints and interrupts of the loop (hgkit/_checkpoint.py, hgkit/_interrupt.py): an interrupted run, by
KeyboardInterrupt or by SIGINT to a running process, resumes bit for bit; a damaged or foreign file is named,
explained and left as it is."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from helpers import HP as LOOP_HP
from helpers import KEY, LOG, TRAIN, VAL, without_wall_time
from helpers import PROBLEM as LOOP_PROBLEM

import hgkit as hg

PROBLEM = hg.BilevelProblem(  # a tiny one; its initial weights depend on the key, when there is one
    init=lambda hp, key: jnp.zeros(2) if key is None else 0.1 * jax.random.normal(key, (2,)),
    train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2) + hp["wd"] * jnp.sum(w**2),
    val_loss=lambda w, hp, b: jnp.sum((w - 0.5 * b) ** 2),
    optimizer=hg.optim.sgd(0.1),
)
HP = {"wd": jnp.asarray(0.1)}
DATA = jnp.ones(2)
OPT = hg.HyperOptimizer(PROBLEM, hyper_optimizer=optax.sgd(0.5))


def run(directory, n=3, **kwargs):
    return OPT.run(HP, n, 5, DATA, DATA, progress=False, checkpoint_dir=directory, **kwargs)


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_an_unreadable_checkpoint_is_named_and_never_overwritten(tmp_path, damage):
    run(tmp_path, n=2)
    path = tmp_path / "hyperopt.npz"
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"not a zip file at all"}[damage]
    path.write_bytes(damaged)
    before = os.stat(path).st_mtime_ns
    with pytest.raises(hg.CheckpointError) as info:
        run(tmp_path, n=4)
    message = str(info.value)
    assert str(path) in message and "unreadable" in message and "move it aside" in message
    assert info.value.path == str(path)
    assert path.read_bytes() == damaged and os.stat(path).st_mtime_ns == before  # untouched
    assert sorted(os.listdir(tmp_path)) == ["hyperopt.npz"]  # nothing written beside it either
    # Moved aside, the run starts over.
    path.rename(tmp_path / "hyperopt.npz.damaged")
    assert len(run(tmp_path, n=4).history) == 4


def test_a_checkpoint_of_other_settings_is_refused_and_kept(tmp_path):
    first = run(tmp_path, n=2)
    path = tmp_path / "hyperopt.npz"
    data = path.read_bytes()
    with pytest.raises(hg.CheckpointError, match=r"saved by another run.*T: saved 5, now 6"):
        OPT.run(HP, 4, 6, DATA, DATA, progress=False, checkpoint_dir=tmp_path)
    assert path.read_bytes() == data
    resumed = run(tmp_path, n=4)
    assert list(resumed.history.iteration) == [0, 1, 2, 3]
    assert list(resumed.history.val_loss[:2]) == list(first.history.val_loss)


def mlp_problem(width: int, dtype=jnp.float32):
    """A model with a hidden layer of ``width`` units and a static leaf (its activation), as a user would change it
    between two runs."""

    def init(hp, key):
        k1, k2 = jax.random.split(jax.random.key(0))
        w1, w2 = jax.random.normal(k1, (5, width), dtype), jax.random.normal(k2, (width, 2), dtype)
        return {"W1": 0.3 * w1, "W2": 0.3 * w2, "act": jnp.tanh}

    def loss(w, hp, b):
        return jnp.mean((w["act"](b[0] @ w["W1"]) @ w["W2"] - b[1]) ** 2) + hp["wd"] * jnp.sum(w["W1"] ** 2)

    return hg.BilevelProblem(init, loss, loss, hg.optim.momentum(0.1, 0.5))


MLP_DATA = (jnp.ones((4, 5)), jnp.ones((4, 2)))


@pytest.mark.parametrize("warm_restart", [False, True])
def test_a_checkpoint_of_another_model_is_refused_naming_the_difference(tmp_path, warm_restart):
    """The model's width changed between two runs with one checkpoint_dir: the resume is refused, naming the leaf
    and both shapes, the file stays as it was, and the old model's run still resumes from it."""
    opt8 = hg.HyperOptimizer(mlp_problem(8), hyper_optimizer=optax.sgd(1e-3), warm_restart=warm_restart)
    first = opt8.run(HP, 3, 5, MLP_DATA, MLP_DATA, progress=False, checkpoint_dir=tmp_path)
    path = tmp_path / "hyperopt.npz"
    data = path.read_bytes()
    opt16 = hg.HyperOptimizer(mlp_problem(16), hyper_optimizer=optax.sgd(1e-3), warm_restart=warm_restart)
    with pytest.raises(hg.CheckpointError, match=r"params\['W1'\]: \(5, 8\) float32 saved, \(5, 16\) float32 now") as e:
        opt16.run(HP, 5, 5, MLP_DATA, MLP_DATA, progress=False, checkpoint_dir=tmp_path)
    assert str(path) in str(e.value) and "another checkpoint_dir" in str(e.value)
    assert path.read_bytes() == data  # untouched
    # Another static leaf (the activation) is a different model too.
    relu = hg.BilevelProblem(lambda hp, k: {**mlp_problem(8).init(hp, k), "act": jax.nn.relu},
                             *(mlp_problem(8).train_loss,) * 2, hg.optim.momentum(0.1, 0.5))  # fmt: skip
    with pytest.raises(hg.CheckpointError, match=r"static params\['act'\]: .*tanh saved, .*relu now"):
        hg.HyperOptimizer(relu, hyper_optimizer=optax.sgd(1e-3), warm_restart=warm_restart).run(
            HP, 5, 5, MLP_DATA, MLP_DATA, progress=False, checkpoint_dir=tmp_path
        )
    assert path.read_bytes() == data
    resumed = opt8.run(HP, 5, 5, MLP_DATA, MLP_DATA, progress=False, checkpoint_dir=tmp_path)
    assert list(resumed.history.val_loss[:3]) == list(first.history.val_loss)  # nothing completed was lost


def test_a_checkpoint_dir_that_cannot_be_written_is_refused_before_any_compute(tmp_path):
    a_file = tmp_path / "results.txt"
    a_file.write_text("the user's file")
    calls = []
    for directory in (a_file, a_file / "sub"):
        with pytest.raises(hg.CheckpointError, match="cannot be written .*nothing has run yet") as e:
            OPT.run(HP, 3, 5, DATA, DATA, progress=False, checkpoint_dir=directory, callbacks=calls.append)
        assert str(directory) in str(e.value)
    assert calls == [] and a_file.read_text() == "the user's file"


def test_a_disk_that_fails_mid_run_loses_nothing(tmp_path, monkeypatch):
    """The first checkpoint is written; then every write fails (a full disk): the run goes on, warns naming the
    checkpoint that could not be written and the last one that was, returns its whole result, and the checkpoint
    on disk is the last good one (its run resumes from it)."""
    real_savez, writes = np.savez, []

    def savez(file, **arrays):
        writes.append(1)
        if len(writes) > 1:
            raise OSError(28, "No space left on device")
        return real_savez(file, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    with pytest.warns(RuntimeWarning) as warned:
        result = run(tmp_path, n=6, checkpoint_every=2)
    expected = (r"could not write the checkpoint of hyper-iteration {} to .*hyperopt.npz \(OSError: No space left on "
                r"device\); the last one written holds 2 hyper-iterations")  # fmt: skip
    messages = [str(w.message) for w in warned]
    assert len(messages) == 2 and all(re.match(expected.format(i), m) for i, m in zip((4, 6), messages, strict=True))
    straight = run(None, n=6)
    assert list(result.history.val_loss) == list(straight.history.val_loss)  # the whole result
    assert sorted(os.listdir(tmp_path)) == ["hyperopt.npz"]  # no half-written temporary file left
    monkeypatch.setattr(np, "savez", real_savez)
    resumed = run(tmp_path, n=6)  # from the last good checkpoint: 2 hyper-iterations
    assert list(resumed.history.val_loss) == list(straight.history.val_loss)


class Boom(Exception):
    pass


def test_a_callback_that_raises_keeps_the_completed_iterations(tmp_path):
    def callback(record):
        if record["iteration"] == 3:
            raise Boom("my callback failed")

    with pytest.raises(Boom, match="my callback failed") as e:
        run(tmp_path, n=6, callbacks=callback)  # checkpoint_every=10: no save happened before
    assert type(e.value) is Boom  # the user's exception, unchanged
    partial = e.value.result
    assert partial.stopped == "error" and list(partial.history.iteration) == [0, 1, 2, 3]
    straight = run(None, n=6)
    assert list(partial.history.val_loss) == list(straight.history.val_loss[:4])
    resumed = run(tmp_path, n=6)  # the checkpoint written on the way out holds the 4 completed iterations
    assert list(resumed.history.val_loss) == list(straight.history.val_loss)


def test_a_metric_that_is_not_a_scalar_is_refused_before_any_compute():
    opt = hg.HyperOptimizer(mlp_problem(8), metrics={"colsum": lambda p, hp: p["W2"].sum(0)})
    with pytest.raises(ValueError, match=r"metrics\['colsum'\] must return a scalar .*shape \(2,\)"):
        opt.run(HP, 3, 5, MLP_DATA, MLP_DATA, progress=False, callbacks=lambda r: pytest.fail("it ran"))
    broken = hg.HyperOptimizer(mlp_problem(8), metrics={"oops": lambda p, hp: p["missing"]})
    with pytest.raises(KeyError, match=r"metrics\['oops'\]\(params, hparams\) failed"):
        broken.run(HP, 3, 5, MLP_DATA, MLP_DATA, progress=False)


# ----- interrupt and resume -------------------------------------------------------------------------------------

RESUME_CASES = {
    "reverse-warm": dict(method=hg.Reverse(), warm_restart=True, hyper_iterations=7),
    "realtime": dict(method=hg.RealTime(delta=2), warm_restart=False, hyper_iterations=None),
}


@pytest.mark.parametrize("case", RESUME_CASES)
def test_interrupt_and_resume_is_bit_identical(case, tmp_path):
    settings = dict(RESUME_CASES[case])
    n = settings.pop("hyper_iterations")
    opt = hg.HyperOptimizer(LOOP_PROBLEM, constraints={"wd": LOG}, **settings)
    kwargs = dict(T=14, train_data=TRAIN, val_data=VAL, key=KEY, progress=False, snapshot_every=2, checkpoint_every=2)
    full = opt.run(LOOP_HP, n, **kwargs)

    def interrupt(record):
        if record["iteration"] == 4:
            raise KeyboardInterrupt

    first = opt.run(LOOP_HP, n, checkpoint_dir=tmp_path, callbacks=interrupt, **kwargs)
    assert first.stopped == "interrupted" and len(first.history) == 5
    resumed = opt.run(LOOP_HP, n, checkpoint_dir=tmp_path, **kwargs)
    assert resumed.stopped is None
    pd.testing.assert_frame_equal(without_wall_time(resumed.history), without_wall_time(full.history), check_exact=True)
    assert resumed.history.wall_time.is_monotonic_increasing
    for name in LOOP_HP:
        np.testing.assert_array_equal(resumed.hparams[name], full.hparams[name])
    assert resumed.snapshots.keys() == full.snapshots.keys()
    for i in full.snapshots:
        for name in LOOP_HP:
            np.testing.assert_array_equal(resumed.snapshots[i][name], full.snapshots[i][name])
    np.testing.assert_array_equal(resumed.state.params["W1"], full.state.params["W1"])
    # A finished run resumes to the same result without computing, and other settings are refused.
    again = opt.run(LOOP_HP, n, checkpoint_dir=tmp_path, **kwargs)
    pd.testing.assert_frame_equal(again.history, resumed.history, check_exact=True)
    with pytest.raises(ValueError, match="saved by another run"):
        opt.run(LOOP_HP, n, **{**kwargs, "T": 16}, checkpoint_dir=tmp_path)
    sgd = hg.HyperOptimizer(LOOP_PROBLEM, hyper_optimizer=optax.sgd(0.05), constraints={"wd": LOG}, **settings)
    with pytest.raises(ValueError, match=r"its opt_state has 7 arrays where this run has 0 \(another hyper_optimizer"):
        sgd.run(LOOP_HP, n, **kwargs, checkpoint_dir=tmp_path)


CHILD = """
import os, sys, time
import jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
from test_checkpoint import DATA, HP, KEY, OPT

def slow(record):
    open(os.path.join({marks!r}, str(record["iteration"])), "w").close()
    time.sleep(0.3)

result = OPT.run(HP, 200, 5, DATA, DATA, key=KEY, progress=False, callbacks=slow, checkpoint_dir={ckpt!r},
                 checkpoint_every=1000)
print("stopped", result.stopped, len(result.history))
"""


def test_sigint_to_a_running_process_saves_and_resumes(tmp_path):
    marks, ckpt = tmp_path / "marks", tmp_path / "ckpt"
    marks.mkdir()
    code = CHILD.format(tests=os.path.dirname(__file__), marks=str(marks), ckpt=str(ckpt))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": ""}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 60
    while not (marks / "2").exists():
        assert child.poll() is None, child.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.05)
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err.decode()
    stopped, rows = out.decode().split()[1:]
    assert stopped == "interrupted" and int(rows) >= 3
    total = int(rows) + 2
    resumed = OPT.run(HP, total, 5, DATA, DATA, key=KEY, progress=False, checkpoint_dir=ckpt)
    # The fingerprint holds the hyper_iterations-independent settings only, so the run can be extended.
    full = OPT.run(HP, total, 5, DATA, DATA, key=KEY, progress=False)
    pd.testing.assert_frame_equal(without_wall_time(resumed.history), without_wall_time(full.history), check_exact=True)
    assert not np.array_equal(full.history.val_loss, OPT.run(HP, total, 5, DATA, DATA, progress=False).history.val_loss)
