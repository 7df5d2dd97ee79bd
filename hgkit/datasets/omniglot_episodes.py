"""Omniglot's small background sets and Lake's 20 one-shot runs, packaged so few-shot experiments run offline.

The package carries the drawings of the two small background sets that Lake et al. publish (Science 350(6266),
2015; ``brendenlake/omniglot``): 8 alphabets, 242 characters, 20 drawings of each (4,840), and the 20 runs of
20-way one-shot classification on the evaluation alphabets. Images are 28×28 uint8, ink 255 on a background of 0
(``data/omniglot.npz``; MIT licence in ``data/OMNIGLOT_LICENSE``, attribution in ``data/ATTRIBUTION.md``).
:func:`build_omniglot` rebuilds that file from the three source zips.

- :func:`omniglot` loads it as an :class:`Omniglot` (numpy arrays, read-only, cached);
- :func:`omniglot_split` splits the characters by alphabet into meta-training and meta-validation classes,
  :data:`OMNIGLOT_VALIDATION` naming the documented meta-validation alphabets;
- :func:`episodes` makes a jittable, vmappable sampler of N-way K-shot episodes over a set of classes, optionally
  with the four 90° rotations of each character as classes of their own.

Example:
    >>> import jax
    >>> from hgkit.datasets import episodes, omniglot, omniglot_split
    >>> data = omniglot()
    >>> data.images.shape, len(data.alphabets), int(data.character.max()) + 1
    ((4840, 28, 28), 8, 242)
    >>> train_classes, val_classes = omniglot_split(data)
    >>> len(train_classes), len(val_classes)
    (185, 57)
    >>> sample = episodes(data, classes=train_classes, ways=5, shots=1, queries=15)
    >>> ep = jax.jit(sample)(jax.random.key(0))
    >>> ep.support["x"].shape, ep.support["y"].tolist(), ep.query["x"].shape
    ((5, 28, 28, 1), [0, 1, 2, 3, 4], (75, 28, 28, 1))
    >>> sample.batch(jax.random.key(1), 4).query["y"].shape
    (4, 75)
"""

from __future__ import annotations

import functools
import hashlib
import io
import re
import zipfile
from dataclasses import dataclass
from importlib import resources
from numbers import Integral
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

PACKAGED = "omniglot.npz"
SIZE = 28
"""Side of the packaged images (the sources are 105×105)."""
BACKGROUND_ZIPS = ("images_background_small1.zip", "images_background_small2.zip")
RUNS_ZIP = "all_runs.zip"
OMNIGLOT_VALIDATION = ("Korean", "Tagalog")
"""The meta-validation alphabets of :func:`omniglot_split` (57 characters); the other six (185) are meta-training."""


class OneShotRuns(NamedTuple):
    """Lake's 20 runs of 20-way one-shot classification, each on 20 characters of one evaluation alphabet.

    Run ``r`` shows one training image of each of its 20 classes and 20 test images, one drawing of each class by
    another drawer; test item ``k`` belongs to training class ``label[r, k]``. A classifier's error on a run is the
    fraction of its test items it assigns to another class, and the benchmark's error is the mean over the runs.

    Example (pixel nearest neighbour, squared Euclidean distance ``d(k, j) = ‖test[r, k] − train[r, j]‖²``):
        >>> import numpy as np
        >>> from hgkit.datasets import omniglot
        >>> runs = omniglot().runs
        >>> train = runs.train.reshape(20, 20, -1) / 255.0  # (run, class, pixel)
        >>> test = runs.test.reshape(20, 20, -1) / 255.0  # (run, item, pixel)
        >>> distance = ((test[:, :, None, :] - train[:, None, :, :]) ** 2).sum(-1)  # (run, item, class)
        >>> error = (distance.argmin(-1) != runs.label).mean()
        >>> print(f"{error:.1%}")
        79.0%
    """

    train: np.ndarray  # (20, 20, 28, 28) uint8: training image of class j in run r, at [r, j]
    test: np.ndarray  # (20, 20, 28, 28) uint8: test item k of run r, at [r, k]
    label: np.ndarray  # (20, 20) int32: for test item k of run r, the index j of its class in train[r]


class Omniglot(NamedTuple):
    """The packaged drawings (one per row of each array) and Lake's one-shot runs.

    Images are the 105×105 sources inverted (ink 255, background 0) and downsampled to 28×28 with PIL's
    ``Image.BOX`` filter, an area average: each pixel is 255 times the fraction of its 3.75×3.75 source square that
    is ink, rounded (see :func:`build_omniglot`). Characters are numbered 0..241 in sorted (alphabet, character
    folder) order, and the drawings in sorted file name order, so ``images[20 c : 20 c + 20]`` are the 20 drawings
    of character ``c``, by drawers 1..20.
    """

    images: np.ndarray  # (4840, 28, 28) uint8: ink 255, background 0
    character: np.ndarray  # (4840,) int32: the character drawn, 0..241
    alphabet: np.ndarray  # (4840,) int32: its alphabet, an index into alphabets
    drawer: np.ndarray  # (4840,) int32: who drew it, 1..20 (DD in the source file name CCCC_DD.png)
    alphabets: tuple[str, ...]  # the 8 alphabet names, sorted
    runs: OneShotRuns  # Lake's 20 runs of 20-way one-shot classification (on other alphabets)


class Episode(NamedTuple):
    """One few-shot episode: a support set to adapt on and a query set to evaluate on.

    Each is ``{"x": (n, 28, 28, 1) float in [0, 1], "y": (n,) int32 in 0..ways-1}``, class-major: the examples of
    episode label 0 first, then label 1, and so on.
    """

    support: dict[str, jax.Array]  # ways·shots examples
    query: dict[str, jax.Array]  # ways·queries examples


# Building the packaged file from the sources -------------------------------------------------------------------------


def sha256_of(path: str | Path) -> str:
    """The sha256 hex digest of the file at ``path``."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _to_28(png: bytes) -> np.ndarray:
    """One 105×105 1-bit PNG (ink 0) as a 28×28 uint8 image with ink 255: inverted, then PIL's BOX filter."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        inverted = Image.eval(image.convert("L"), lambda v: 255 - v)
    return np.asarray(inverted.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8)


def _run_labels(text: str, run: str) -> np.ndarray:
    """``class_labels.txt`` of one run (lines ``runNN/test/itemKK.png runNN/training/classJJ.png``) as JJ−1 by KK."""
    pattern = re.compile(rf"{run}/test/item(\d+)\.png\s+{run}/training/class(\d+)\.png")
    pairs = [pattern.fullmatch(line.strip()) for line in text.splitlines() if line.strip()]
    if None in pairs:
        raise ValueError(f"{run}/class_labels.txt: expected lines '{run}/test/itemKK.png {run}/training/classJJ.png'")
    label = dict((int(m[1]) - 1, int(m[2]) - 1) for m in pairs)
    if sorted(label) != list(range(20)) or sorted(label.values()) != list(range(20)):
        raise ValueError(f"{run}/class_labels.txt: expected items 1..20 paired with classes 1..20; got {label}")
    return np.array([label[k] for k in range(20)], dtype=np.int32)


def build_omniglot(folder: str | Path) -> dict[str, np.ndarray]:
    """What ``data/omniglot.npz`` holds, rebuilt from the three source zips in ``folder``.

    Reads ``images_background_small1.zip`` and ``images_background_small2.zip`` (Greek and Latin are in both with
    the same paths and bytes: one copy of each path ``alphabet/character/file`` is kept) and ``all_runs.zip``. Each
    105×105 drawing is converted to 8 bits, inverted (ink 255) and resized to 28×28 with PIL's ``Image.BOX``
    filter: pixel ``(i, j)`` is 255 times the fraction of ink in its 3.75×3.75 source square, rounded. Needs PIL.

    Returns the arrays as stored: ``images`` (4840, 28, 28) uint8; ``character``, ``alphabet``, ``drawer``
    (4840,) uint8; ``alphabets`` (8,) and ``character_name`` (242,) str (``"Korean/character07"``); ``runs_train``
    and ``runs_test`` (20, 20, 28, 28) uint8; ``runs_label`` (20, 20) uint8; ``source`` and ``source_sha256``
    (3,) str, the zips read and their digests.

    Example (the packaged file was written so):
        >>> import numpy as np
        >>> from hgkit.datasets import build_omniglot
        >>> np.savez_compressed("omniglot.npz", **build_omniglot("../shared/data/omniglot"))  # doctest: +SKIP
    """
    folder = Path(folder)
    sources = (*BACKGROUND_ZIPS, RUNS_ZIP)
    missing = [name for name in sources if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"build_omniglot: folder {str(folder)!r} lacks {', '.join(missing)}; expected all of {', '.join(sources)}"
        )
    drawings: dict[tuple[str, str, str], bytes] = {}
    for name in BACKGROUND_ZIPS:
        with zipfile.ZipFile(folder / name) as archive:
            for path in archive.namelist():
                parts = path.split("/")
                if not path.endswith(".png") or len(parts) != 4:
                    continue
                key = (parts[1], parts[2], parts[3])  # alphabet, character folder, CCCC_DD.png
                data = archive.read(path)
                if drawings.setdefault(key, data) != data:
                    raise ValueError(f"build_omniglot: {'/'.join(key)} differs between the two background zips")
    keys = sorted(drawings)
    alphabets = sorted({a for a, _, _ in keys})
    characters = sorted({(a, c) for a, c, _ in keys})
    character_id = {ac: i for i, ac in enumerate(characters)}
    with zipfile.ZipFile(folder / RUNS_ZIP) as archive:
        runs = [f"run{r:02d}" for r in range(1, 21)]
        runs_train = [[_to_28(archive.read(f"{run}/training/class{j:02d}.png")) for j in range(1, 21)] for run in runs]
        runs_test = [[_to_28(archive.read(f"{run}/test/item{k:02d}.png")) for k in range(1, 21)] for run in runs]
        runs_label = [_run_labels(archive.read(f"{run}/class_labels.txt").decode("utf-8"), run) for run in runs]
    return {
        "images": np.stack([_to_28(drawings[k]) for k in keys]),
        "character": np.array([character_id[a, c] for a, c, _ in keys], dtype=np.uint8),
        "alphabet": np.array([alphabets.index(a) for a, _, _ in keys], dtype=np.uint8),
        "drawer": np.array([int(f.removesuffix(".png").split("_")[1]) for _, _, f in keys], dtype=np.uint8),
        "alphabets": np.array(alphabets),
        "character_name": np.array([f"{a}/{c}" for a, c in characters]),
        "runs_train": np.array(runs_train, dtype=np.uint8),
        "runs_test": np.array(runs_test, dtype=np.uint8),
        "runs_label": np.array(runs_label, dtype=np.uint8),
        "source": np.array(sources),
        "source_sha256": np.array([sha256_of(folder / name) for name in sources]),
    }


# Loading -------------------------------------------------------------------------------------------------------------


def packaged_omniglot_arrays() -> dict[str, np.ndarray]:
    """The packaged file's arrays as stored (see :func:`build_omniglot`)."""
    with resources.files(__package__).joinpath("data", PACKAGED).open("rb") as f, np.load(f) as data:
        return {k: data[k] for k in data.files}


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # the loader is cached: one caller's edit would reach every other caller
    return array


@functools.cache
def omniglot() -> Omniglot:
    """The packaged Omniglot drawings and one-shot runs (read-only numpy arrays, loaded once and cached).

    Example:
        >>> from hgkit.datasets import omniglot
        >>> data = omniglot()
        >>> data.alphabets[:3], data.character[:3].tolist(), data.drawer[:3].tolist()
        (('Balinese', 'Early_Aramaic', 'Greek'), [0, 0, 0], [1, 2, 3])
        >>> data.runs.train.shape, data.runs.label[0, :5].tolist()
        ((20, 20, 28, 28), [7, 8, 1, 18, 9])
    """
    raw = packaged_omniglot_arrays()

    def ids(name):
        return _read_only(raw[name].astype(np.int32))

    runs = OneShotRuns(_read_only(raw["runs_train"]), _read_only(raw["runs_test"]), ids("runs_label"))
    alphabets = tuple(str(a) for a in raw["alphabets"])
    return Omniglot(_read_only(raw["images"]), ids("character"), ids("alphabet"), ids("drawer"), alphabets, runs)


# Splitting by alphabet -----------------------------------------------------------------------------------------------


def omniglot_split(data: Omniglot, validation=OMNIGLOT_VALIDATION) -> tuple[np.ndarray, np.ndarray]:
    """The characters split by alphabet: ``(train_classes, val_classes)``, sorted int32 character ids.

    A character is a validation class when its alphabet is one of ``validation`` (a name or a sequence of names
    from ``data.alphabets``), a training class otherwise; the two are disjoint and together hold every character.
    Splitting by alphabet makes meta-validation measure transfer to unseen scripts, as the evaluation runs do.

    Example:
        >>> from hgkit.datasets import omniglot, omniglot_split
        >>> train, val = omniglot_split(omniglot(), validation=("Korean", "Tagalog"))
        >>> len(train), len(val), val[:3].tolist()
        (185, 57, [117, 118, 119])
    """
    names = (validation,) if isinstance(validation, str) else tuple(validation)
    unknown = [name for name in names if name not in data.alphabets]
    if unknown:
        raise ValueError(
            f"omniglot_split: validation names unknown alphabet(s) {', '.join(map(repr, unknown))}; "
            f"expected names among the {len(data.alphabets)}: {', '.join(data.alphabets)}"
        )
    character = np.asarray(data.character)
    alphabet_of = np.zeros(int(character.max()) + 1, dtype=np.int32)
    alphabet_of[character] = np.asarray(data.alphabet)
    is_val = np.isin(alphabet_of, [data.alphabets.index(name) for name in names])
    return np.flatnonzero(~is_val).astype(np.int32), np.flatnonzero(is_val).astype(np.int32)


# Sampling episodes ---------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("ways", "shots", "queries", "rotations", "dtype"))
def _draw_episode(pool, key, *, ways: int, shots: int, queries: int, rotations: bool, dtype) -> Episode:
    """One episode from ``pool`` (n, drawings, 28, 28) uint8; classes ``n·4`` when ``rotations``."""
    n, drawings = pool.shape[:2]
    class_key, drawing_key = jax.random.split(key)
    chosen = jax.random.choice(class_key, 4 * n if rotations else n, (ways,), replace=False)
    # Each class's drawings in a uniformly random order (sorted by random 32-bit keys, as jax.random.permutation
    # does), its first K + Q kept: one draw of random bits for all classes compiles faster than `ways` choices.
    which = jnp.argsort(jax.random.bits(drawing_key, (ways, drawings)), axis=1)[:, : shots + queries]
    images = pool[(chosen % n)[:, None], which]  # (ways, shots + queries, 28, 28) uint8
    if rotations:
        turned = jnp.stack([jnp.rot90(images, r, axes=(-2, -1)) for r in range(4)])
        images = turned[chosen // n, jnp.arange(ways)]
    x = (images.astype(dtype) / jnp.asarray(255, dtype))[..., None]
    side = x.shape[2:]

    def part(x, count):
        return {"x": x.reshape(ways * count, *side), "y": jnp.repeat(jnp.arange(ways, dtype=jnp.int32), count)}

    return Episode(part(x[:, :shots], shots), part(x[:, shots:], queries))


@dataclass(frozen=True, eq=False)
class EpisodeSampler:
    """N-way K-shot episodes from a fixed class pool: ``sampler(key) -> Episode``; make one with :func:`episodes`.

    A pure function of the key, jittable and vmappable, and usable inside another jitted function: the pool's
    images are a uint8 constant (``len(classes)·20·28·28`` bytes), cast to ``dtype`` after the gather.
    (``eq=False``: samplers compare and hash by identity, which ``jax.jit(sampler)`` needs.)
    """

    pool: jax.Array  # (len(classes), drawings, 28, 28) uint8: the pool characters' drawings
    classes: np.ndarray  # (n,) int32: the pool's character ids; pool class p is classes[p mod n] turned (p div n)·90°
    ways: int
    shots: int
    queries: int
    rotations: bool
    dtype: np.dtype

    @property
    def num_classes(self) -> int:
        """How many classes the pool has (``len(classes)``, times 4 with rotations)."""
        return len(self.classes) * (4 if self.rotations else 1)

    def __call__(self, key) -> Episode:
        """One episode drawn with ``key``."""
        return _draw_episode(
            self.pool,
            key,
            ways=self.ways,
            shots=self.shots,
            queries=self.queries,
            rotations=self.rotations,
            dtype=self.dtype,
        )

    def batch(self, key, size: int) -> Episode:
        """``size`` episodes (a meta-batch), every leaf with a leading axis ``size``: one per ``split(key, size)``."""
        if isinstance(size, bool) or not isinstance(size, Integral):
            raise ValueError(f"EpisodeSampler.batch: size must be a positive Python int (a shape); got {size!r}")
        if size < 1:
            raise ValueError(f"EpisodeSampler.batch: size={size} asks for an empty meta-batch; expected at least 1")
        return jax.vmap(self)(jax.random.split(key, int(size)))


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"episodes: {name} must be a positive int; got {value!r}")
    return int(value)


def _grouped_by_character(data: Omniglot) -> np.ndarray:
    """``data.images`` as (characters, drawings, 28, 28), each character's drawings in drawer order."""
    character, drawer = np.asarray(data.character), np.asarray(data.drawer)
    counts = np.bincount(character)
    if counts.min() != counts.max():
        raise ValueError(
            f"episodes: expected every character of data to have the same number of drawings; "
            f"got between {counts.min()} and {counts.max()}"
        )
    order = np.lexsort((drawer, character))
    return np.asarray(data.images)[order].reshape(len(counts), counts[0], *np.shape(data.images)[1:])


def episodes(
    data: Omniglot,
    classes=None,
    *,
    ways: int = 5,
    shots: int = 1,
    queries: int = 15,
    rotations: bool = False,
    dtype=jnp.float32,
) -> EpisodeSampler:
    """A sampler of ``ways``-way ``shots``-shot episodes over the characters ``classes`` (all of them if None).

    With the pool ``P`` (the characters of ``classes``; with ``rotations``, each of them turned by 0°, 90°, 180° and
    270° counter-clockwise, ``|P| = 4·len(classes)``, a turned character being a class of its own as in MAML and
    Prototypical Networks), an episode draws classes ``c_1, …, c_N`` uniformly from ``P`` without replacement
    (``N = ways``) and, for each ``c_i``, ``K + Q`` of its 20 drawings ``d_i1, …, d_i(K+Q)`` without replacement
    (``K = shots``, ``Q = queries``). Labels are renumbered in the order drawn:

        support = {(x(c_i, d_ij), i) : j ≤ K},    query = {(x(c_i, d_ij), i) : K < j ≤ K + Q},

    with ``x = image / 255`` in ``dtype``, shaped (28, 28, 1); support and query hold disjoint drawings of the same
    characters. Both are class-major (label 0's examples first). All checks run here, before any compute.

    Args:
        data: the data set, from :func:`omniglot`.
        classes: character ids to draw from (e.g. one part of :func:`omniglot_split`), distinct, in
            ``0..characters-1``; None for every character.
        ways, shots, queries: classes per episode and drawings per class in the support and the query set.
        rotations: add the three other quarter turns of every character as classes.
        dtype: the floating dtype of the images.

    Returns:
        An :class:`EpisodeSampler`: ``sampler(key)`` is one :class:`Episode`; ``sampler.batch(key, M)`` is ``M``
        of them (``jax.vmap`` over ``jax.random.split(key, M)``).

    Example:
        >>> import jax
        >>> from hgkit.datasets import episodes, omniglot, omniglot_split
        >>> data = omniglot()
        >>> _, val_classes = omniglot_split(data)
        >>> sample = episodes(data, classes=val_classes, ways=20, shots=5, queries=5, rotations=True)
        >>> sample.num_classes
        228
        >>> batch = jax.jit(sample.batch, static_argnums=1)(jax.random.key(0), 2)
        >>> batch.support["x"].shape, batch.support["y"].shape, str(batch.query["x"].dtype)
        ((2, 100, 28, 28, 1), (2, 100), 'float32')
    """
    ways, shots, queries = (_positive_int(n, v) for n, v in (("ways", ways), ("shots", shots), ("queries", queries)))
    grouped = _grouped_by_character(data)
    characters, drawings = grouped.shape[:2]
    if classes is None:
        classes = np.arange(characters)
    ids = np.asarray(classes)
    if ids.ndim != 1 or not (ids.size == 0 or np.issubdtype(ids.dtype, np.integer)):
        raise ValueError(
            f"episodes: classes must be a 1-D sequence of integer character ids; got "
            f"shape {ids.shape} of dtype {ids.dtype}"
        )
    if ids.size == 0:
        raise ValueError(f"episodes: classes is empty; expected at least one character id in 0..{characters - 1}")
    outside = np.unique(ids[(ids < 0) | (ids >= characters)])
    if outside.size:
        raise ValueError(
            f"episodes: classes must hold character ids in 0..{characters - 1}; got "
            f"{', '.join(map(str, outside[:10].tolist()))}{' …' if outside.size > 10 else ''}"
        )
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise ValueError(
            f"episodes: classes must be distinct character ids; got repeated "
            f"{', '.join(map(str, values[counts > 1][:10].tolist()))}"
        )
    pool_size = len(ids) * (4 if rotations else 1)
    if ways > pool_size:
        pool = f"{len(ids)} characters × 4 rotations = {pool_size} classes" if rotations else f"{pool_size} characters"
        raise ValueError(f"episodes: ways={ways} but the split has {pool}; expected ways ≤ {pool_size}")
    if shots + queries > drawings:
        raise ValueError(
            f"episodes: shots + queries = {shots} + {queries} = {shots + queries} but each character has "
            f"{drawings} drawings; expected shots + queries ≤ {drawings}"
        )
    dtype = np.dtype(dtype)
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"episodes: dtype must be a floating dtype; got {dtype}")
    ids = ids.astype(np.int32)
    return EpisodeSampler(jnp.asarray(grouped[ids]), ids, ways, shots, queries, bool(rotations), dtype)
