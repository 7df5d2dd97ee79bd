"""Memory a finished run leaves behind: many ``HyperOptimizer`` runs in one process, each with a new ``train_data``
closure over its own training set (what an experiment's grid or a notebook session does).

A trace embeds what a function closes over as constants, and jit's caches keep the compiled programs. Each
``HyperOptimizer`` compiles into functions of its own (``hgkit._loop_step.compiled_steps``), freed with it; what
JAX's own caches keep of the static arguments (the user's closures, and through them their arrays) stays until
``jax.clear_caches()``. This prints the resident memory after each run, the optimizer dropped, without and with
``jax.clear_caches()`` between runs.

    python benchmarks/retained_memory.py [--runs 6] [--rows 20000]
"""

from __future__ import annotations

import argparse
import gc
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hgkit as hg


def resident_mib() -> float:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_run(seed: int, rows: int) -> None:
    x = jnp.asarray(np.random.default_rng(seed).normal(size=(rows, 784)).astype(np.float32))
    y = jnp.zeros(rows, jnp.int32)

    def batch(step):  # closes over the training set, as a minibatch function does
        index = (jnp.arange(32) + step * 32) % rows
        return x[index], y[index]

    def loss(params, hparams, data):
        return jnp.mean((data[0] @ params["w"]) ** 2)

    problem = hg.BilevelProblem(
        init=lambda hp, key: {"w": jnp.zeros((784, 10))}, train_loss=loss, val_loss=loss, optimizer=hg.optim.sgd("lr")
    )
    opt = hg.HyperOptimizer(problem, method=hg.RealTime(1), hyper_optimizer=optax.sgd(1e-3))
    opt.run({"lr": jnp.float32(0.01)}, T=5, train_data=batch, val_data=(x[:64], y[:64]), progress=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--rows", type=int, default=20000)
    args = parser.parse_args()
    size = args.rows * 784 * 4 / 2**20
    print(f"jax {jax.__version__}; each run's training set: {size:.0f} MiB")
    for clear in (False, True):
        start = None
        for i in range(args.runs):
            one_run(i, args.rows)
            if clear:
                jax.clear_caches()
            gc.collect()
            now = resident_mib()
            start = now if start is None else start
        per_run = (now - start) / (args.runs - 1)
        label = "jax.clear_caches() between runs" if clear else "no clearing"
        print(f"{label:34s}: {per_run:6.1f} MiB kept per run ({per_run / size:.2f}× its training set)")


if __name__ == "__main__":
    main()
