"""The packaged Omniglot subset, its split by alphabet and the episode sampler."""

from __future__ import annotations

import re
from importlib import resources

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from shared_data import shared_path

from hgkit.datasets import (
    OMNIGLOT_VALIDATION,
    Episode,
    build_omniglot,
    episodes,
    omniglot,
    omniglot_split,
)
from hgkit.datasets.omniglot_episodes import packaged_omniglot_arrays, sha256_of

SHARED_OMNIGLOT = shared_path("data", "omniglot")
needs_sources = pytest.mark.skipif(
    not SHARED_OMNIGLOT.joinpath("all_runs.zip").exists(),
    reason=f"the Omniglot source zips {SHARED_OMNIGLOT} are not beside the project",
)
# Characters per alphabet, as PROVENANCE.md of the source lists them.
CHARACTERS = {
    "Balinese": 24,
    "Early_Aramaic": 22,
    "Greek": 24,
    "Japanese_(katakana)": 47,
    "Korean": 40,
    "Latin": 26,
    "Sanskrit": 42,
    "Tagalog": 17,
}


@pytest.fixture(scope="module")
def data():
    return omniglot()


@pytest.fixture(scope="module")
def split(data):
    return omniglot_split(data, validation=OMNIGLOT_VALIDATION)


@pytest.fixture(scope="module")
def where(data):
    """Each packaged image's bytes -> its row in data.images (the 4,840 images are distinct)."""
    index = {image.tobytes(): i for i, image in enumerate(data.images)}
    assert len(index) == len(data.images)
    return index


@pytest.fixture(scope="module")
def sample(data, split):
    return episodes(data, classes=split[0], ways=5, shots=2, queries=3)


def rows_of(x, where):
    """The rows of data.images that the episode images ``x`` (n, 28, 28, 1) in [0, 1] are (KeyError if one is not)."""
    as_bytes = np.rint(np.asarray(x, np.float64)[..., 0] * 255).astype(np.uint8)
    return np.array([where[image.tobytes()] for image in as_bytes])


# The packaged data -------------------------------------------------------------------------------------------------


def test_counts_and_layout(data):
    assert data.images.shape == (4840, 28, 28) and data.images.dtype == np.uint8
    assert data.alphabets == tuple(sorted(CHARACTERS))
    for field in (data.character, data.alphabet, data.drawer):
        assert field.shape == (4840,) and field.dtype == np.int32
    np.testing.assert_array_equal(data.character, np.repeat(np.arange(242), 20))
    np.testing.assert_array_equal(data.drawer, np.tile(np.arange(1, 21), 242))
    per_alphabet = {name: len(np.unique(data.character[data.alphabet == a])) for a, name in enumerate(data.alphabets)}
    assert per_alphabet == CHARACTERS and sum(per_alphabet.values()) == 242
    # Characters are numbered alphabet by alphabet: each character has one alphabet, and the numbering never goes back.
    assert (np.diff(data.alphabet) >= 0).all()
    # Ink is 255 on a background of 0: mostly background, some full ink, grey only at the strokes' edges.
    assert data.images.min() == 0 and data.images.max() == 255
    assert 0.6 < (data.images == 0).mean() < 0.95 and (data.images == 255).mean() > 0.005
    corners = data.images[:, [0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners == 0).mean() > 0.99
    assert not data.images.flags.writeable  # the cached arrays cannot be edited by one caller for all


def test_one_shot_runs(data):
    runs = data.runs
    assert runs.train.shape == runs.test.shape == (20, 20, 28, 28)
    assert runs.train.dtype == runs.test.dtype == np.uint8
    assert runs.label.shape == (20, 20) and runs.label.dtype == np.int32
    for row in runs.label:
        np.testing.assert_array_equal(np.sort(row), np.arange(20))
    # The evaluation alphabets are not the background ones: no run image is a packaged drawing.
    packaged = {image.tobytes() for image in data.images}
    assert not packaged & {image.tobytes() for image in runs.train.reshape(-1, 28, 28)}
    # The labels carry information: pixel nearest neighbour beats chance (95 % error) on the 400 test items.
    train, test = runs.train.reshape(20, 20, -1) / 255.0, runs.test.reshape(20, 20, -1) / 255.0
    distance = ((test[:, :, None] - train[:, None]) ** 2).sum(-1)
    assert (distance.argmin(-1) != runs.label).mean() < 0.85


def test_packaged_licence_and_attribution():
    data_dir = resources.files("hgkit.datasets").joinpath("data")
    licence = data_dir.joinpath("OMNIGLOT_LICENSE").read_text()
    assert "The MIT License" in licence and "Brenden Lake" in licence
    attribution = data_dir.joinpath("ATTRIBUTION.md").read_text()
    assert "omniglot.npz" in attribution and "OMNIGLOT_LICENSE" in attribution


@needs_sources
def test_packaged_file_is_the_rebuild_from_the_source_zips():
    rebuilt = build_omniglot(SHARED_OMNIGLOT)
    packaged = packaged_omniglot_arrays()
    assert set(rebuilt) == set(packaged)
    for k in packaged:
        assert rebuilt[k].dtype == packaged[k].dtype, k
        np.testing.assert_array_equal(rebuilt[k], packaged[k], err_msg=k)
    provenance = SHARED_OMNIGLOT.joinpath("PROVENANCE.md").read_text()
    sources = ["images_background_small1.zip", "images_background_small2.zip", "all_runs.zip"]
    assert packaged["source"].tolist() == sources
    for name, digest in zip(packaged["source"], packaged["source_sha256"], strict=True):
        assert sha256_of(SHARED_OMNIGLOT / name) == digest, name
        assert re.search(rf"\| {re.escape(str(name))} \|.*\| {digest} \|", provenance), name
    packaged_licence = resources.files("hgkit.datasets").joinpath("data", "OMNIGLOT_LICENSE").read_text()
    assert packaged_licence == SHARED_OMNIGLOT.joinpath("LICENSE").read_text()


@needs_sources
def test_builder_names_missing_sources(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks images_background_small1.zip, .*all_runs.zip"):
        build_omniglot(tmp_path)


# The split by alphabet ---------------------------------------------------------------------------------------------


def test_split_by_alphabet(data, split):
    train, val = split
    assert train.dtype == val.dtype == np.int32
    assert OMNIGLOT_VALIDATION == ("Korean", "Tagalog")
    assert len(val) == 40 + 17 == 57 and len(train) == 242 - 57
    assert not set(train.tolist()) & set(val.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([train, val])), np.arange(242))
    alphabet_of = {int(c): data.alphabets[a] for c, a in zip(data.character, data.alphabet, strict=True)}
    assert {alphabet_of[c] for c in val.tolist()} == set(OMNIGLOT_VALIDATION)
    assert not {alphabet_of[c] for c in train.tolist()} & set(OMNIGLOT_VALIDATION)
    greek_train, greek = omniglot_split(data, validation="Greek")
    assert len(greek) == 24 and len(greek_train) == 218


def test_split_names_an_unknown_alphabet(data):
    with pytest.raises(ValueError, match=r"unknown alphabet\(s\) 'Klingon'.*8: Balinese, Early_Aramaic, .*Tagalog"):
        omniglot_split(data, validation=("Korean", "Klingon"))


# The episode sampler -----------------------------------------------------------------------------------------------


def test_episode_shapes_labels_and_contents(data, split, sample, where):
    ep = sample(jax.random.key(0))
    assert isinstance(ep, Episode)
    assert ep.support["x"].shape == (10, 28, 28, 1) and ep.query["x"].shape == (15, 28, 28, 1)
    assert ep.support["x"].dtype == ep.query["x"].dtype == jnp.float32
    assert ep.support["y"].dtype == ep.query["y"].dtype == jnp.int32
    np.testing.assert_array_equal(ep.support["y"], np.repeat(np.arange(5), 2))
    np.testing.assert_array_equal(ep.query["y"], np.repeat(np.arange(5), 3))
    assert 0.0 <= float(ep.query["x"].min()) and float(ep.query["x"].max()) <= 1.0
    support, query = rows_of(ep.support["x"], where), rows_of(ep.query["x"], where)
    characters = []
    for label in range(5):
        s, q = support[np.asarray(ep.support["y"]) == label], query[np.asarray(ep.query["y"]) == label]
        (character,) = set(data.character[np.concatenate([s, q])].tolist())  # one character per label
        assert len(set(s.tolist()) | set(q.tolist())) == 5  # distinct drawings: 2 in the support, 3 others in the query
        characters.append(character)
    assert len(set(characters)) == 5 and set(characters) <= set(split[0].tolist())


def test_episodes_are_functions_of_the_key(sample):
    key = jax.random.key(1)
    first, again, other = sample(key), sample(key), sample(jax.random.key(2))
    jax.tree.map(np.testing.assert_array_equal, first, again)
    assert not np.array_equal(first.query["x"], other.query["x"])
    jax.tree.map(np.testing.assert_array_equal, jax.jit(sample)(key), first)

    @jax.jit
    def inside(key):  # the sampler inside another compiled function
        ep = sample(key)
        return ep.support["x"].sum() + ep.query["x"].sum()

    np.testing.assert_allclose(inside(key), first.support["x"].sum() + first.query["x"].sum(), rtol=1e-6)


def test_batch_is_vmap_over_split_keys(sample):
    key = jax.random.key(3)
    batch = sample.batch(key, 3)
    shapes = jax.tree.map(lambda a: a.shape, batch)
    assert shapes == Episode({"x": (3, 10, 28, 28, 1), "y": (3, 10)}, {"x": (3, 15, 28, 28, 1), "y": (3, 15)})
    for i, k in enumerate(jax.random.split(key, 3)):
        jax.tree.map(lambda b, e, i=i: np.testing.assert_array_equal(b[i], e), batch, sample(k))
    # Episodes of one meta-batch differ from each other.
    assert not np.array_equal(batch.support["x"][0], batch.support["x"][1])


def test_classes_cover_the_pool_over_many_episodes(data):
    # Three characters, 2-way: over 64 episodes every one of them is drawn, and no other.
    pool = np.array([3, 100, 241], np.int32)
    batch = episodes(data, classes=pool, ways=2, shots=1, queries=1, dtype=jnp.float64).batch(jax.random.key(4), 64)
    assert batch.support["x"].dtype == jnp.float64
    images = np.rint(np.asarray(batch.support["x"])[..., 0] * 255).astype(np.uint8).reshape(-1, 28, 28)
    where = {image.tobytes(): i for i, image in enumerate(data.images)}
    drawn = {int(data.character[where[image.tobytes()]]) for image in images}
    assert drawn == set(pool.tolist())


def test_rotations_are_classes_of_their_own(data, where):
    # Three characters, four turns each: a 12-way episode holds every pool class, each with all 20 drawings.
    pool = np.array([5, 130, 230], np.int32)
    sample = episodes(data, classes=pool, ways=12, shots=4, queries=16, rotations=True)
    assert sample.num_classes == 12
    ep = sample(jax.random.key(5))
    x = np.concatenate([ep.support["x"], ep.query["x"]])
    y = np.concatenate([ep.support["y"], ep.query["y"]])
    seen = set()
    for label in range(12):
        images = np.rint(x[y == label][..., 0] * 255).astype(np.uint8)
        # The one quarter turn back that makes every image of this class a packaged drawing.
        turns = [r for r in range(4) if all(np.rot90(image, -r).tobytes() in where for image in images)]
        assert len(turns) == 1, turns
        rows = [where[np.rot90(image, -turns[0]).tobytes()] for image in images]
        (character,) = set(data.character[rows].tolist())
        assert sorted(data.drawer[rows].tolist()) == list(range(1, 21))
        seen.add((character, turns[0]))
    assert seen == {(c, r) for c in pool.tolist() for r in range(4)}


# Errors, raised before any compute ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ways": 300}, r"ways=300 but the split has 185 characters; expected ways ≤ 185"),
        ({"ways": 741, "rotations": True}, r"ways=741 but the split has 185 characters × 4 rotations = 740 classes"),
        ({"shots": 5, "queries": 16}, r"shots \+ queries = 5 \+ 16 = 21 but each character has 20 drawings"),
        ({"ways": 0}, r"ways must be a positive int; got 0"),
        ({"shots": 1.5}, r"shots must be a positive int; got 1.5"),
        ({"queries": -2}, r"queries must be a positive int; got -2"),
        ({"ways": True}, r"ways must be a positive int; got True"),
        ({"classes": []}, r"classes is empty; expected at least one character id in 0..241"),
        ({"classes": [0, 242, -1]}, r"classes must hold character ids in 0..241; got -1, 242"),
        ({"classes": [4, 7, 4]}, r"classes must be distinct character ids; got repeated 4"),
        ({"classes": [0.5, 1.0]}, r"classes must be a 1-D sequence of integer character ids; got shape \(2,\) of "),
        ({"dtype": jnp.int32}, r"dtype must be a floating dtype; got int32"),
    ],
)
def test_episode_errors_name_the_argument(data, split, kwargs, message):
    kwargs = {"classes": split[0], **kwargs}
    with pytest.raises(ValueError, match=message):
        episodes(data, **kwargs)


def test_an_empty_meta_batch_is_an_error(sample):
    with pytest.raises(ValueError, match=r"size=0 asks for an empty meta-batch"):
        sample.batch(jax.random.key(0), 0)
    with pytest.raises(ValueError, match=r"size must be a positive Python int \(a shape\); got 2.0"):
        sample.batch(jax.random.key(0), 2.0)
