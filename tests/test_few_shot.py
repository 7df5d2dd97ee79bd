"""The few-shot experiment: ``hgkit reproduce few-shot --smoke`` writes its report with every method and setting;
the scorers against independent NumPy computations (pixel nearest neighbour on Lake's runs, a fixed
representation's episode) and against the inner run that meta-training differentiates (float64)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from hgkit import cli
from hgkit.datasets import episodes, omniglot, omniglot_split
from hgkit.experiments import _few_shot_eval as ev
from hgkit.experiments import _few_shot_models as nets
from hgkit.experiments import few_shot


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("few-shot")
    status = cli.main(["reproduce", "few-shot", "--smoke", "--no-progress", "--out", str(out)])
    return status, out


def test_the_cli_writes_the_report_and_both_figures(smoke):
    status, out = smoke
    assert status == 0
    for name in ("few-shot.md", "few-shot.csv", "few-shot.png", "few-shot-episode.png"):
        assert (out / name).stat().st_size > 0, name
    for png in ("few-shot.png", "few-shot-episode.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "few-shot.md").read_text()
    assert "## Accuracy" in md and "## Published figures" in md and "4.5 %" in md and "3.3 %" in md
    assert "Failures" not in md


def test_the_table_has_every_method_and_setting_with_accuracies_and_intervals(smoke):
    _, out = smoke
    table = pd.read_csv(out / "few-shot.csv")
    assert set(zip(table["method"], table["setting"], strict=True)) == {
        (m, s) for m in few_shot.METHODS for s in few_shot.SETTINGS
    }
    assert table["accuracy"].between(0, 1).all()
    assert (table["ci95"] > 0).all()
    lake = table["setting"] == "Lake 20-way 1-shot"
    assert (table.loc[lake, "episodes"] == 20).all()
    assert (table.loc[~lake, "episodes"] == few_shot.SMOKE.eval_episodes).all()
    meta = table["method"].isin(few_shot.META_LEARNERS)
    assert (table.loc[meta, "train_s"] > 0).all() and (table.loc[meta, "inner_steps"] > 0).all()


def test_pixel_nearest_neighbour_on_lakes_runs_is_numpys(smoke):
    runs = omniglot().runs
    train = runs.train.reshape(20, 20, -1).astype(np.float64) / 255  # (run, class, pixel)
    test = runs.test.reshape(20, 20, -1).astype(np.float64) / 255  # (run, item, pixel)
    distance = ((test[:, :, None, :] - train[:, None, :, :]) ** 2).sum(-1)  # (run, item, class)
    per_run = (distance.argmin(-1) == runs.label).mean(1)
    scored = ev.run_accuracies(ev.pixel_nn_accuracy, None, ev.lake_episodes(runs))
    np.testing.assert_allclose(scored, per_run, atol=1e-7)  # 20 items a run: the same argmin, so the same counts
    _, out = smoke
    table = pd.read_csv(out / "few-shot.csv").set_index(["method", "setting"])
    assert table.loc[("pixel NN", "Lake 20-way 1-shot"), "accuracy"] == pytest.approx(per_run.mean(), abs=1e-7)
    assert per_run.mean() == pytest.approx(0.21)  # the dataset's documented 79.0 % error


def _numpy_embedding(blocks, x):
    """The conv-4 embedding written out in NumPy: 3×3 'SAME' convolution as nine shifted products, instance norm,
    ReLU, 2×2 max-pooling with an odd side padded by zeros."""
    h = x
    for block in blocks:
        w, gamma, beta = (np.asarray(block[k], np.float64) for k in ("w", "gamma", "beta"))
        padded = np.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
        side = h.shape[1]
        h = sum(padded[:, i : i + side, j : j + side, :] @ w[i, j] for i in range(3) for j in range(3))
        mean, var = h.mean(axis=(1, 2), keepdims=True), h.var(axis=(1, 2), keepdims=True)
        h = np.maximum((h - mean) / np.sqrt(var + nets.EPS) * gamma + beta, 0)
        h = np.pad(h, ((0, 0), (0, side % 2), (0, side % 2), (0, 0)))
        h = h.reshape(h.shape[0], h.shape[1] // 2, 2, h.shape[2] // 2, 2, -1).max(axis=(2, 4))
    return h.reshape(h.shape[0], -1)


def test_an_episode_of_a_fixed_representation_is_scored_as_numpy_computes_it():
    data = omniglot()
    _, val = omniglot_split(data)
    episode = episodes(data, val, ways=5, shots=5, queries=3)(jax.random.key(3))
    blocks = nets.conv4_init(jax.random.key(1), filters=6)
    steps, lr, scale = 4, 0.5, 10.0
    scored = ev.representation_accuracy(blocks, episode, ways=5, steps=steps, head_lr=lr, scale=scale)

    def feats(x):
        phi = _numpy_embedding(blocks, np.asarray(x, np.float64))
        return scale * phi / np.linalg.norm(phi, axis=1, keepdims=True)

    fs, fq = feats(episode.support["x"]), feats(episode.query["x"])
    ys, yq = np.asarray(episode.support["y"]), np.asarray(episode.query["y"])
    W, b, Y = np.zeros((fs.shape[1], 5)), np.zeros(5), np.eye(5)[ys]
    for _ in range(steps):  # gradient descent on the mean cross-entropy: ∇_W = Fᵀ(P − Y)/n, ∇_b = mean(P − Y)
        z = fs @ W + b
        P = np.exp(z - z.max(1, keepdims=True))
        P /= P.sum(1, keepdims=True)
        W, b = W - lr * fs.T @ (P - Y) / len(ys), b - lr * (P - Y).mean(0)
    expected = np.mean((fq @ W + b).argmax(1) == yq)
    assert float(scored) == pytest.approx(expected, abs=1e-7)
    assert 0 < expected < 1  # a random embedding gets some right and some wrong: the comparison is not vacuous


def test_a_representation_is_scored_by_the_inner_run_it_was_meta_trained_through():
    """The scorer fits the head on features computed once (head_problem); meta-training runs the one-task problem,
    which computes them at every step: the same T steps of gradient descent, so the same head (float64)."""
    data = omniglot()
    train, _ = omniglot_split(data)
    episode = episodes(data, train, ways=5, shots=2, queries=2, dtype=jnp.float64)(jax.random.key(0))
    blocks = nets.conv4_init(jax.random.key(2), 3, blocks=2, dtype=jnp.float64)
    f = {k: nets.features(blocks, getattr(episode, k)["x"], 10.0) for k in ("support", "query")}
    scored = nets.adapt(nets.head_problem(ways=5, head_lr=0.5), f, episode.support["y"], 3)
    trained = nets.adapt(nets.hyper_representation_problem(ways=5, head_lr=0.5, scale=10.0), blocks, episode.support, 3)
    for a, b in zip(jax.tree_util.tree_leaves(scored), jax.tree_util.tree_leaves(trained), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)  # two convolution routines, float64 rounding


def test_the_two_convolutions_agree():
    h = jax.random.normal(jax.random.key(0), (3, 7, 7, 4))
    w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
    np.testing.assert_allclose(nets.conv3x3_matmul(h, w), nets.conv3x3(h, w), rtol=1e-10, atol=1e-12)


def test_mamls_20_way_start_is_its_head_averaged_over_classes():
    theta = nets.network_init(jax.random.key(0), filters=4, ways=5, blocks=1)
    x = jax.random.uniform(jax.random.key(1), (6, 28, 28, 1), dtype=jnp.float32)
    y = jnp.arange(6) % 5
    averaged = {
        **theta,
        "head": jax.tree_util.tree_map(lambda a: jnp.broadcast_to(a.mean(-1, keepdims=True), a.shape), theta["head"]),
    }
    zero = nets.with_zero_head(theta, 5)
    loss = nets.network_loss(10.0)
    g_avg, g_zero = jax.grad(loss)(averaged, None, {"x": x, "y": y}), jax.grad(loss)(zero, None, {"x": x, "y": y})
    for a, b in zip(jax.tree_util.tree_leaves(g_avg), jax.tree_util.tree_leaves(g_zero), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # equal columns: the same softmax, the same gradients


def test_config_refuses_what_the_data_cannot_give():
    with pytest.raises(ValueError, match="Config.eval_queries must be at most 15"):
        few_shot.Config(eval_queries=16)
    with pytest.raises(ValueError, match="Config.imaml_reg must be a positive number"):
        few_shot.Config(imaml_reg=0.0)
