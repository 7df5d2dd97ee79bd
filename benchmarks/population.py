"""A population of P starting points tuned together (``HyperOptimizer.run(..., population=P)``) against P separate runs.

Problem: as ``loop_overhead.py`` (an MLP 784-64-10 on 1,000 MNIST images, learning rate, momentum, weight decay and
1,000 per-example weights), with P random starts of the learning rate, momentum and weight decay.

Printed: the wall time of one hyper-iteration of the whole population (one vmapped compiled call) and of P
hyper-iterations of separate runs (one per member, one after the other), both after compilation, from the history's
``wall_time`` (minimum and median over the iterations), and the largest difference between the members' tuned values
and the separate runs'. On a CPU the members share the same cores, so what a population saves is dispatch and
per-call overhead and what it gains is XLA batching the small matrix products; on an accelerator the P members fill
the device.

Run: ``python benchmarks/population.py`` (about two minutes on 2 cores); ``--P``, ``--T``, ``--iterations``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from loop_overhead import HIDDEN, N, problem_and_data

import hgkit as hg


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--P", type=int, default=8)
    parser.add_argument("--T", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=8)
    args = parser.parse_args()
    P = args.P

    problem, hp, constraints, train, val = problem_and_data()
    u = jax.random.uniform(jax.random.key(3), (3, P))
    starts = {
        "lr": 10 ** (-2 + 1.5 * u[0]),
        "mu": 0.3 + 0.6 * u[1],
        "wd": 10 ** (-5 + 2 * u[2]),
        "weights": jnp.broadcast_to(hp["weights"], (P, N)),
    }
    opt = hg.HyperOptimizer(problem, hyper_optimizer=optax.adam(1e-2), constraints=constraints)
    key = jax.random.key(1)
    keys = jax.random.split(key, P)
    kwargs = dict(T=args.T, train_data=train, val_data=val, progress=False)

    def member(p):
        return jax.tree_util.tree_map(lambda x: x[p], starts)

    # Compile both (the first hyper-iteration compiles; the timed runs below reuse the compilations).
    opt.run(starts, 1, key=key, population=P, **kwargs)
    opt.run(member(0), 1, key=keys[0], **kwargs)

    together = opt.run(starts, args.iterations, key=key, population=P, **kwargs)
    per_iteration = np.diff(together.history.groupby("iteration").wall_time.first().to_numpy())
    alone, separate = [], []
    for p in range(P):
        result = opt.run(member(p), args.iterations, key=keys[p], **kwargs)
        alone.append(result)
        separate.append(np.diff(result.history.wall_time.to_numpy()))
    separate = np.sum(separate, axis=0)  # P members' hyper-iteration i, one after the other
    diff = max(float(np.max(np.abs(together.hparams[k][p] - alone[p].hparams[k]))) for k in starts for p in range(P))
    print(f"device: {jax.devices()[0].device_kind}; P = {P} members; T = {args.T}; MLP 784-{HIDDEN}-10 on {N} images")
    print("                                        min      median  (ms per hyper-iteration of all P)")
    for name, t in (("population (one vmapped call)", per_iteration), (f"{P} separate runs", separate)):
        print(f"{name:34s} {1e3 * np.min(t):9.1f} {1e3 * np.median(t):9.1f}")
    print(
        f"ratio population / separate        {np.min(per_iteration) / np.min(separate):9.3f} "
        f"{np.median(per_iteration) / np.median(separate):9.3f}"
    )
    print(f"largest difference of the tuned values from the separate runs: {diff:.2e} ({together.hparams['lr'].dtype})")


if __name__ == "__main__":
    main()
