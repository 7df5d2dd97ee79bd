"""One process of the two-process (multi-host on one machine) test: run as
``python multihost_worker.py PORT PROCESS_ID OUT.json``.

The README's multi-host recipe on CPU: gloo collectives, ``jax.distributed.initialize``, a mesh over the global
devices, each process holding its share of the batch. Writes the sharded hypergradient, the single-process one
(the whole batch on this process alone) and the loop's history as JSON (floats by ``repr``: bit for bit).
"""

from __future__ import annotations

import json
import sys

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_cpu_collectives_implementation", "gloo")
port, process_id, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import hgkit as hg  # noqa: E402

rng = np.random.default_rng(0)
X, Y = rng.normal(size=(16, 5)), rng.normal(size=16)  # the same data in both processes; each keeps its half
XV, YV = rng.normal(size=(8, 5)), rng.normal(size=8)

problem = hg.BilevelProblem(
    init=lambda hp, key: jnp.zeros(5),
    train_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2) + jnp.exp(hp["log_wd"]) * jnp.sum(w**2),
    val_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2),
    optimizer=hg.optim.momentum("lr", 0.5),
)
hparams = {"lr": jnp.asarray(0.1), "log_wd": jnp.asarray(-2.0)}
T = 20

mesh = jax.make_mesh((jax.device_count(),), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
half = slice(8 * process_id, 8 * (process_id + 1))
sharding = NamedSharding(mesh, P("data"))
train = tuple(jax.make_array_from_process_local_data(sharding, a[half]) for a in (X, Y))
replicated = NamedSharding(mesh, P())
hp_global = jax.device_put(hparams, replicated)
val = jax.device_put((XV, YV), replicated)


def local(x):
    """A replicated global array's value, read on this process."""
    return np.asarray(x.addressable_data(0))


value, grads = hg.hypergradient(problem, hp_global, T, train, val)
history = (
    hg.HyperOptimizer(problem, hyper_optimizer=optax.adam(0.05))
    .run(hp_global, 3, T, train, val, progress=False)
    .history
)
# The same on this process alone, the whole batch on one device (no collectives).
alone_value, alone = hg.hypergradient(problem, hparams, T, (jnp.asarray(X), jnp.asarray(Y)), (XV, YV))


# Meta-learning: the tasks of each meta-batch split over the two processes (mesh=), against this process alone.
def tasks(key, M=4):
    """M least-squares tasks: support and query sets around a task's own weights."""
    k1, k2, k3 = jax.random.split(key, 3)
    truth = jax.random.normal(k1, (M, 5), jnp.float64)
    xs, xq = jax.random.normal(k2, (M, 6, 5), jnp.float64), jax.random.normal(k3, (M, 6, 5), jnp.float64)
    return (xs, jnp.einsum("mnd,md->mn", xs, truth)), (xq, jnp.einsum("mnd,md->mn", xq, truth))


maml = hg.BilevelProblem(
    init=lambda hp, key: hp["theta"],
    train_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2),
    val_loss=lambda w, hp, b: jnp.mean((b[0] @ w - b[1]) ** 2),
    optimizer=hg.optim.sgd("lr"),
)
meta_hp = {"theta": jnp.zeros(5), "lr": jnp.asarray(0.05)}
meta_opt = hg.HyperOptimizer(maml, hyper_optimizer=optax.adam(0.05))
meta_kwargs = dict(tasks=tasks, key=jax.random.key(0), progress=False)
meta_sharded = meta_opt.run(jax.device_put(meta_hp, replicated), 3, 4, mesh=mesh, **meta_kwargs).history
meta_alone = meta_opt.run(meta_hp, 3, 4, **meta_kwargs).history

result = {
    "devices": jax.device_count(),
    "processes": jax.process_count(),
    "sharded": {"value": repr(float(local(value))), **{k: repr(float(local(v))) for k, v in grads.items()}},
    "alone": {"value": repr(float(alone_value)), **{k: repr(float(v)) for k, v in alone.items()}},
    "history": {c: [repr(float(x)) for x in history[c]] for c in ("val_loss", "grad_norm", "lr", "log_wd")},
    "meta": {c: [repr(float(x)) for x in meta_sharded[c]] for c in ("val_loss", "grad_norm", "lr")},
    "meta_alone": {c: [repr(float(x)) for x in meta_alone[c]] for c in ("val_loss", "grad_norm", "lr")},
}
with open(out, "w") as f:
    json.dump(result, f)
jax.distributed.shutdown()
