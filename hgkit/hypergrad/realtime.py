"""Real-time hyperparameter optimization (RTHO; Franceschi et al., 2017, §3.3): forward mode without restarting,
and its discounted variants, hypergradient descent and MARTHE.

One training run is split into chunks of Δ steps. The tangents ``Z_t = ds_t/dλ`` and the weights are carried
across chunks and never reset; after each chunk the hypergradient of the validation objective at the current
weights, ``∂E/∂s_t Z_t + ∂E/∂λ``, is available, and the outer loop may change λ before the next chunk. ``Z`` then
mixes derivatives taken at the successive values of λ: the approximation RTHO makes (exact while λ is fixed, so
with Δ = T it equals :class:`~hgkit.hypergrad.forward.Forward`).

**The discounted family** (Donini, Franceschi, Pontil, Majumder, Frasconi, "MARTHE: Scheduling the Learning Rate via
Online Hypergradients", IJCAI 2020). RTHO's tangent remembers every step since the start, so on a long run old steps
dominate its hypergradient. A discount μ ∈ [0, 1] on the tangent's past,

    Z_t = μ A_t Z_{t-1} + B_t,        A_t = ∂Φ_t/∂s_{t-1},  B_t = ∂Φ_t/∂λ,

interpolates between RTHO (μ = 1, the default, bit for bit the undiscounted engine) and a method that looks one
step back only (μ = 0: ``Z_t = B_t``; with Δ = 1 this is hypergradient descent, Baydin et al., ICLR 2018, when the
outer objective is the training loss on the next batch; with a validation objective it is the variant MARTHE's
authors compare with). ``discount="adapt"`` is MARTHE's online rule for μ (below). For μ < 1 the read-out
``∂E/∂s_t Z_t + ∂E/∂λ`` is the exact derivative of the *discounted* recurrence, which is a heuristic, not the
hypergradient of anything: finite differences of the validation loss do not check it (the tests check it against
the discounted recurrence written out with explicit Jacobians).

**MARTHE's rule for μ**, as the authors' code computes it for one scalar hyperparameter, the learning rate
(``lucfra/Marthe-TF`` at 86a2081, ``marthe/marthe_alg.py``, ``Marthe.run``, l. 189–219). Chunk t runs under μ_t;
after it::

    δ_t = clip(∇E(w_t)·Z_t, −clip, clip)     the hypergradient λ was updated with before chunk t (δ_0 = 0)
    b_t = ∇E(w_{t+1})·B_t                    ∇E after the chunk, B_t of its last step
    z = clip(δ_t / b_t, 0, 1)  (0 where b_t = 0),    c ← (c + 1)·μ_t,    μ_{t+1} = z^(1/(c+1)),

from μ_0 = 0 and c = 0. So the first two chunks run with μ = 0, and μ grows towards 1 while the hypergradient that
moved λ agrees in sign with the one-step one, b_t, and falls when they disagree. With Δ = 1 this is the reference's
step: η is updated with δ_t first, then the tangent and the weights, then μ from that same δ_t, read before the step
and clipped (``clip_and_count``; the authors' ``clip_value`` is 100), over ``∇E(w_{t+1})·B_t``
(tests/test_marthe_reference.py checks a transcription to 1e-12). It is not the hypergradient read out after chunk
t, ``∇E(w_{t+1})·Z_{t+1}`` (which equals b_t when μ_t = 0).

The clip is ``RealTime(clip=...)``: give it the bound of the outer loop's ``optax.clip``, which clips the update of
λ. The hypergradient RealTime returns is never clipped, so that the loop's guard sees it as it is. ``b_t`` costs
one more JVP in λ alone (no Hessian-vector product) at the chunk's last step; ``∇E`` is the read-out's. (The
authors' other public code, awslabs/adatune, writes ``c ← c·sign(μ) + μ`` and divides the learning rate by
``∇E·∇L``; this module follows Marthe-TF.)

**Several hyperparameters**: per direction. Every scalar component j of λ has its own column ``Z_j`` and its own
discount ``μ_j`` (and count ``c_j``): ``Z_j,t = μ_j A_t Z_j,t-1 + B_j,t``, which is the recurrence above with the
diagonal discount ``diag(μ)``; with ``"adapt"``, ``δ_j`` is component j of the hypergradient of the objective that
hyperparameter follows (``problem.follows``), read out after the chunk before, and ``b_j`` is ``∇E·B_j`` for that
objective. For one scalar hyperparameter this is the authors' rule exactly.

MARTHE's adaptive hyper-learning rate is an optax transformation for the outer loop:
:func:`hgkit.schedules.adaptive_sgd`.

Example:
    >>> import jax.numpy as jnp, hgkit as hg
    >>> problem = hg.BilevelProblem(
    ...     init=lambda hp, key: jnp.zeros(2),
    ...     train_loss=lambda w, hp, b: jnp.sum((w - b) ** 2),
    ...     val_loss=lambda w, hp, b: jnp.sum((w - 2 * b) ** 2),
    ...     optimizer=hg.optim.sgd("lr"))
    >>> hp = {"lr": jnp.asarray(0.1)}
    >>> rt = hg.RealTime(delta=5)
    >>> carry = rt.init(problem, hp)
    >>> carry, result = rt.step(problem, carry, hp, train_data=jnp.ones(2), val_data=jnp.ones(2))
    >>> int(carry.forward.step), result.train_losses.shape
    (5, (5,))
    >>> marthe = hg.RealTime(delta=1, discount="adapt", clip=10.0)
    >>> marthe.label
    'MARTHE (Δ = 1)'
    >>> carry = marthe.init(problem, hp)
    >>> carry, _ = marthe.step(problem, carry, hp, train_data=jnp.ones(2), val_data=jnp.ones(2))
    >>> carry.discount.tolist()   # δ_0 = 0: z = 0, μ = 0
    [0.0]
    >>> carry, _ = marthe.step(problem, carry, hp, train_data=jnp.ones(2), val_data=jnp.ones(2))
    >>> round(float(carry.discount[0]), 6)   # δ_1 = −14.4 clipped to −10, b_1 = −10.496: μ = z = 10 / 10.496
    0.952744
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import require_number, require_positive_int
from .._tree import PyTree, path_names, tree_size
from ..problem import BilevelProblem, TrainState, batch_at, objective_index
from ._inputs import check_inputs
from .base import HypergradientResult, OnlineMethod, result
from .forward import (
    DEFAULT_MAX_DIRECTIONS,
    TangentState,
    advance,
    check_directions,
    directions,
    finish,
    init_tangents,
    read_out,
    tangent_step,
    through_weights,
)

ADAPT = "adapt"


@dataclasses.dataclass(frozen=True)
class HparamsLayout:
    """The names, shapes and structure of the hyperparameters a carry was made for: static, a pytree node without
    children, so jit, vmap, scan and checkpoints carry no array for it."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    treedef: Any

    @classmethod
    def of(cls, hparams: PyTree) -> HparamsLayout:
        leaves, treedef = jax.tree_util.tree_flatten(hparams)
        return cls(tuple(path_names(hparams)), tuple(np.shape(x) for x in leaves), treedef)

    def difference(self, given: HparamsLayout) -> str:
        """How ``given`` (step's) differs from these (init's), in words."""
        if self.names != given.names:
            return f"init was given {', '.join(self.names)}; step got {', '.join(given.names)}"
        pairs = zip(self.names, self.shapes, given.shapes, strict=True)
        shapes = [f"{name} has shape {a} at init, {b} at step" for name, a, b in pairs if a != b]
        return "; ".join(shapes) or f"init was given the structure {self.treedef}; step got {given.treedef}"


jax.tree_util.register_pytree_node(HparamsLayout, lambda layout: ((), layout), lambda layout, _: layout)


class RealTimeState(NamedTuple):
    """What a real-time run carries from chunk to chunk: forward mode's carry, the discount per direction, and
    (static) which hyperparameters it was made for."""

    forward: TangentState  # s_t, Z_t, the inner steps done so far, and where they diverged
    discount: jax.Array  # (m,): μ of each direction, used by every step of the next chunk
    count: jax.Array  # (m,): MARTHE's c of each direction (zeros unless discount="adapt")
    previous: jax.Array  # (m,): "adapt": the hypergradient read out after the last chunk, δ of the next update of μ
    hparams_layout: HparamsLayout  # the names and shapes of init's hyperparameters: step must get the same


def adapt_discount(discount, count, hypergradient, b):
    """MARTHE's update of μ and c, per direction (arrays of shape (m,)): ``z = clip(δ / b, 0, 1)`` (0 where
    ``b = 0``), ``c ← (c + 1)·μ``, ``μ ← z^(1/(c+1))``, with δ the (clipped) hypergradient applied before the
    chunk and b the chunk's ``∇E·B``. Returns ``(μ, c)``."""
    safe = jnp.where(b != 0, b, 1)
    z = jnp.where(b != 0, jnp.clip(hypergradient / safe, 0, 1), 0)
    count = (count + 1) * discount
    return z ** (1 / (count + 1)), count


def flat_per_direction(tree: PyTree) -> jax.Array:
    """A pytree shaped like the hyperparameters as one vector (m,), in the order of the directions."""
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


@dataclasses.dataclass(frozen=True)
class RealTime(OnlineMethod):
    """Real-time mode: hypergradients every Δ steps of one single training run; RTHO, hypergradient descent and
    MARTHE by the discount on the tangent.

    Recurrence: ``Z_t = μ A_t Z_{t-1} + B_t``, never reset; after each chunk of Δ steps ``∂E/∂s_t Z_t + ∂E/∂λ`` is
    read out (and λ may be updated). μ = 1 is RTHO, forward mode's recurrence (exact while λ is fixed); for μ < 1
    the read-out is the exact derivative of the discounted recurrence, a heuristic rather than a hypergradient.
    Several hyperparameters: one μ per scalar direction (see the module docstring).

    Time: about (1 + m)× training per chunk for m scalar hyperparameters, plus one evaluation of E per chunk;
    μ = 0 pushes λ's tangent only (no Hessian-vector product through the state), and ``"adapt"`` adds m JVPs in λ
    alone at each chunk's last step.

    Memory: ``Z`` is m × |s|, independent of T and of Δ.

    Args:
        delta: Δ, the number of inner steps between hypergradients.
        discount: μ ∈ [0, 1] (1: RTHO, the default; 0: one step back only, hypergradient descent with Δ = 1), or
            ``"adapt"``: MARTHE's online rule (μ and c per direction, starting at 0, updated after every chunk).
        max_directions: as for :class:`~hgkit.hypergrad.forward.Forward`.
        clip: with ``"adapt"`` only: the rule for μ uses the previous hypergradient clipped to ``[−clip, clip]``,
            as MARTHE's authors clip it (100 in their code); give the bound of the outer loop's ``optax.clip``.
            None (the default): unclipped. The hypergradient RealTime returns is never clipped.
    """

    delta: int
    discount: float | str = 1.0
    max_directions: int | None = DEFAULT_MAX_DIRECTIONS
    clip: float | None = None

    def __post_init__(self):
        require_positive_int("RealTime(delta=...)", self.delta, "inner steps between hypergradients")
        require_positive_int("RealTime(max_directions=...)", self.max_directions, "a limit", optional=True)
        if not (isinstance(self.discount, str) and self.discount == ADAPT):
            allowed = 'a number in [0, 1] or "adapt"'
            mu = require_number("RealTime(discount=...)", self.discount, 0.0, 1.0, allowed)
            object.__setattr__(self, "discount", mu)  # a static float: 1.0 and 0.0 take their fast paths
        if self.clip is not None:
            if not self.adaptive:
                raise ValueError(
                    f'RealTime(clip=...) bounds the hypergradient in MARTHE\'s rule for μ, discount="adapt"; with '
                    f"discount={self.discount:g} nothing uses it (clip the update of λ with optax.clip in the "
                    "hyper_optimizer): leave clip=None"
                )
            clip = require_number("RealTime(clip=...)", self.clip, 0.0, allowed="None or a number > 0")
            if clip == 0:
                raise ValueError(f"RealTime(clip=...) must be None or a number > 0; got {self.clip!r}")
            object.__setattr__(self, "clip", clip)

    @property
    def adaptive(self) -> bool:
        """Whether μ follows MARTHE's online rule."""
        return self.discount == ADAPT

    @property
    def label(self) -> str:
        where = f"(Δ = {self.delta})"
        if self.adaptive:
            return f"MARTHE {where}"
        if self.discount == 0.0:
            return f"hypergradient descent {where}"
        if self.discount == 1.0:
            return f"RTHO {where}"
        return f"RTHO, discount μ = {self.discount:g} {where}"

    def restart(self, carry: RealTimeState) -> RealTimeState:
        """The carry with its tangents back to zero (and their failure forgotten): the derivative starts again from
        here, as ``init(..., init_state=s_t)`` would start it; the weights, the step count, μ and MARTHE's c go on,
        and the hypergradient the next update of μ uses is 0 (the loop did not apply the one that blew up).
        What the loop's ``restart_above`` guard does to a run whose tangent blew up."""
        forward = carry.forward
        zeros = jax.tree_util.tree_map(jnp.zeros_like, forward.tangents)
        forward = forward._replace(tangents=zeros, grad_diverged_at=jnp.int32(-1))
        return carry._replace(forward=forward, previous=jnp.zeros_like(carry.previous))

    def init(
        self, problem: BilevelProblem, hparams: PyTree, *, key: Any = None, init_state: TrainState | None = None
    ) -> RealTimeState:
        """``s_0`` and ``Z_0 = ∂S_0/∂λ`` (or a given state with ``Z_0 = 0``), at step 0; μ = 0, c = 0 and no
        previous hypergradient (0) with ``"adapt"``, else μ = ``discount``."""
        forward = init_tangents(problem, hparams, key, init_state, directions(hparams))
        m = tree_size(hparams)
        dtype = jnp.result_type(*jax.tree_util.tree_leaves(hparams))
        mu0 = 0.0 if self.adaptive else self.discount
        mu = jnp.full((m,), mu0, dtype)
        zeros = jnp.zeros((m,), dtype)
        return RealTimeState(forward, mu, zeros, zeros, HparamsLayout.of(hparams))

    def step(
        self, problem: BilevelProblem, carry: RealTimeState, hparams: PyTree, train_data: Any, val_data: PyTree
    ) -> tuple[RealTimeState, HypergradientResult]:
        """Δ more inner steps under ``hparams``; returns the new carry and the hypergradient at its end.

        ``hparams`` may have new values, not new names or shapes: the carry holds one tangent per hyperparameter
        that ``init`` was given."""
        given = HparamsLayout.of(hparams)
        if given != carry.hparams_layout:
            raise ValueError(
                "RealTime.step: the carry was made by init for other hyperparameters than step got: "
                f"{carry.hparams_layout.difference(given)}. The carry holds one tangent per hyperparameter init was "
                "given: pass step those, or start a new carry with init(problem, hparams)."
            )
        abstract_state = check_inputs(problem, hparams, self.delta, train_data, val_data, None, carry.forward.state)
        check_directions(hparams, abstract_state, self.max_directions, "RealTime")
        basis = directions(hparams)
        if not self.adaptive:
            forward, losses = advance(problem, carry.forward, hparams, basis, train_data, self.delta, self.discount)
            return carry._replace(forward=forward), finish(problem, forward, hparams, val_data, losses)
        # MARTHE: Δ − 1 steps, then the last one keeping its B_t for the update of μ, which uses the hypergradient
        # of the chunk before (the one λ was just updated with); this chunk's is the next update's.
        mu = carry.discount
        forward, first = advance(problem, carry.forward, hparams, basis, train_data, self.delta - 1, mu)
        batch = batch_at(train_data, forward.step)
        forward, (last, b_tangent) = tangent_step(problem, forward, hparams, basis, batch, mu, keep_b=True)
        losses = jnp.concatenate([first, last[None]])
        values, grads, dE_dw = read_out(problem, forward, hparams, val_data)
        res = result(
            problem, hparams, values, grads, forward.state, losses, forward.diverged_at, forward.grad_diverged_at
        )
        # b_j = ∇E·B_j for the objective direction j follows (the rows of the hypergradient).
        sizes = [int(np.size(x)) for x in jax.tree_util.tree_leaves(hparams)]
        rows = np.repeat(objective_index(problem, hparams), sizes)
        b = through_weights(dE_dw, b_tangent.arrays)[rows, np.arange(len(rows))]
        delta = carry.previous.astype(b.dtype)
        if self.clip is not None:
            delta = jnp.clip(delta, -self.clip, self.clip)
        discount, count = adapt_discount(carry.discount, carry.count, delta, b)
        dtype = carry.discount.dtype
        previous = flat_per_direction(res.grads).astype(dtype)
        new = RealTimeState(forward, discount.astype(dtype), count.astype(dtype), previous, carry.hparams_layout)
        return new, res
