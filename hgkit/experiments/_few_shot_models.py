"""The few-shot experiment's networks and inner problems: a conv-4 embedding, linear heads fitted by gradient descent
on its L2-normalised features, and the bilevel problems of the hyper-representation, MAML and iMAML.

The embedding (Vinyals et al. 2016, as in Franceschi et al. 2018 and MAML) is four blocks of

    conv 3×3 (no bias) → instance norm (per image and channel over its pixels, then a learned scale γ and shift β)
    → ReLU → max-pool 2×2 (28 → 14 → 7 → 4 → 2)

so with F filters an image becomes ``2·2·F`` features φ(x) (128 at F = 32). Instance norm uses no statistics
across images, so an episode's support and query sets, and the tasks of a meta-batch, do not see each other.

A representation reads an image as ``s · φ(x)/‖φ(x)‖`` (a fixed scale s, the temperature of the cosine-like logits)
and a task's linear head is fitted by T steps of gradient descent from zero on the support cross-entropy
(:func:`head_problem`, run by :func:`adapt`),

    (W_0, b_0) = (0, 0),   (W_{t+1}, b_{t+1}) = (W_t, b_t) − η ∇ CE(F_s W_t + b_t, y_s),

the inner problem the hyper-representation is meta-trained through, so a representation is evaluated exactly as it
is trained. MAML and iMAML adapt the whole network (:func:`maml_problem`, :func:`imaml_problem`).

Example:
    >>> import jax, jax.numpy as jnp
    >>> blocks = conv4_init(jax.random.key(0), filters=8)
    >>> x = jax.random.uniform(jax.random.key(1), (3, 28, 28, 1))
    >>> embed(blocks, x).shape, feature_size(blocks)  # 2·2·8 features
    ((3, 32), 32)
    >>> [round(float(n), 4) for n in jnp.linalg.norm(features(blocks, x, scale=10.0), axis=1)]
    [10.0, 10.0, 10.0]

    One step from zero on one example per class scores class c by ``η/n · Σ_i (1[y_i = c] − 1/ways) f_i·f``, a
    prototype classifier (the bias moves by η/n · Σ_i (1[y_i = c] − 1/ways) = 0 here):

    >>> f = {"support": jnp.eye(3, dtype=jnp.float32), "query": jnp.eye(3, dtype=jnp.float32)}
    >>> head = adapt(head_problem(ways=3, head_lr=3.0), f, jnp.arange(3), steps=1)
    >>> [round(float(v), 3) for v in head_logits(head, f["query"])[0]]  # η/n = 1: 1 − 1/3 own class, −1/3 others
    [0.667, -0.333, -0.333]
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from .. import optim
from ..hypergrad import linear_head
from ..problem import BilevelProblem, initial_state, unroll
from ._models import accuracy, cross_entropy

BLOCKS = 4
EPS = 1e-5  # instance norm's variance floor


def conv4_init(key, filters: int, blocks: int = BLOCKS, channels: int = 1, dtype=jnp.float32) -> list[dict]:
    """The embedding's weights: per block ``{"w": (3, 3, in, filters) He-normal, "gamma": ones, "beta": zeros}``
    (no conv bias: instance norm removes it)."""
    out = []
    for k in jax.random.split(key, blocks):
        w = jax.random.normal(k, (3, 3, channels, filters), dtype) * jnp.sqrt(2.0 / (9 * channels)).astype(dtype)
        out.append({"w": w, "gamma": jnp.ones((filters,), dtype), "beta": jnp.zeros((filters,), dtype)})
        channels = filters
    return out


def instance_norm(h, gamma, beta):
    """Each image's channels normalised over their pixels (mean 0, variance 1), then ``γ·h + β``: (n, H, W, C)."""
    mean = jnp.mean(h, axis=(1, 2), keepdims=True)
    var = jnp.mean((h - mean) ** 2, axis=(1, 2), keepdims=True)
    return (h - mean) * lax.rsqrt(var + EPS) * gamma + beta


def max_pool(h):
    """2×2 max-pooling with stride 2 of a non-negative (n, H, W, C) (it follows a ReLU); an odd side is padded with
    zeros, which for non-negative inputs is "SAME" padding (7 → 4).

    The elementwise maximum of the four strided corners, rather than ``lax.reduce_window`` (whose gradient,
    select-and-scatter, is slow on CPU) or a reshape and ``max`` (whose derivative divides by the count of entries
    equal to the maximum: where the compiler recomputes the input in two fusions that round differently, that count
    is 0 and second derivatives are NaN)."""
    h = jnp.pad(h, ((0, 0), (0, h.shape[1] % 2), (0, h.shape[2] % 2), (0, 0)))
    top = jnp.maximum(h[:, 0::2, 0::2], h[:, 0::2, 1::2])
    return jnp.maximum(top, jnp.maximum(h[:, 1::2, 0::2], h[:, 1::2, 1::2]))


def conv3x3(h, w):
    """3×3 convolution with "SAME" padding of (n, H, W, C) by (3, 3, C, F): ``lax.conv_general_dilated``."""
    return lax.conv_general_dilated(h, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def conv3x3_matmul(h, w):
    """The same convolution as :func:`conv3x3`, as one matrix product of the nine shifted copies of ``h``.

    For weights that differ per task (MAML and iMAML adapt the whole network, and their tasks are vmapped), XLA
    turns a vmapped ``lax`` convolution into a grouped one, about twice as slow on CPU as this batched matrix
    product; for one set of weights over a large batch the ``lax`` convolution is the faster."""
    n, height, width, channels = h.shape
    padded = jnp.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
    shifted = [padded[:, i : i + height, j : j + width, :] for i in range(3) for j in range(3)]
    return jnp.concatenate(shifted, axis=-1) @ w.reshape(9 * channels, -1)


def embed(blocks: list[dict], x, conv=conv3x3):
    """φ(x): the conv-4 embedding of images ``x`` (n, 28, 28, 1), flattened to (n, 2·2·filters), in the weights'
    dtype; ``conv`` is :func:`conv3x3` or :func:`conv3x3_matmul` (the same function, computed differently)."""
    h = x.astype(blocks[0]["w"].dtype)
    for block in blocks:
        h = max_pool(jax.nn.relu(instance_norm(conv(h, block["w"]), block["gamma"], block["beta"])))
    return h.reshape(h.shape[0], -1)


def feature_size(blocks: list[dict], side: int = 28) -> int:
    """How many features :func:`embed` gives a ``side``×``side`` image: each block halves the side (rounding up), so
    four blocks leave 2·2 cells of the last block's filters."""
    for _ in blocks:
        side = (side + 1) // 2
    return side * side * blocks[-1]["w"].shape[-1]


def normalised(f):
    """Rows of ``f`` scaled to unit L2 norm (the epsilon inside the square root keeps a zero row's derivative
    finite)."""
    return f * lax.rsqrt(jnp.sum(f**2, axis=-1, keepdims=True) + 1e-12)


def features(blocks: list[dict], x, scale: float, conv=conv3x3):
    """``s · φ(x)/‖φ(x)‖``: what a representation makes of images ``x`` (n, 28, 28, 1), (n, d)."""
    return scale * normalised(embed(blocks, x, conv))


def head_logits(head: dict, f):
    """``f W + b`` for a head ``{"w", "b"}`` (:func:`hgkit.linear_head`)."""
    return f @ head["w"] + head["b"]


def adapt(problem: BilevelProblem, hparams, support, steps: int):
    """A task's weights after ``steps`` inner steps of ``problem`` on its ``support`` data from ``init(hparams)``:
    plain training (:func:`hgkit.unroll`), the map that meta-training differentiates through."""
    return unroll(problem, initial_state(problem, hparams, None), hparams, support, 0, steps).state.params


def head_problem(*, ways: int, head_lr: float) -> BilevelProblem:
    """One task's inner problem with its features as the hyperparameters: ``hparams = {"support": F_s (n, d),
    "query": F_q (q, d)}``, the data the labels (``train_data = y_s``, ``val_data = y_q``); a linear head from zero
    trained by gradient descent at ``head_lr`` on the support cross-entropy, judged by the query cross-entropy.

    The hyper-representation's inner problem (:func:`hyper_representation_problem`) on features computed once:
    how a representation is scored."""

    def train_loss(head, f, y):
        return cross_entropy(head_logits(head, f["support"]), y)

    def val_loss(head, f, y):
        return cross_entropy(head_logits(head, f["query"]), y)

    return BilevelProblem(
        init=lambda f, key: linear_head(f["support"].shape[-1], ways, f["support"].dtype),
        train_loss=train_loss,
        val_loss=val_loss,
        optimizer=optim.sgd(head_lr),
    )


def hyper_representation_problem(*, ways: int, head_lr: float, scale: float) -> BilevelProblem:
    """Franceschi et al. (2018)'s hyper-representation as the bilevel problem of one task: ``hparams`` the
    embedding's blocks (:func:`conv4_init`), data ``{"x", "y"}`` (support and query), a linear head from zero
    (:func:`hgkit.linear_head`) trained by gradient descent at ``head_lr`` on the support cross-entropy of
    :func:`features` at ``scale``; the outer loss is the query cross-entropy.

    The same inner map as :func:`head_problem` on the task's features, which the scorers use (they compute the
    features once; here each inner step computes the support's again, as the loop's ``lax.scan`` asks).
    Convolutions by :func:`conv3x3_matmul`: inside the vmapped, scanned hypergradient it was 5× faster on CPU than
    ``lax``'s (0.14 s against 0.75 s per hyper-iteration of 8 tasks, 2 CPU cores)."""

    def loss(head, blocks, batch):
        return cross_entropy(head_logits(head, features(blocks, batch["x"], scale, conv3x3_matmul)), batch["y"])

    return BilevelProblem(
        init=lambda blocks, key: linear_head(feature_size(blocks), ways, blocks[0]["w"].dtype),
        train_loss=loss,
        val_loss=loss,
        optimizer=optim.sgd(head_lr),
    )


def head_accuracy(scale: float):
    """``(head, blocks, {"x", "y"}) -> ``the head's accuracy on the features at ``scale`` (a loop metric)."""
    return lambda head, blocks, batch: accuracy(
        head_logits(head, features(blocks, batch["x"], scale, conv3x3_matmul)), batch["y"]
    )


def network_init(key, filters: int, ways: int, blocks: int = BLOCKS, dtype=jnp.float32) -> dict:
    """MAML's θ at the start of meta-training: the conv-4 embedding (:func:`conv4_init`) and a linear output layer
    on its features at zero, ``{"embed": blocks, "head": linear_head(d, ways)}``.

    A zero output layer, as the hyper-representation's head, makes the first inner step depend on the embedding
    alone (a random one starts every task from the same arbitrary preferences, which a few small inner steps do not
    undo), and it keeps the cross-entropy's Hessian at θ far less indefinite: on a 1-shot episode its eigenvalues
    lay in [−13, 18] at zero, in [−76, 76] with a N(0, 1/d) layer (32 filters, scale 10)."""
    embedding = conv4_init(key, filters, blocks, dtype=dtype)
    return {"embed": embedding, "head": linear_head(feature_size(embedding), ways, dtype)}


def network_logits(w: dict, x, scale: float):
    """The whole network's logits: the output layer on the :func:`features` of ``x`` at ``scale`` (convolutions by
    :func:`conv3x3_matmul`: the network's weights differ per task)."""
    return head_logits(w["head"], features(w["embed"], x, scale, conv3x3_matmul))


def network_loss(scale: float):
    """``(w, hparams, {"x", "y"}) -> ``the whole network's cross-entropy (``hparams`` unused): MAML's inner and
    outer loss."""
    return lambda w, hparams, batch: cross_entropy(network_logits(w, batch["x"], scale), batch["y"])


def network_accuracy(scale: float):
    """``(w, hparams, {"x", "y"}) -> ``the whole network's accuracy (a loop metric: ``fn(params, hparams, query)``)."""
    return lambda w, hparams, batch: accuracy(network_logits(w, batch["x"], scale), batch["y"])


def maml_problem(*, inner_lr: float, scale: float) -> BilevelProblem:
    """MAML (Finn et al. 2017): every task starts from ``θ = hparams["theta"]`` (:func:`network_init`) and takes
    gradient steps at ``inner_lr`` on its support cross-entropy; the outer loss is the query cross-entropy."""
    loss = network_loss(scale)
    return BilevelProblem(
        init=lambda hp, key: hp["theta"], train_loss=loss, val_loss=loss, optimizer=optim.sgd(inner_lr)
    )


def proximal_loss(w, hparams, batch, *, reg: float, scale: float):
    """iMAML's inner loss: ``CE(w; support) + (reg/2)·‖w − θ‖²`` with ``θ = hparams["theta"]``."""
    gap = jax.tree_util.tree_map(lambda a, b: jnp.sum((a - b) ** 2), w, hparams["theta"])
    return network_loss(scale)(w, hparams, batch) + 0.5 * reg * sum(jax.tree_util.tree_leaves(gap))


def imaml_problem(*, inner_lr: float, reg: float, scale: float) -> BilevelProblem:
    """iMAML (Rajeswaran et al. 2019): each task starts from θ and descends :func:`proximal_loss`; at its minimiser
    ``w*(θ)``, ``dw*/dθ = reg·(∇²CE + reg·I)⁻¹``, which :class:`hgkit.Implicit` applies by conjugate gradients."""

    def train_loss(w, hparams, batch):
        return proximal_loss(w, hparams, batch, reg=reg, scale=scale)

    return BilevelProblem(
        init=lambda hp, key: hp["theta"],
        train_loss=train_loss,
        val_loss=network_loss(scale),
        optimizer=optim.sgd(inner_lr),
    )


def with_zero_head(theta: dict, ways: int) -> dict:
    """θ with its output layer replaced by a ``ways``-way one at zero: how MAML's 5-way initialisation starts a
    20-way task. A head whose columns are all equal gives the same softmax and the same gradients as zero, so this
    is θ's own head averaged over its classes."""
    return {"embed": theta["embed"], "head": linear_head(feature_size(theta["embed"]), ways, theta["head"]["w"].dtype)}
