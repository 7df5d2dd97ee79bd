"""Multi-host, on one machine: two processes joined by jax.distributed (gloo collectives on CPU), each holding half
of the training batch, give the hypergradient one process gets alone (float64), and the loop the same history in
both (the README's multi-host recipe; the worker is tests/multihost_worker.py), and a meta-batch's tasks split over
the two processes give one process's history."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("multihost_worker.py")


def test_two_processes_agree_with_one(tmp_path):
    port = random.randint(20000, 40000)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device per process
    outs = [tmp_path / f"process{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), str(i), str(outs[i])],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            p.kill()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    for r in results:
        assert r["devices"] == 2 and r["processes"] == 2
        sharded = {k: float(v) for k, v in r["sharded"].items()}
        alone = {k: float(v) for k, v in r["alone"].items()}
        for k in alone:  # the all-reduce sums in another order than one device does: rounding only
            np.testing.assert_allclose(sharded[k], alone[k], rtol=1e-12, atol=1e-15)
    # Both processes hold the same replicated results, and ran the loop identically.
    assert results[0]["sharded"] == results[1]["sharded"]
    assert results[0]["history"] == results[1]["history"]
    # Meta-learning with the tasks split over the two processes: the same history in both, and as one process alone.
    assert results[0]["meta"] == results[1]["meta"]
    for column, values in results[0]["meta"].items():
        alone = [float(x) for x in results[0]["meta_alone"][column]]
        np.testing.assert_allclose([float(x) for x in values], alone, rtol=1e-12, atol=1e-15)
