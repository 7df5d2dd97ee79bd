"""Memory and time against the horizon T: full reverse, checkpointed reverse, truncated reverse, forward, implicit.

Problem: an MLP 32-64-10 (tanh) on 256 synthetic examples, full-batch heavy-ball momentum, float32;
hyperparameters: learning rate, momentum, log weight decay (m = 3, so forward mode is in its element).

For T in (100, 1000, 5000) and each method, printed: XLA's compiled temporary memory (deterministic; also in units
of the training state |s|), the median wall time of the compiled hypergradient (of 3 calls; one call at T = 5000),
and both as ratios to full reverse mode at the same T. ``--rss`` adds the peak resident memory of a fresh process
per point (slower). Truncation at K = 100 is left out at T = 100, where it is full reverse mode.

Run: ``python benchmarks/memory_horizon.py`` (2 to 3 minutes on 2 busy cores); ``--quick`` for T in (100, 500).
"""

from __future__ import annotations

import argparse
import json

import core_cost  # a sibling script: benchmarks/ is on sys.path when this one runs
import jax
import jax.numpy as jnp
import numpy as np

import hgkit as hg

N, D, HIDDEN, CLASSES = 256, 32, 64, 10


def data():
    rng = np.random.default_rng(0)
    teacher = rng.normal(size=(D, CLASSES))

    def draw(n):
        x = rng.normal(size=(n, D)).astype(np.float32)
        return jnp.asarray(x), jnp.asarray((x @ teacher).argmax(axis=1))

    return draw(N), draw(N)


def init(hp, key):
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    return {
        "W1": jax.random.normal(k1, (D, HIDDEN)) / np.sqrt(D),
        "b1": jnp.zeros(HIDDEN),
        "W2": jax.random.normal(k2, (HIDDEN, CLASSES)) / np.sqrt(HIDDEN),
        "b2": jnp.zeros(CLASSES),
    }


xent = core_cost.xent  # the same MLP's cross-entropy


def train_loss(p, hp, batch):
    return xent(p, batch) + 0.5 * jnp.exp(hp["log_wd"]) * sum(jnp.sum(w**2) for w in jax.tree_util.tree_leaves(p))


PROBLEM = hg.BilevelProblem(
    init=init, train_loss=train_loss, val_loss=lambda p, hp, b: xent(p, b), optimizer=hg.optim.momentum("lr", "mu")
)
HP = {"lr": jnp.asarray(0.3), "mu": jnp.asarray(0.5), "log_wd": jnp.asarray(-6.0)}
METHODS = {
    "reverse": hg.Reverse(),
    "reverse checkpoint=sqrt": hg.Reverse(checkpoint="sqrt"),
    "reverse truncate=100": hg.Reverse(truncate=100),
    "forward (m=3)": hg.Forward(),
    "implicit (cg, 50 it.)": hg.Implicit(
        iterations=50, tol=1e-30
    ),  # tol: always 50 products (flagged, not raised here)
}


def compiled(name, T, train, val):
    method = METHODS[name]
    return jax.jit(lambda h: hg.hypergradient_result(PROBLEM, h, T, train, val, method).grads)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="T in (100, 500), one timed repeat")
    parser.add_argument("--rss", action="store_true", help="also measure peak RSS in a fresh process per point")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "T"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    train, val = data()
    if args.one:
        jax.block_until_ready(compiled(args.one[0], int(args.one[1]), train, val)(HP))
        print(json.dumps({"peak_rss": core_cost.own_peak_rss()}))
        return
    horizons = (100, 500) if args.quick else (100, 1000, 5000)
    state = hg.initial_state(PROBLEM, HP, None)
    s_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(state))
    print(
        f"MLP {D}-{HIDDEN}-{CLASSES}, {N} examples, momentum, float32, m = 3; |s| = {s_bytes / 2**10:.1f} KiB "
        f"({jax.devices()[0].platform}, jax {jax.__version__})"
    )
    head = f"{'T':>5s} {'method':26s} {'XLA temp MiB':>12s} {'temp/|s|':>9s} {'mem/rev':>8s} {'time s':>8s}"
    head += f" {'time/rev':>9s}"
    print(head + (f" {'peak RSS MiB':>12s}" if args.rss else ""))
    for T in horizons:
        base = None
        repeats = 1 if args.quick or T > 1000 else 3  # the long runs once: the default stays near 2 minutes
        for name in METHODS:
            if name.startswith("reverse truncate") and T <= 100:
                continue  # K = 100 = T is full reverse mode
            executable = compiled(name, T, train, val).lower(HP).compile()  # compiled once, timed after
            sec = core_cost.median_time(executable, (HP,), repeats, warmup=False)
            mem = executable.memory_analysis().temp_size_in_bytes
            base = base or (mem, sec)
            line = (
                f"{T:5d} {name:26s} {mem / 2**20:12.2f} {mem / s_bytes:9.1f} {mem / base[0]:8.3f} "
                f"{sec:8.3f} {sec / base[1]:9.2f}"
            )
            rss = core_cost.peak_rss(name, T, script=__file__) if args.rss else None  # a fresh process per point
            print(line + (f" {rss / 2**20:12.0f}" if args.rss else ""), flush=True)


if __name__ == "__main__":
    main()
