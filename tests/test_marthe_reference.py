"""``hg.RealTime(delta=1, discount=μ)`` in the loop against a transcription of MARTHE's reference code.

The reference is the authors' TensorFlow code, ``lucfra/Marthe-TF``, ``marthe/marthe_alg.py`` (``Marthe``), as its
MNIST and TIMIT comparisons (``marthe/mnist_comparison.py``, ``marthe/timit_main.py``) call it: one ``Marthe.run``
per inner step. :func:`marthe_reference` below writes that step out in JAX, float64 (tests/conftest.py), without
hgkit. With ``δ`` clipped to ``[−clip, clip]`` and counted (``clip_and_count``, l. 23–40 and 150), step t is:

1. with the adaptive hyper-learning rate (``Marthe(beta=α)``), ``β_t = max(β_{t−1} + α δ_{t−1} δ_{t−2}, 0)``
   from ``β = 1e-8`` (l. 84–85, 191–198); else β is the constant step of the outer ``GradientDescentOptimizer``;
2. ``δ_t = clip(∇E(w_t)·Z_t)`` with the tangent carried from the step before (``Z_0 = 0``, so ``δ_0 = 0``), and
   ``η ← max(η − β_t δ_t, 0)`` (``_apply_hg``, l. 158–161; η ≥ 0 is ``get_positive_hyperparameter``'s
   constraint, applied by the TF optimizer after its update, marthe/utils.py l. 124–128);
3. ``Z_{t+1} = μ_t A_t Z_t + B_t`` at ``(w_t, η)``, η the new value (``Z_{t+1} = B_t`` when μ = 0; l. 136–148);
4. ``w_{t+1} = Φ_t(w_t, η)``, the training step (``opt_dict.iteration``);
5. with ``mu="adapt"`` (l. 209–219): ``z = clip(δ_t / (∇E(w_{t+1})·B_t), 0, 1)``, ``c ← (c + 1)·μ_t``,
   ``μ_{t+1} = z^(1/(c+1))``, from μ_0 = 0 and c = 0. The δ in z is step 2's: taken before the step, clipped.

That is the order the comment of ``Marthe.run`` states (l. 182–187). The TF graph itself does not enforce it:
``tf.control_dependencies`` orders only the state reads made inside it, not the η update, the tangent update and
the training step (all three made before), which read each other's variables.

The inner optimizer here is plain SGD, ``Φ_t(w, η) = w − η ∇L_t(w)``. The reference pushes the tangent with
``∇_w ⟨Φ_t, Z⟩ = A_tᵀ Z`` (l. 136), which is ``A_t Z`` only when ``A_t = I − η ∇²L_t`` is symmetric, as with SGD;
with heavy-ball momentum (the authors' experiments) the state ``(w, v)`` has a non-symmetric Jacobian, and hgkit's
JVP computes the ``A_t Z`` of the paper's recurrence.

**Alignment with hgkit's loop.** With Δ = 1, hyper-iteration k runs inner step k under ``λ_k`` (the history's
``lr`` row k), reads out the hypergradient ``g_{k+1} = ∇E(w_{k+1})·Z_{k+1}`` at the end of the chunk, and the
optax chain and the projection make ``λ_{k+1}`` from it. The reference's δ_{k+1} is the same number, read at the
start of step k + 1: "η first" is the previous hyper-iteration's update. So the η the reference's step t trains
with is ``λ_t`` (for t = 0, ``δ_0 = 0`` leaves ``η = λ_0``), its adaptive β is ``adaptive_sgd``'s (whose first
update sees no previous δ, as the reference's δ_1 δ_0 = 0), and MARTHE's μ after step k uses the hypergradient
read out after hyper-iteration k − 1 (0 before the first), clipped by ``RealTime(clip=...)`` as the outer chain's
``optax.clip`` clips the update. The validation set is one fixed batch, as ``val_data`` is in hgkit's loop (the
authors draw a validation minibatch per step, used both for δ_t and for ∇E(w_{t+1}) in z).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hgkit as hg

D, K, N, NV, T = 4, 3, 8, 24, 50  # features, classes, training batch, validation set, inner steps
_rng = np.random.default_rng(0)
_W_TRUE = _rng.normal(size=(D, K))
# Inputs of scale 2: hypergradients of order 1, so that CLIP bites on several steps.
X = jnp.asarray(2.0 * _rng.normal(size=(T, N, D)))
Y = jnp.asarray(np.argmax(np.asarray(X) @ _W_TRUE + _rng.gumbel(size=(T, N, K)), -1))
_X_VAL = 2.0 * _rng.normal(size=(NV, D))
VAL = (jnp.asarray(_X_VAL), jnp.asarray(np.argmax(_X_VAL @ _W_TRUE + _rng.gumbel(size=(NV, K)), -1)))
W0 = jnp.asarray(0.1 * _rng.normal(size=(D, K)))

ETA0 = 0.05
CLIP = 0.5  # the reference's clip_value (100 on MNIST); smaller for these hypergradients, so that it bites
BETA = 0.02  # the constant hyper-learning rate
ALPHA = 0.1  # the adaptive one's α, from the reference's β = 1e-8
BETA_START = 1e-8  # Marthe.__init__: self.beta_val = 1.e-8 (l. 85)
TOL = 1e-12


def cross_entropy(w, batch):
    x, y = batch
    logits = x @ w
    return jnp.mean(jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, y[:, None], -1)[:, 0])


def train_batch(t):
    """A different training minibatch at every step."""
    return X[t], Y[t]


# ----- the reference, transcribed ----------------------------------------------------------------------------------


@jax.jit
def _val_grad(w):
    return jax.grad(cross_entropy)(w, VAL)


@jax.jit
def _training_step(w, eta, Z, t):
    """Φ_t(w, η) = w − η ∇L_t(w), with A_t Z (a JVP in w) and B_t = ∂Φ_t/∂η (a JVP in η)."""

    def phi(w, eta):
        return w - eta * jax.grad(cross_entropy)(w, train_batch(t))

    new_w, AZ = jax.jvp(lambda v: phi(v, eta), (w,), (Z,))
    _, B = jax.jvp(lambda e: phi(w, e), (eta,), (jnp.ones_like(eta),))
    return new_w, AZ, B


class Transcript(NamedTuple):
    etas: np.ndarray  # (T,): the η each step trains with
    w: jax.Array  # w_T
    clips: int  # the steps whose δ was clipped (hg_clip_counter counts each twice with "adapt" or an adaptive β:
    # Marthe.run evaluates the clipped δ in two session runs, l. 201 and 205)
    mus: np.ndarray  # (T,): the μ each step's tangent update used
    betas: np.ndarray  # (T,): the β each step's η update used


def marthe_reference(mu, alpha, clip=CLIP) -> Transcript:
    """``Marthe.run`` T times, as the module docstring lists it; ``alpha=None`` keeps β = BETA (``Marthe(
    GradientDescentOptimizer(BETA), mu=mu)``), else β starts at 1e-8 (``Marthe(beta=alpha, mu=mu)``). ``mu`` is
    a float or ``"adapt"``; ``clip`` the reference's ``clip_value`` (None: no clip)."""
    adapt = mu == "adapt"
    w, Z, eta = W0, jnp.zeros_like(W0), ETA0
    mu_val, c = (0.0 if adapt else mu), 0.0  # l. 75, 82
    beta = BETA if alpha is None else BETA_START
    delta, prev_delta = 0.0, 0.0  # l. 85, 95
    etas, mus, betas, clips = [], [], [], 0
    for t in range(T):
        if alpha is not None:  # l. 191-198: β from the two previous (clipped) hypergradients
            beta = max(beta + alpha * (delta * prev_delta), 0.0)
            prev_delta = delta
        hg_raw = float(jnp.vdot(_val_grad(w), Z))  # ∇E(w_t)·Z_t, l. 150
        delta = hg_raw if clip is None else float(np.clip(hg_raw, -clip, clip))
        clips += delta != hg_raw
        eta = max(eta - beta * delta, 0.0)  # _apply_hg, then the positive constraint
        w_next, AZ, B = _training_step(w, jnp.asarray(eta), Z, t)  # at the new η
        Z = mu_val * AZ + B if (adapt or mu_val > 0) else B  # l. 143-148
        etas.append(eta)
        mus.append(mu_val)
        betas.append(beta)
        w = w_next
        if adapt:  # l. 209-219
            first_order = float(jnp.vdot(_val_grad(w), B))  # ∇E(w_{t+1})·B_t
            z = np.maximum(np.minimum(delta / first_order, 1.0), 0)
            c = (c + 1) * mu_val
            mu_val = np.power(z, 1.0 / (c + 1.0))
    return Transcript(np.array(etas), w, clips, np.array(mus), np.array(betas))


# ----- hgkit ---------------------------------------------------------------------------------------------------------

PROBLEM = hg.BilevelProblem(
    init=lambda hp, key: W0,
    train_loss=lambda w, hp, batch: cross_entropy(w, batch),
    val_loss=lambda w, hp, batch: cross_entropy(w, batch),
    optimizer=hg.optim.sgd("lr"),
)


def hgkit_run(mu, alpha, rule_clip=CLIP):
    """hgkit's RealTime in its loop, with the reference's clip, β and η ≥ 0 (``rule_clip``: RealTime's clip)."""
    method = hg.RealTime(delta=1, discount=mu, clip=rule_clip) if mu == "adapt" else hg.RealTime(delta=1, discount=mu)
    beta, alpha = (BETA, 0.0) if alpha is None else (BETA_START, alpha)  # α = 0: SGD with step β
    tx = optax.chain(optax.clip(CLIP), hg.schedules.adaptive_sgd(beta, alpha))
    opt = hg.HyperOptimizer(
        PROBLEM, method=method, hyper_optimizer=tx, constraints={"lr": hg.constraints.positive(0.0)}
    )
    return opt.run({"lr": jnp.asarray(ETA0)}, T=T, train_data=train_batch, val_data=VAL, progress=False)


MUS = (0.0, 0.5, 1.0, "adapt")
ALPHAS = (None, ALPHA)  # the constant β, MARTHE's adaptive β


@functools.cache
def transcript(mu, alpha, clip=CLIP) -> Transcript:
    return marthe_reference(mu, alpha, clip)


@pytest.mark.parametrize("alpha", ALPHAS, ids=["fixed-beta", "adaptive-beta"])
@pytest.mark.parametrize("mu", MUS)
def test_realtime_follows_the_reference_learning_rates(mu, alpha):
    """Every inner step's η, and the final weights, to 1e-12."""
    ref = transcript(mu, alpha)
    result = hgkit_run(mu, alpha)
    assert len(result.history) == T  # Δ = 1: one row per inner step
    np.testing.assert_allclose(result.history["lr"], ref.etas, rtol=TOL, atol=TOL)
    np.testing.assert_allclose(result.state.params, ref.w, rtol=TOL, atol=TOL)


def test_the_settings_exercise_every_rule():
    """The comparison above is sensitive to each piece: the clip bites, μ leaves {0, 1}, β moves, and without the
    clip, in η's update or in MARTHE's rule for μ, the learning rates differ far beyond the tolerance."""
    runs = {(mu, alpha): transcript(mu, alpha) for mu in MUS for alpha in ALPHAS}
    clipped = {key: run.clips for key, run in runs.items()}
    assert all(clips > 0 for clips in clipped.values()), clipped
    for alpha in ALPHAS:
        mus = runs[("adapt", alpha)].mus
        assert mus[0] == 0 and np.any((mus > 0) & (mus < 1)), mus
    assert len(set(runs[("adapt", ALPHA)].betas)) > T // 2
    for key in (("adapt", None), ("adapt", ALPHA), (1.0, None)):
        unclipped = transcript(*key, clip=None)
        assert np.max(np.abs(unclipped.etas - runs[key].etas)) > 1e6 * TOL, key
    # hgkit without RealTime(clip=...): at step 1, |δ_1| > CLIP and |b_1| > CLIP, so z and μ_2 change. (With the
    # constant β the difference happens to wash out: later δ are clipped alike and μ = 0 at step 8 resets Z and c.)
    unclipped_rule = hgkit_run("adapt", ALPHA, rule_clip=None)
    assert np.max(np.abs(unclipped_rule.history["lr"] - runs[("adapt", ALPHA)].etas)) > 1e6 * TOL
