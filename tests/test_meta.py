"""Learning across tasks: hg.meta_hypergradient against per-task calls, a hand-written jax.grad and a closed form
(float64), its failures, and the loop with tasks= (first update, one compilation, resume, two devices)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest
from helpers import CompileCounter, without_wall_time

import hgkit as hg

KEY = jax.random.key(0)
T = 4


# ----- the sinusoid regression toy of the MAML paper (Finn et al. 2017, §5.1): no data needed -------------------


def sinusoid_tasks(key, M=4, K=5, Q=6):
    """M tasks y = A sin(x − φ), A ∈ [0.1, 5], φ ∈ [0, π], x ∈ [−5, 5]: K support and Q query points each."""
    ka, kp, kx = jax.random.split(key, 3)
    amp = jax.random.uniform(ka, (M, 1, 1), jnp.float64, 0.1, 5.0)
    phase = jax.random.uniform(kp, (M, 1, 1), jnp.float64, 0.0, jnp.pi)
    x = jax.random.uniform(kx, (M, K + Q, 1), jnp.float64, -5.0, 5.0)
    y = amp * jnp.sin(x - phase)
    return {"x": x[:, :K], "y": y[:, :K]}, {"x": x[:, K:], "y": y[:, K:]}


def mlp(w, x):
    h = jnp.tanh(x @ w["W1"] + w["b1"])
    return h @ w["W2"] + w["b2"]


def mse(w, hp, batch):
    return jnp.mean((mlp(w, batch["x"]) - batch["y"]) ** 2)


def theta0(hidden=8):
    k1, k2 = jax.random.split(jax.random.key(1))
    return {
        "W1": jax.random.normal(k1, (1, hidden), jnp.float64),
        "b1": jnp.zeros(hidden, jnp.float64),
        "W2": jax.random.normal(k2, (hidden, 1), jnp.float64) / jnp.sqrt(hidden),
        "b2": jnp.zeros(1, jnp.float64),
    }


MAML = hg.BilevelProblem(init=lambda hp, key: hp["theta"], train_loss=mse, val_loss=mse, optimizer=hg.optim.sgd("lr"))
MAML_HP = {"theta": theta0(), "lr": jnp.asarray(0.05, jnp.float64)}
SUPPORT, QUERY = sinusoid_tasks(jax.random.key(2))


def by_hand(hp, support, query, steps=T):
    """What a user writes without hgkit: jax.grad of the mean query loss over vmapped, unrolled inner SGD."""

    def one(s, q):
        w = hp["theta"]
        for _ in range(steps):
            g = jax.grad(mse)(w, hp, s)
            w = jax.tree.map(lambda a, b: a - hp["lr"] * b, w, g)
        return mse(w, hp, q)

    return jnp.mean(jax.vmap(one)(support, query))


def flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def task(tree, j):
    return jax.tree.map(lambda x: x[j], tree)


METHODS = {
    "states": hg.Reverse(store=hg.States()),
    "residuals": hg.Reverse(store=hg.Residuals()),
    "binomial": hg.Reverse(store=hg.Binomial(slots=2)),
    "forward": hg.Forward(),
}


@pytest.mark.parametrize("name", METHODS)
def test_maml_equals_mean_of_tasks_and_hand_written_grad(name):
    method = METHODS[name]
    value, grads = hg.meta_hypergradient(MAML, MAML_HP, T, SUPPORT, QUERY, method=method)
    M = SUPPORT["x"].shape[0]
    per_task = [hg.hypergradient(MAML, MAML_HP, T, task(SUPPORT, j), task(QUERY, j), method=method) for j in range(M)]
    mean_value = sum(v for v, _ in per_task) / M
    mean_grads = jax.tree.map(lambda *g: sum(g) / M, *[g for _, g in per_task])
    np.testing.assert_allclose(value, mean_value, rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat(grads), flat(mean_grads), rtol=0, atol=1e-12)
    hand_value, hand_grads = jax.value_and_grad(by_hand)(MAML_HP, SUPPORT, QUERY)
    np.testing.assert_allclose(value, hand_value, rtol=1e-12)
    assert float(jnp.max(jnp.abs(flat(grads) - flat(hand_grads)))) <= 1e-10 * float(jnp.max(jnp.abs(flat(hand_grads))))


def test_truncated_reverse_is_the_mean_of_truncated_tasks():
    method = hg.Reverse(truncate=2)
    _, grads = hg.meta_hypergradient(MAML, MAML_HP, T, SUPPORT, QUERY, method=method)
    M = SUPPORT["x"].shape[0]
    each = [hg.hypergradient(MAML, MAML_HP, T, task(SUPPORT, j), task(QUERY, j), method=method)[1] for j in range(M)]
    np.testing.assert_allclose(flat(grads), sum(flat(g) for g in each) / M, rtol=0, atol=1e-12)
    _, exact = hg.meta_hypergradient(MAML, MAML_HP, T, SUPPORT, QUERY)
    assert not np.allclose(flat(grads), flat(exact))  # truncation is applied, not ignored


def test_keys_are_split_over_tasks():
    """Task j's weights start from init(λ, split(key, M)[j]), as a separate call with that key would."""
    noisy = hg.BilevelProblem(
        init=lambda hp, key: jax.tree.map(lambda w: w + 0.1 * jax.random.normal(key, w.shape, w.dtype), hp["theta"]),
        train_loss=mse,
        val_loss=mse,
        optimizer=hg.optim.sgd("lr"),
    )
    _, grads = hg.meta_hypergradient(noisy, MAML_HP, T, SUPPORT, QUERY, key=KEY)
    keys = jax.random.split(KEY, 4)
    each = [hg.hypergradient(noisy, MAML_HP, T, task(SUPPORT, j), task(QUERY, j), key=keys[j])[1] for j in range(4)]
    np.testing.assert_allclose(flat(grads), sum(flat(g) for g in each) / 4, rtol=0, atol=1e-12)


# ----- iMAML: the proximal inner problem, Implicit against the closed form ---------------------------------------


def test_imaml_implicit_equals_closed_form():
    """Inner: L_j(w) = mean((X_j w − y_j)²) + (λ/2)‖w − θ‖², whose minimiser is
    w*(θ) = (2 X_jᵀX_j/n + λI)⁻¹ (2 X_jᵀy_j/n + λθ); outer: the query MSE at w*. Its gradient in θ is exact."""
    lam, d, M, n = 2.0, 3, 5, 8
    rng = np.random.default_rng(0)
    X, Xq = rng.normal(size=(M, n, d)), rng.normal(size=(M, n, d))
    truth = rng.normal(size=(M, d))
    y, yq = np.einsum("mnd,md->mn", X, truth), np.einsum("mnd,md->mn", Xq, truth)

    def inner(w, hp, b):
        return jnp.mean((b[0] @ w - b[1]) ** 2) + lam / 2 * jnp.sum((w - hp["theta"]) ** 2)

    def outer(w, hp, b):
        return jnp.mean((b[0] @ w - b[1]) ** 2)

    problem = hg.BilevelProblem(init=lambda hp, k: hp["theta"], train_loss=inner, val_loss=outer,
                                optimizer=hg.optim.sgd(0.15))  # fmt: skip
    hp = {"theta": jnp.asarray(rng.normal(size=d))}
    method = hg.Implicit(solver="cg", iterations=50, tol=1e-12)
    value, grads = hg.meta_hypergradient(problem, hp, 400, (X, y), (Xq, yq), method=method)

    def closed(theta):
        def one(x, y, xq, yq):
            w = jnp.linalg.solve(2 * x.T @ x / n + lam * jnp.eye(d), 2 * x.T @ y / n + lam * theta)
            return jnp.mean((xq @ w - yq) ** 2)

        return jnp.mean(jax.vmap(one)(X, y, Xq, yq))

    np.testing.assert_allclose(value, closed(hp["theta"]), rtol=1e-10)
    np.testing.assert_allclose(grads["theta"], jax.grad(closed)(hp["theta"]), rtol=1e-8, atol=1e-12)


# ----- failures and bad input -------------------------------------------------------------------------------------


def test_a_diverging_task_is_named_with_its_step():
    support = {**SUPPORT, "x": SUPPORT["x"].at[2, 3].set(jnp.nan)}  # task 2 goes non-finite at its first step
    hp = MAML_HP
    with pytest.raises(hg.DivergenceError, match=r"task 2 of the meta-batch of 4: the training run went non-finite"):
        hg.meta_hypergradient(MAML, hp, 30, support, QUERY)
    res = jax.jit(lambda h: hg.meta_hypergradient_result(MAML, h, 30, support, QUERY))(hp)
    assert int(res.failed_task) == 2 and int(res.failure) == hg.Failure.TRAINING_NONFINITE
    assert int(res.failed_at) == int(res.tasks.failed_at[2]) >= 0
    ok = hg.meta_hypergradient_result(MAML, MAML_HP, T, SUPPORT, QUERY)
    assert int(ok.failed_task) == -1 and int(ok.failure) == 0 and int(ok.failed_at) == -1


@pytest.mark.parametrize(
    "support, query, error, match",
    [
        ({"x": np.zeros((3, 5, 1)), "y": np.zeros((3, 5, 1))}, QUERY, ValueError, r"must agree.*train_data\['x'\]: 3"),
        ({"x": np.zeros((0, 5, 1)), "y": np.zeros((0, 5, 1))}, task(QUERY, slice(0, 0)), ValueError, "empty meta"),
        ({"x": np.float64(1.0), "y": np.zeros((4, 5, 1))}, QUERY, ValueError, r"train_data\['x'\] is a scalar"),
        (lambda t: SUPPORT, QUERY, TypeError, "got a callable"),
    ],
)
def test_bad_meta_batches_are_refused(support, query, error, match):
    with pytest.raises(error, match=match):
        hg.meta_hypergradient(MAML, MAML_HP, T, support, query)


def test_one_task_is_checked_as_hypergradient_checks_it():
    with pytest.raises(KeyError, match="train_loss.*failed on train_data"):
        hg.meta_hypergradient(MAML, MAML_HP, T, {"x": SUPPORT["x"]}, QUERY)
    with pytest.raises(TypeError, match="inside a JAX transformation"):
        jax.jit(lambda h: hg.meta_hypergradient(MAML, h, T, SUPPORT, QUERY))(MAML_HP)


def test_sharded_tasks_give_the_same_result():
    mesh = two_devices()
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("tasks"))
    support, query = jax.device_put((SUPPORT, QUERY), sharding)
    value, grads = hg.meta_hypergradient(MAML, MAML_HP, T, support, query)
    one_value, one_grads = hg.meta_hypergradient(MAML, MAML_HP, T, SUPPORT, QUERY)
    np.testing.assert_allclose(value, one_value, rtol=1e-14)
    np.testing.assert_allclose(flat(grads), flat(one_grads), rtol=1e-12, atol=1e-15)


# ----- the loop with tasks= ---------------------------------------------------------------------------------------


def two_devices():
    return jax.make_mesh((2,), ("tasks",), devices=jax.devices()[:2], axis_types=(jax.sharding.AxisType.Auto,))


def sample(key):
    return sinusoid_tasks(key, M=4)


def query_error(params, hp, query):
    return jnp.mean(jnp.abs(mlp(params, query["x"]) - query["y"]))


def loop(**kwargs):
    return hg.HyperOptimizer(MAML, hyper_optimizer=optax.adam(1e-2), metrics={"mae": query_error}, **kwargs)


def test_loop_first_update_is_the_optax_step_on_the_mean_hypergradient():
    out = loop().run(MAML_HP, 1, T, tasks=sample, key=KEY, progress=False)
    k_tasks, k_init = jax.random.split(jax.random.fold_in(KEY, 0))
    support, query = sample(k_tasks)
    value, grads = hg.meta_hypergradient(MAML, MAML_HP, T, support, query, key=k_init)
    tx = optax.adam(1e-2)
    updates, _ = tx.update(grads, tx.init(MAML_HP), MAML_HP)
    expected = optax.apply_updates(MAML_HP, updates)
    np.testing.assert_allclose(flat(out.hparams), flat(expected), rtol=1e-13)
    row = out.history.iloc[0]
    np.testing.assert_allclose(row.val_loss, value, rtol=1e-13)
    np.testing.assert_allclose(row.grad_norm, optax.tree.norm(grads), rtol=1e-12)
    assert out.state.params["W1"].shape == (4, 1, 8)  # every task's trained weights


def test_loop_metrics_are_means_over_the_meta_batch():
    out = loop().run(MAML_HP, 1, T, tasks=sample, key=KEY, progress=False)
    _, query = sample(jax.random.split(jax.random.fold_in(KEY, 0))[0])
    each = [query_error(task(out.state.params, j), None, task(query, j)) for j in range(4)]
    np.testing.assert_allclose(out.history.mae.iloc[0], np.mean(each), rtol=1e-12)


def test_loop_with_tasks_compiles_once():
    opt = loop()
    marks = []
    with CompileCounter() as c:
        opt.run(MAML_HP, 5, T, tasks=sample, key=KEY, progress=False, callbacks=lambda r: marks.append(c.count))
    assert marks[0] >= 1 and marks[-1] == marks[0]


def test_loop_with_tasks_resumes_bit_identically(tmp_path):
    opt = loop()
    kwargs = dict(tasks=sample, key=KEY, progress=False, checkpoint_every=2)
    full = opt.run(MAML_HP, 6, T, **kwargs)

    def interrupt(record):
        if record["iteration"] == 2:
            raise KeyboardInterrupt

    first = opt.run(MAML_HP, 6, T, checkpoint_dir=tmp_path, callbacks=interrupt, **kwargs)
    assert first.stopped == "interrupted" and len(first.history) == 3
    resumed = opt.run(MAML_HP, 6, T, checkpoint_dir=tmp_path, **kwargs)
    pd.testing.assert_frame_equal(without_wall_time(resumed.history), without_wall_time(full.history), check_exact=True)
    np.testing.assert_array_equal(flat(resumed.hparams), flat(full.hparams))
    with pytest.raises(hg.CheckpointError, match="tasks"):  # another sampler's checkpoint is refused
        opt.run(MAML_HP, 6, T, checkpoint_dir=tmp_path, **{**kwargs, "tasks": lambda k: sinusoid_tasks(k, M=2)})


def test_loop_on_two_devices_equals_one():
    mesh = two_devices()
    one = loop().run(MAML_HP, 3, T, tasks=sample, key=KEY, progress=False)
    two = loop().run(MAML_HP, 3, T, tasks=sample, key=KEY, progress=False, mesh=mesh)
    explicit = jax.make_mesh((2,), ("tasks",), devices=jax.devices()[:2])  # JAX's default: explicit axes
    again = loop().run(MAML_HP, 3, T, tasks=sample, key=KEY, progress=False, mesh=explicit)
    pd.testing.assert_frame_equal(without_wall_time(two.history), without_wall_time(again.history), check_exact=True)
    a, b = without_wall_time(one.history), without_wall_time(two.history)
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    np.testing.assert_allclose(flat(one.hparams), flat(two.hparams), rtol=1e-12)


@pytest.mark.parametrize(
    "settings, kwargs, match",
    [
        ({}, dict(train_data=SUPPORT), "not both"),
        ({}, dict(key=None), "needs key="),
        ({"method": hg.RealTime(delta=2)}, {}, "online"),
        ({"warm_restart": True}, {}, "warm_restart"),
        ({}, dict(mesh="cpu"), "jax.sharding.Mesh"),
        ({}, dict(tasks=lambda k: (SUPPORT, task(QUERY, slice(0, 3)))), "must agree"),
        ({}, dict(tasks=lambda k: SUPPORT), "a pair"),
        ({}, dict(tasks=lambda k: sinusoid_tasks(k, M=3), mesh=two_devices()), "evenly"),
    ],
)
def test_loop_refuses_bad_task_settings(settings, kwargs, match):
    args = {**dict(tasks=sample, key=KEY, progress=False), **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        loop(**settings).run(MAML_HP, 2, T, **args)


def test_loop_names_the_failing_task():
    def bad(key):
        support, query = sample(key)
        return {**support, "x": support["x"].at[1, 0].set(jnp.nan)}, query

    hp = MAML_HP
    with pytest.raises(hg.HyperDivergenceError, match=r"hyper-iteration 0 \(task 1 of the meta-batch\)"):
        loop().run(hp, 2, 30, tasks=bad, key=KEY, progress=False)


# ----- a tiny Omniglot problem: a hyper-representation on real episodes --------------------------------------------


def tiny_omniglot():
    """Three 5-way 1-shot episodes (2 queries per class) of the packaged Omniglot, images pooled to 7×7 and
    flattened; λ a linear representation 49 → 2 (99 hyperparameters with the lr: within Forward's default limit),
    the inner weights a linear head from zero (hg.linear_head)."""
    from hgkit.datasets import episodes, omniglot, omniglot_split

    data = omniglot()
    train_classes, _ = omniglot_split(data)
    sampler = episodes(data, train_classes, ways=5, shots=1, queries=2, dtype=jnp.float64)
    support, query = sampler.batch(jax.random.key(3), 3)

    def pooled(batch):
        x = batch["x"].reshape(*batch["x"].shape[:-3], 7, 4, 7, 4).mean(axis=(-3, -1))
        return {"x": x.reshape(*x.shape[:-2], 49), "y": batch["y"]}

    def loss(w, hp, b):
        logits = (b["x"] @ hp["repr"]) @ w["w"] + w["b"]
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), b["y"][:, None], axis=1))

    problem = hg.BilevelProblem(init=lambda hp, key: hg.linear_head(2, 5, jnp.float64), train_loss=loss,
                                val_loss=loss, optimizer=hg.optim.sgd("lr"))  # fmt: skip
    hp = {"repr": jax.random.normal(jax.random.key(4), (49, 2), jnp.float64), "lr": jnp.asarray(0.5, jnp.float64)}

    def by_hand(hp, support, query):
        def one(s, q):
            w = hg.linear_head(2, 5, jnp.float64)
            for _ in range(T):
                w = jax.tree.map(lambda a, g: a - hp["lr"] * g, w, jax.grad(loss)(w, hp, s))
            return loss(w, hp, q)

        return jnp.mean(jax.vmap(one)(support, query))

    return problem, hp, pooled(support), pooled(query), by_hand


@pytest.mark.parametrize("name", METHODS)
def test_tiny_omniglot_equals_mean_of_tasks_and_hand_written_grad(name):
    problem, hp, support, query, by_hand = tiny_omniglot()
    value, grads = hg.meta_hypergradient(problem, hp, T, support, query, method=METHODS[name])
    each = [hg.hypergradient(problem, hp, T, task(support, j), task(query, j), method=METHODS[name]) for j in range(3)]
    np.testing.assert_allclose(value, sum(v for v, _ in each) / 3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(flat(grads), sum(flat(g) for _, g in each) / 3, rtol=0, atol=1e-12)
    hand_value, hand_grads = jax.value_and_grad(by_hand)(hp, support, query)
    np.testing.assert_allclose(value, hand_value, rtol=1e-12)
    assert float(jnp.max(jnp.abs(flat(grads) - flat(hand_grads)))) <= 1e-10 * float(jnp.max(jnp.abs(flat(hand_grads))))


def test_readme_block_learns_across_tasks():
    """The README's "Learning across tasks" block, verbatim: the mean query loss falls and the accuracy rises."""
    from helpers import readme_block

    namespace: dict = {}
    exec(compile(readme_block("## Learning across tasks"), "README.md", "exec"), namespace)
    history = namespace["result"].history
    assert len(history) == 60 and history.accuracy.between(0, 1).all()
    first, last = history.iloc[:10], history.iloc[-10:]
    assert last.val_loss.mean() < first.val_loss.mean() - 0.1
    assert last.accuracy.mean() > first.accuracy.mean() + 0.05
    assert np.isfinite(float(namespace["value"])) and jax.tree.structure(namespace["grads"]) == jax.tree.structure(
        namespace["hparams"]
    )
