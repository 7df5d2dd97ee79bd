"""What the hypergradient costs, in units of the training run it differentiates (issue 2's figures).

Problem: an MLP 64-256-10 (tanh) on 2,000 MNIST images average-pooled to 8×8, full-batch heavy-ball momentum;
hyperparameters: learning rate, momentum, log weight decay and 2,000 per-example weights (reverse mode's case)
or the three scalars alone (forward mode's case).

Printed, as ratios to plain training of the same T (same process, median of repeated calls after warm-up):
* time of hgkit reverse (storing states, which ``hg.Reverse()`` chooses here; storing every step's residuals;
  binomial checkpointing with 32 slots), forward (m = 3) and real-time (Δ = T), and of plain ``jax.grad``
  through ``lax.scan`` with and without ``jax.checkpoint`` on the step;
* memory: XLA's compiled temporary memory (deterministic) and peak resident memory of a fresh process per
  contender; reverse mode's growth per step in units of the training state |s| (target ≤ 2), forward mode's
  change from T = 200 to T = 1000 (target ≤ 10%).

Run: ``python benchmarks/core_cost.py`` (about 3 minutes on 2 cores); ``--quick`` for a smaller check.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg
from hgkit.datasets import hyper_cleaning_mnist

N, HIDDEN = 2000, 256


def data(dtype=jnp.float32):
    split = hyper_cleaning_mnist()
    x = split.x_train[:N].reshape(N, 28, 28)[:, 2:26, 2:26].reshape(N, 8, 3, 8, 3).mean(axis=(2, 4))
    x = jnp.asarray(x.reshape(N, 64), dtype)
    y = jnp.asarray(split.y_train[:N])
    return (x, y), (
        jnp.asarray(
            split.x_val[:N].reshape(N, 28, 28)[:, 2:26, 2:26].reshape(N, 8, 3, 8, 3).mean(axis=(2, 4)).reshape(N, 64),
            dtype,
        ),
        jnp.asarray(split.y_val[:N]),
    )


def init(hp, key):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    dtype = hp["lr"].dtype
    return {
        "W1": jax.random.normal(k1, (64, HIDDEN), dtype) / 8.0,
        "b1": jnp.zeros(HIDDEN, dtype),
        "W2": jax.random.normal(k2, (HIDDEN, 10), dtype) / 16.0,
        "b2": jnp.zeros(10, dtype),
    }


def logits(p, x):
    return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def xent(p, batch, weights=None):
    x, y = batch
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits(p, x)), y[:, None], axis=1)[:, 0]
    return jnp.mean(nll if weights is None else weights * nll)


def train_loss(p, hp, batch):
    decay = jnp.exp(hp["log_wd"]) * sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p))
    return xent(p, batch, hp.get("ex_w")) + decay


PROBLEM = hg.BilevelProblem(
    init=init, train_loss=train_loss, val_loss=lambda p, hp, b: xent(p, b), optimizer=hg.optim.momentum("lr", "mu")
)


def hparams(with_weights, dtype=jnp.float32):
    hp = {"lr": jnp.asarray(0.3, dtype), "mu": jnp.asarray(0.9, dtype), "log_wd": jnp.asarray(-8.0, dtype)}
    if with_weights:
        hp["ex_w"] = jnp.ones(N, dtype)
    return hp


def plain_objective(hp, T, train, val, checkpoint=False):
    """What a JAX user writes: training unrolled with lax.scan, then the validation loss."""

    def step(state, t):
        return hg.train_step(PROBLEM, state, hp, train, t)[0], None

    step = jax.checkpoint(step) if checkpoint else step
    state, _ = jax.lax.scan(step, hg.initial_state(PROBLEM, hp, None), jnp.arange(T, dtype=jnp.int32))
    return xent(state.params, val)


def contenders(T, train, val):
    """name -> (jitted function, its arguments)."""
    many, few = hparams(True), hparams(False)

    def hgkit_fn(method, hp):
        return jax.jit(lambda h: hg.hypergradient_result(PROBLEM, h, T, train, val, method=method).grads), (hp,)

    return {
        "training": (jax.jit(lambda h: plain_objective(h, T, train, val)), (many,)),
        "hgkit reverse": hgkit_fn(hg.Reverse(), many),  # stores states here: a step's residuals are 70 states
        "hgkit reverse (forward-over-reverse)": hgkit_fn(hg.Reverse(hvp="forward-over-reverse"), many),
        "hgkit reverse (Residuals())": hgkit_fn(hg.Reverse(store=hg.Residuals()), many),
        "hgkit reverse (Binomial(32))": hgkit_fn(hg.Reverse(store=hg.Binomial(32)), many),
        "hgkit forward, m=3": hgkit_fn(hg.Forward(), few),
        "hgkit real-time Δ=T, m=3": hgkit_fn(hg.RealTime(delta=T), few),
        "jax.grad through scan": (jax.jit(jax.grad(lambda h: plain_objective(h, T, train, val))), (many,)),
        "jax.grad + jax.checkpoint": (jax.jit(jax.grad(lambda h: plain_objective(h, T, train, val, True))), (many,)),
    }


def median_time(fn, args, repeats, warmup=True):
    """The median of ``repeats`` timed calls, after one untimed call (compilation, warm-up) unless ``warmup=False``."""
    if warmup:
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def temp_bytes(fn, args):
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes


def one(name, T):
    """Run one contender once in this (fresh) process; print its peak resident memory."""
    train, val = data()
    fn, args = contenders(T, train, val)[name]
    jax.block_until_ready(fn(*args))
    jax.block_until_ready(fn(*args))
    print(json.dumps({"peak_rss": own_peak_rss()}))


def own_peak_rss() -> int:
    """This process's peak resident memory, in bytes.

    ``VmHWM`` belongs to the address space made at exec, whereas ``ru_maxrss`` keeps the high-water mark of the
    parent this process was forked from: a child of a parent that already ran a big contender would report the
    parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss(name, T, script=__file__):
    """Peak resident memory of a fresh process running ``script --one NAME T`` (which prints it as JSON)."""
    out = subprocess.run(
        [sys.executable, script, "--one", name, str(T)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T = 100 and fewer repeats")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        return one(args.one[0], int(args.one[1]))
    T = 100 if args.quick else 400
    repeats = 3 if args.quick else 7
    train, val = data()
    state_bytes = sum(
        x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(hg.initial_state(PROBLEM, hparams(True), None))
    )
    print(
        f"MLP 64-{HIDDEN}-10, {N} examples, T={T} momentum steps, float32; |s| = {state_bytes / 2**20:.2f} MiB "
        f"({jax.devices()[0].platform}, jax {jax.__version__})"
    )
    table = contenders(T, train, val)
    base_time = median_time(*table["training"], repeats)
    base_rss = peak_rss("training", T)
    base_temp = temp_bytes(*table["training"])
    print(f"{'contender':40s} {'time/training':>14s} {'XLA temp MiB':>13s} {'peak RSS/training':>18s}")
    for name, (fn, fargs) in table.items():
        t = median_time(fn, fargs, repeats)
        print(
            f"{name:40s} {t / base_time:14.2f} {temp_bytes(fn, fargs) / 2**20:13.1f} "
            f"{peak_rss(name, T) / base_rss:18.2f}",
            flush=True,
        )
    print(
        f"(training: {base_time * 1e3:.1f} ms, XLA temp {base_temp / 2**20:.1f} MiB, peak RSS "
        f"{base_rss / 2**20:.0f} MiB)"
    )

    # Memory growth with T, from XLA's compiled memory (exact and noise-free).
    t1, t2 = (50, 100) if args.quick else (200, 400)
    rev = [temp_bytes(*contenders(t, train, val)["hgkit reverse"]) for t in (t1, t2)]
    growth = (rev[1] - rev[0]) / (t2 - t1) / state_bytes
    print(f"reverse: memory grows by {growth:.2f}·|s| per step from T={t1} to T={t2} (target ≤ 2)")
    f1, f2 = (100, 500) if args.quick else (200, 1000)
    fwd = [temp_bytes(*contenders(t, train, val)["hgkit forward, m=3"]) for t in (f1, f2)]
    print(f"forward: memory changes by {100 * (fwd[1] / fwd[0] - 1):+.1f}% from T={f1} to T={f2} (target ≤ 10%)")


if __name__ == "__main__":
    main()
