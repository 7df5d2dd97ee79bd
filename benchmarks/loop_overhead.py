"""What the optimization loop adds to the hypergradient it is built on (issue 3's figure; target ratio ≤ 1.05).

Problem: an MLP 784-64-10 (tanh) on 1,000 MNIST images, full-batch heavy-ball momentum, T inner steps;
hyperparameters: log learning rate, momentum (box), log weight decay and 1,000 per-example weights (box [0, 1]).

Printed: the time of one hyper-iteration of ``hg.HyperOptimizer.run`` (hypergradient + Adam update + projection +
history row + one transfer to the host + callbacks/progress bookkeeping; from consecutive ``wall_time`` values,
median and minimum) against one call of the compiled bare ``hg.hypergradient_result`` (``block_until_ready``),
both measured in the same process after compilation, in alternating rounds so that load on the machine hits both.
On a loaded shared CPU the minimum is the steadier figure.

Run: ``python benchmarks/loop_overhead.py`` (about a minute on 2 cores); ``--T`` and ``--iterations`` to change.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hgkit as hg
from hgkit.datasets import hyper_cleaning_mnist

N, HIDDEN = 1000, 64


def problem_and_data():
    split = hyper_cleaning_mnist()
    train = (jnp.asarray(split.x_train[:N]), jnp.asarray(split.y_train[:N]))
    val = (jnp.asarray(split.x_val[:N]), jnp.asarray(split.y_val[:N]))

    def init(hp, key):
        k1, k2 = jax.random.split(jax.random.key(0))
        return {
            "W1": jax.random.normal(k1, (784, HIDDEN)) / 28.0,
            "b1": jnp.zeros(HIDDEN),
            "W2": jax.random.normal(k2, (HIDDEN, 10)) / 8.0,
        }

    def losses(w, x, y):
        logits = jnp.tanh(x @ w["W1"] + w["b1"]) @ w["W2"]
        return -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1)[:, 0]

    problem = hg.BilevelProblem(
        init=init,
        train_loss=lambda w, hp, b: jnp.mean(hp["weights"] * losses(w, *b)) + hp["wd"] * jnp.sum(w["W1"] ** 2),
        val_loss=lambda w, hp, b: jnp.mean(losses(w, *b)),
        optimizer=hg.optim.momentum(lr="lr", momentum="mu"),
    )
    hp = {"lr": jnp.asarray(0.1), "mu": jnp.asarray(0.5), "wd": jnp.asarray(1e-4), "weights": jnp.full(N, 0.9)}
    constraints = {
        "lr": hg.constraints.log(),
        "mu": hg.constraints.box(0.0, 0.99),
        "wd": hg.constraints.log(),
        "weights": hg.constraints.box(0.0, 1.0),
    }
    return problem, hp, constraints, train, val


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    problem, hp, constraints, train, val = problem_and_data()
    method = hg.Reverse()
    bare = jax.jit(functools.partial(hg.hypergradient_result, problem, T=args.T, method=method))
    opt = hg.HyperOptimizer(problem, method=method, hyper_optimizer=optax.adam(1e-2), constraints=constraints)

    def time_bare(repeats):
        out = []
        for _ in range(repeats):
            start = time.perf_counter()
            with jax.default_matmul_precision(problem.matmul_precision):  # as the loop runs it
                jax.block_until_ready(bare(hp, train_data=train, val_data=val, key=jax.random.key(1)))
            out.append(time.perf_counter() - start)
        return out

    def time_loop():
        result = opt.run(hp, args.iterations, args.T, train, val, key=jax.random.key(1), progress=False)
        return list(np.diff(result.history.wall_time.to_numpy()))

    time_bare(1), time_loop()  # compile both
    bare_times, loop_times = [], []
    for _ in range(args.rounds):
        bare_times += time_bare(args.iterations)
        loop_times += time_loop()
    print(f"device: {jax.devices()[0].device_kind}; T = {args.T}; MLP 784-{HIDDEN}-10 on {N} images; reverse mode")
    print("                              median       min  (ms)")
    for name, t in (("bare compiled hypergradient", bare_times), ("loop, per hyper-iteration", loop_times)):
        print(f"{name:28s} {1e3 * np.median(t):9.2f} {1e3 * np.min(t):9.2f}  ({len(t)} samples)")
    print(
        f"ratio loop / bare            {np.median(loop_times) / np.median(bare_times):9.3f} "
        f"{np.min(loop_times) / np.min(bare_times):9.3f}  (target <= 1.05)"
    )


if __name__ == "__main__":
    main()
