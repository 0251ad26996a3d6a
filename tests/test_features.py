"""Image features: registry, backbones (weights=None), PatchGrid, bad images, the resumable feature store."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import save_keras_application
from PIL import Image

from training.errors import UserInputError
from training.features import (
    BaseFeatureExtractor,
    FeatureExtractorRegistry,
    FeatureStore,
    available_extractors,
    get_feature_extractor,
    register_extractor,
)
from training.features import registry as registry_module
from training.features.applications import EfficientNetB3Extractor
from training.features.images import find_bad_images
from training.features.patches import PatchGridExtractor
from training.features.store import FeatureStoreConflict

REPO = Path(__file__).resolve().parents[1]


def write_images(folder: Path, count: int, seed: int = 0) -> list[str]:
    """Small RGB images of varying sizes: PNG (lossless) and JPEG."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        pixels = rng.integers(0, 256, size=(40 + 3 * i, 56, 3), dtype=np.uint8)
        names.append(f"img_{i:02d}.png" if i % 2 else f"img_{i:02d}.jpg")
        Image.fromarray(pixels).save(folder / names[-1])
    return names


def visible_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if not name.startswith("."))


@pytest.fixture
def clean_registry():
    """Undo registrations a test makes in the process-wide table."""
    before = dict(registry_module._EXTRACTORS)
    yield
    registry_module._EXTRACTORS.clear()
    registry_module._EXTRACTORS.update(before)


# -- registry ------------------------------------------------------------------------------------


def test_registry_has_the_backbones_and_finds_them_by_name():
    names = available_extractors()
    for name in [f"EfficientNetB{i}" for i in range(8)] + [
        "InceptionV3",
        "ResNet50",
        "MobileNetV3Large",
        "PatchGrid",
        "ConvEncoder",
    ]:
        assert name in names
    extractor = get_feature_extractor("EfficientNetB3", image_size=(300, 300))  # the seed README's call
    assert isinstance(extractor, EfficientNetB3Extractor)
    assert (extractor.image_size, extractor.weights, extractor.FEATURE_DIM) == ((300, 300), "imagenet", 1536)
    assert extractor._model is None  # built lazily: looking up an extractor costs nothing
    assert get_feature_extractor("InceptionV3").image_size == (299, 299)
    with pytest.raises(ValueError, match=r"did you mean 'EfficientNetB3'\?.*valid names: ConvEncoder, EfficientNetB0"):
        get_feature_extractor("efficientnet_b3")
    with pytest.raises(ValueError, match="image_size"):
        get_feature_extractor("InceptionV3", image_size=(64, 64), weights=None)


def test_custom_extractor_registers_as_the_seed_readme_shows(clean_registry):
    class MyExtractor(BaseFeatureExtractor):
        FEATURE_DIM = 2048
        NAME = "MyModel"

        def build_model(self):
            pass

        def extract_features(self, image_keys, images_path, verbose=1):
            pass

    registry = FeatureExtractorRegistry()
    registry.register("MyModel", MyExtractor)
    assert "MyModel" in FeatureExtractorRegistry() and "MyModel" in available_extractors()
    assert isinstance(get_feature_extractor("MyModel", image_size=(32, 32)), MyExtractor)

    @register_extractor("Decorated")
    class Decorated(PatchGridExtractor):
        NAME = "Decorated"

    assert type(get_feature_extractor("Decorated")) is Decorated
    with pytest.raises(TypeError, match="BaseFeatureExtractor"):
        registry.register("NotAnExtractor", dict)


# -- extractors ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, grid, channels",
    [("EfficientNetB3", (10, 10), 1536), ("InceptionV3", (8, 8), 2048)],
)
def test_keras_backbone_gives_documented_grid(tmp_path, name, grid, channels):
    names = write_images(tmp_path, 2)
    extractor = get_feature_extractor(name, weights=None, batch_size=2)  # default size: B3 300 px, InceptionV3 299 px
    features = extractor.extract_features(names, tmp_path, verbose=0)
    assert extractor.grid_shape == grid and extractor.num_regions == grid[0] * grid[1]
    assert sorted(features) == names
    for value in features.values():
        assert value.shape == (grid[0] * grid[1], channels) and value.dtype == np.float16
        assert np.isfinite(value).all()


def test_each_backbone_gets_its_own_preprocessing():
    images = np.array([[[[0, 128, 255]]]], dtype=np.uint8)  # one 1x1 RGB image

    def prep(name):
        return np.asarray(get_feature_extractor(name, weights=None).preprocess(images))[0, 0, 0]

    np.testing.assert_allclose(prep("EfficientNetB3"), [0, 128, 255])  # normalises inside the model
    np.testing.assert_allclose(prep("MobileNetV3Large"), [0, 128, 255])
    np.testing.assert_allclose(prep("InceptionV3"), [-1, 128 / 127.5 - 1, 1], atol=1e-6)
    np.testing.assert_allclose(prep("ResNet50"), [255 - 103.939, 128 - 116.779, 0 - 123.68], atol=1e-4)  # BGR - means
    np.testing.assert_allclose(prep("PatchGrid"), [-1, 128 / 127.5 - 1, 1], atol=1e-6)


def test_patch_grid_regions_are_the_image_patches(tmp_path):
    pixels = np.random.default_rng(1).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "rgba.png")
    extractor = get_feature_extractor("PatchGrid", weights="imagenet")  # weights ignored: there are none
    features = extractor.extract_features(["a.png", "rgba.png"], tmp_path, verbose=0)
    assert extractor.grid_shape == (8, 8) and extractor.weights is None
    grid = features["a.png"].astype(np.float32)
    assert grid.shape == (64, 192) and grid.min() >= -1 and grid.max() <= 1
    # Region 8*row + col is the 8x8 patch at (row, col), flattened row by row.
    expected = pixels[16:24, 40:48].reshape(-1) / 127.5 - 1
    np.testing.assert_allclose(grid[8 * 2 + 5], expected, atol=1e-2)
    np.testing.assert_array_equal(features["rgba.png"], features["a.png"])


# -- bad images ----------------------------------------------------------------------------------


def make_mixed_folder(folder: Path) -> tuple[list[str], dict[str, str]]:
    """Good images in awkward modes plus one bad image of each kind; returns (all ids, bad id -> reason word)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    rgb = Image.fromarray(rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8))
    rgb.save(folder / "rgb.jpg", quality=90)
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P").save(folder / "palette.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not an image\n")
    data = (folder / "rgb.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    ids = ["rgb.jpg", "missing.jpg", "gray.png", "empty.jpg", "rgba.png", "text.jpg", "palette.png", "truncated.jpg", "cmyk.jpg"]
    return ids, {"missing.jpg": "not found", "empty.jpg": "0 bytes", "text.jpg": "not an image", "truncated.jpg": "truncated"}


def test_bad_images_are_reported_and_left_out(tmp_path):
    ids, expected_bad = make_mixed_folder(tmp_path / "images")
    bad = find_bad_images(ids, tmp_path / "images", verbose=0)
    assert {b["image"]: b["reason"] for b in bad}.keys() == expected_bad.keys()
    for entry in bad:
        assert expected_bad[entry["image"]] in entry["reason"]
        assert entry["path"] == str(tmp_path / "images" / entry["image"])

    extractor = get_feature_extractor("PatchGrid", batch_size=2)
    store = FeatureStore.build(tmp_path / "store", extractor, ids, tmp_path / "images", max_bad_fraction=0.5, verbose=0)
    assert store.image_ids == [i for i in ids if i not in expected_bad]
    assert [b["image"] for b in store.bad_images] == [i for i in ids if i in expected_bad]
    assert store.summary()["num_bad_images"] == 4
    assert np.isfinite(store.features.astype(np.float32)).all()
    features = extractor.extract_features(ids, tmp_path / "images", verbose=0)
    assert sorted(features) == sorted(store.image_ids) and len(extractor.bad_images) == 4

    with pytest.raises(UserInputError, match=r"(?s)4 of 9 images.*max_bad_image_fraction=0.1.*truncated.jpg"):
        FeatureStore.build(tmp_path / "strict", extractor, ids, tmp_path / "images", max_bad_fraction=0.1, verbose=0)
    with pytest.raises(FileNotFoundError, match="images_path"):
        FeatureStore.build(tmp_path / "none", extractor, ids, tmp_path / "no_such_folder", verbose=0)


# -- the feature store ---------------------------------------------------------------------------


class CoarsePatchGrid(PatchGridExtractor):
    """Another weight-free extractor: 16-px patches (a "changed extractor" for the store)."""

    NAME = "CoarsePatchGrid"
    PATCH_SIZE = 16
    FEATURE_DIM = 16 * 16 * 3
    MIN_IMAGE_SIZE = 16


def test_store_round_trips_and_is_reused(tmp_path, caplog):
    names = write_images(tmp_path / "images", 7)
    extractor = get_feature_extractor("PatchGrid", batch_size=3)
    store = FeatureStore.build(tmp_path / "store", extractor, names, tmp_path / "images", chunk_size=2, verbose=0)
    assert visible_files(tmp_path / "store") == ["features.npy", "features_index.json"]
    assert (store.reused, store.extracted, store.skipped) == (0, 7, [])

    opened = FeatureStore.open(tmp_path / "store")
    assert isinstance(opened.features, np.memmap) and not opened.features.flags.writeable
    assert opened.features.dtype == np.float16 and opened.features.shape == (7, 64, 192)
    assert opened.image_ids == names and opened.index == {n: i for i, n in enumerate(names)}
    assert (opened.grid_shape, opened.image_size, opened.feature_dim, opened.extractor_name) == (
        (8, 8),
        (64, 64),
        192,
        "PatchGrid",
    )
    expected = extractor.extract_features(names, tmp_path / "images", verbose=0)
    for name in names:
        np.testing.assert_array_equal(opened.features[opened.index[name]], expected[name])
    np.testing.assert_allclose(opened.get(names[3], pooled=True), expected[names[3]].astype(np.float32).mean(0), rtol=1e-6)

    mtime = (tmp_path / "store" / "features.npy").stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="training.features.store"):
        again = FeatureStore.build(tmp_path / "store", get_feature_extractor("PatchGrid"), names, tmp_path / "images", verbose=0)
    assert "7 image(s) reused, 0 extracted" in caplog.text
    assert (tmp_path / "store" / "features.npy").stat().st_mtime_ns == mtime
    assert again.fingerprint == store.fingerprint and (again.reused, again.extracted) == (7, 0)

    # Any subset, in any order, is read from the store as it is: the rows depend on the image alone.
    fewer = FeatureStore.build(tmp_path / "store", extractor, names[5:1:-1], tmp_path / "images", verbose=0)
    assert (fewer.reused, fewer.extracted) == (4, 0) and fewer.image_ids == names
    assert (tmp_path / "store" / "features.npy").stat().st_mtime_ns == mtime

    with pytest.raises(FileNotFoundError, match=str(tmp_path / "nowhere")):
        FeatureStore.open(tmp_path / "nowhere")


def test_new_images_are_appended_and_old_rows_kept(tmp_path):
    names = write_images(tmp_path / "images", 9)
    extractor = get_feature_extractor("PatchGrid", batch_size=2)
    first = FeatureStore.build(tmp_path / "store", extractor, names[:5], tmp_path / "images", verbose=0)
    old_rows = np.array(first.features)
    # Two of the requested images are new, one of them unreadable for now.
    (tmp_path / "images" / names[7]).write_bytes(b"")
    grown = FeatureStore.build(
        tmp_path / "store", extractor, [names[6], names[7], *names[:3]], tmp_path / "images", max_bad_fraction=0.5, verbose=0
    )
    assert (grown.reused, grown.extracted) == (3, 1)
    assert [b["image"] for b in grown.skipped] == [names[7]] and "empty" in grown.skipped[0]["reason"]
    assert grown.image_ids == names[:5] + [names[6]] and [b["image"] for b in grown.bad_images] == [names[7]]
    np.testing.assert_array_equal(np.asarray(grown.features[:5]), old_rows)
    expected = extractor.extract_features([names[6]], tmp_path / "images", verbose=0)[names[6]]
    np.testing.assert_array_equal(grown.get(names[6]), expected)
    assert visible_files(tmp_path / "store") == ["features.npy", "features_index.json"]

    # The unreadable image is tried again; fixed, it is extracted and leaves the bad list.
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tmp_path / "images" / "fixed.png")
    os.replace(tmp_path / "images" / "fixed.png", tmp_path / "images" / names[7])
    fixed = FeatureStore.build(tmp_path / "store", extractor, [names[7]], tmp_path / "images", verbose=0)
    assert (fixed.reused, fixed.extracted, fixed.skipped, fixed.bad_images) == (0, 1, [], [])
    assert fixed.image_ids[-1] == names[7] and len(fixed) == 7


def test_a_store_of_other_settings_is_never_replaced(tmp_path):
    names = write_images(tmp_path / "images", 4)
    FeatureStore.build(tmp_path / "store", get_feature_extractor("PatchGrid"), names, tmp_path / "images", verbose=0)
    before = {name: (tmp_path / "store" / name).read_bytes() for name in visible_files(tmp_path / "store")}
    with pytest.raises(FeatureStoreConflict, match=r"extractor 'PatchGrid' -> 'CoarsePatchGrid'.*features_dir.*delete"):
        FeatureStore.build(tmp_path / "store", CoarsePatchGrid(), names, tmp_path / "images", verbose=0)
    with pytest.raises(FeatureStoreConflict, match=r"image_size \[64, 64\] -> \[96, 96\]"):
        FeatureStore.build(
            tmp_path / "store", get_feature_extractor("PatchGrid", image_size=(96, 96)), names, tmp_path / "images", verbose=0
        )
    assert {name: (tmp_path / "store" / name).read_bytes() for name in visible_files(tmp_path / "store")} == before
    coarse = FeatureStore.build(tmp_path / "coarse", CoarsePatchGrid(), names, tmp_path / "images", verbose=0)
    assert coarse.features.shape == (4, 16, 768) and coarse.fingerprint != FeatureStore.open(tmp_path / "store").fingerprint


@pytest.mark.slow
def test_extraction_killed_midway_resumes_to_the_same_array(tmp_path, caplog):
    names = write_images(tmp_path / "images", 20)
    store_dir = tmp_path / "store"
    worker = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests" / "features_kill_worker.py"),
            str(store_dir),
            str(tmp_path / "images"),
            *names,
            "--stall-after",
            "3",
            "--batch-size",
            "4",
            "--chunk-size",
            "4",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    progress_file = store_dir / "features.partial.rows.json"
    deadline = time.monotonic() + 120
    rows_done = 0
    try:
        while rows_done < 8:  # wait until at least two chunks are on disk (the worker stalls at 12 rows)
            assert worker.poll() is None, f"worker ended early: {worker.communicate()}"
            assert time.monotonic() < deadline, "worker made no progress"
            time.sleep(0.2)
            try:
                rows_done = json.loads(progress_file.read_text())["rows_done"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                pass
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    assert worker.returncode == -signal.SIGKILL
    assert not (store_dir / "features.npy").exists() and (store_dir / "features.partial.npy").exists()
    with pytest.raises(FileNotFoundError, match="unfinished|missing"):
        FeatureStore.open(store_dir)

    with caplog.at_level(logging.INFO, logger="training.features.store"):
        resumed = FeatureStore.build(
            store_dir, get_feature_extractor("PatchGrid", batch_size=4), names, tmp_path / "images", chunk_size=4, verbose=0
        )
    resumed_at = re.search(r"resuming feature extraction in .* at row (\d+) of 20", caplog.text)
    assert resumed_at and 8 <= int(resumed_at.group(1)) <= 12  # where the killed run stopped, not row 0
    rows_on_disk = int(resumed_at.group(1))
    assert (resumed.reused, resumed.extracted) == (rows_on_disk, 20 - rows_on_disk)
    assert visible_files(store_dir) == ["features.npy", "features_index.json"]

    fresh = FeatureStore.build(
        tmp_path / "fresh", get_feature_extractor("PatchGrid", batch_size=4), names, tmp_path / "images", verbose=0
    )
    assert resumed.image_ids == fresh.image_ids == names
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(fresh.features))


def test_a_second_builder_waits_for_the_first_and_reuses_its_store(tmp_path):
    from training.features.store import build_lock

    names = write_images(tmp_path / "images", 3)
    extractor = get_feature_extractor("PatchGrid")
    FeatureStore.build(tmp_path / "store", extractor, names, tmp_path / "images", verbose=0)
    results = []
    with build_lock(tmp_path / "store"):  # stands in for another worker that is still extracting
        waiter = threading.Thread(
            target=lambda: results.append(
                FeatureStore.build(tmp_path / "store", extractor, names, tmp_path / "images", verbose=0)
            )
        )
        waiter.start()
        waiter.join(timeout=1.0)
        assert waiter.is_alive() and not results
    waiter.join(timeout=30)
    assert len(results) == 1 and results[0].image_ids == names


def test_the_chief_removes_temporaries_only_when_no_worker_is_building_the_store(tmp_path):
    # A worker extracting features into the run folder writes temporaries there; the chief's clean-up of
    # files that killed writes left behind must not delete one mid-write.
    from training.features.store import build_lock
    from training.train import remove_temporaries_of_killed_writes

    tmp_path.joinpath("run").mkdir()
    in_flight = tmp_path / "run" / ".features.partial.rows.json.123.tmp.json"
    with build_lock(tmp_path / "run"):  # stands in for the worker that is still extracting
        in_flight.write_text("{}")
        cleaner = threading.Thread(target=remove_temporaries_of_killed_writes, args=(tmp_path / "run",))
        cleaner.start()
        cleaner.join(timeout=1.0)
        assert cleaner.is_alive() and in_flight.exists()
    cleaner.join(timeout=30)
    assert not cleaner.is_alive() and not in_flight.exists()  # once the writer is gone, its leftovers are stale


def test_a_run_folder_links_to_a_shared_store_but_never_hides_its_own(tmp_path):
    from training.features.store import link_store

    names = write_images(tmp_path / "images", 3)
    FeatureStore.build(tmp_path / "shared", get_feature_extractor("PatchGrid"), names, tmp_path / "images", verbose=0)
    (tmp_path / "run").mkdir()
    link_store(tmp_path / "shared", tmp_path / "run")
    link_store(tmp_path / "shared", tmp_path / "run")  # again: nothing to do
    assert FeatureStore.open(tmp_path / "run").image_ids == names
    assert (tmp_path / "run" / "features.npy").is_symlink()

    FeatureStore.build(tmp_path / "own", get_feature_extractor("PatchGrid"), names[:1], tmp_path / "images", verbose=0)
    before = (tmp_path / "own" / "features.npy").read_bytes()
    with pytest.raises(FeatureStoreConflict, match=r"holds a feature store of its own \(features.npy, features_index.json\)"):
        link_store(tmp_path / "shared", tmp_path / "own")
    assert (tmp_path / "own" / "features.npy").read_bytes() == before and not (tmp_path / "own" / "features.npy").is_symlink()


# -- a weights file (offline machines) -------------------------------------------------------------


@pytest.mark.slow
def test_a_weights_file_gives_its_features_and_a_moved_file_keeps_the_store(tmp_path, caplog):
    import keras

    names = write_images(tmp_path / "images", 5)
    paths = [str(tmp_path / "images" / name) for name in names]
    images = np.concatenate(list(get_feature_extractor("MobileNetV3Small", image_size=(64, 64)).dataset(paths)))
    weights = save_keras_application(tmp_path / "attached" / "mobilenet.weights.h5", images)
    extractor = get_feature_extractor("MobileNetV3Small", image_size=(64, 64), weights=str(weights), batch_size=2)
    store = FeatureStore.build(tmp_path / "store", extractor, names, tmp_path / "images", verbose=0)
    assert store.extracted == 5 and store.features.shape == (5, 4, 576)

    # The same network with those weights, built here, gives the stored rows; another one does not.
    network = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(64, 64, 3))
    network.load_weights(weights)
    expected = network.predict(images, verbose=0).reshape(5, 4, 576)
    assert np.abs(expected).mean() > 0.05  # features worth comparing, not all ~0
    np.testing.assert_allclose(np.asarray(store.features, np.float32), expected, rtol=2e-3, atol=2e-3)
    retrained = save_keras_application(tmp_path / "retrained.weights.h5", images, seed=1)
    network.load_weights(retrained)
    assert np.abs(network.predict(images, verbose=0).reshape(5, 4, 576) - expected).mean() > 0.05

    # The store is keyed by the file's contents: a moved copy reuses it, other weights never replace it.
    moved = Path(shutil.move(weights, tmp_path / "elsewhere.weights.h5"))
    with caplog.at_level(logging.INFO, logger="training.features.store"):
        again = FeatureStore.build(
            tmp_path / "store",
            get_feature_extractor("MobileNetV3Small", image_size=(64, 64), weights=str(moved)),
            names,
            tmp_path / "images",
            verbose=0,
        )
    assert (again.reused, again.extracted, again.fingerprint) == (5, 0, store.fingerprint)
    assert "5 image(s) reused, 0 extracted" in caplog.text
    with pytest.raises(FeatureStoreConflict, match=r"weights 'file of \d+ bytes, sha256 [0-9a-f]{16}' -> 'file of "):
        FeatureStore.build(
            tmp_path / "store",
            get_feature_extractor("MobileNetV3Small", image_size=(64, 64), weights=str(retrained)),
            names,
            tmp_path / "images",
            verbose=0,
        )


def test_a_backbone_computes_in_float32_whatever_the_training_precision():
    import keras

    keras.config.set_dtype_policy("mixed_bfloat16")  # what a run sets on a CPU with bfloat16
    try:
        extractor = get_feature_extractor("MobileNetV3Small", image_size=(32, 32), weights=None)
        dtypes = {layer.dtype_policy.compute_dtype for layer in extractor.model._flatten_layers()}
        assert dtypes == {"float32"} and keras.config.dtype_policy().name == "mixed_bfloat16"
    finally:
        keras.config.set_dtype_policy("float32")
