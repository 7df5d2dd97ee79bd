"""Checkpoints and interrupts of the loop (hgkit/_checkpoint.py, hgkit/_interrupt.py): an interrupted run, by
KeyboardInterrupt or by SIGINT to a running process, resumes bit for bit; a damaged or foreign file is named,
explained and left as it is."""

from __future__ import annotations

import os
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
    with pytest.raises(hg.CheckpointError, match=r"holds a run with other settings.*'T'"):
        OPT.run(HP, 4, 6, DATA, DATA, progress=False, checkpoint_dir=tmp_path)
    assert path.read_bytes() == data
    resumed = run(tmp_path, n=4)
    assert list(resumed.history.iteration) == [0, 1, 2, 3]
    assert list(resumed.history.val_loss[:2]) == list(first.history.val_loss)


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
    with pytest.raises(ValueError, match="other settings"):
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
