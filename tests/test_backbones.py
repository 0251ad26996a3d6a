"""Real backbones the whole way: a keras.applications network from a weights file and keras-hub's CLIP, SigLIP
and DINOv2 encoders (tiny configs, random weights saved as local presets: nothing is downloaded).

Each of the two end-to-end runs (MobileNetV3Small, CLIP) is trained once for the module on JPEG copies of the
demo images, then captioned by `training.caption`, exported by `training.export` (the .keras file in a fresh
process, the SavedModel in one that cannot import the package, both with the backbone's weights file or preset
folder moved away) and served by `training.serve` on 127.0.0.1: every one must give the captions of the stored
features.
"""

import json
import shutil

import numpy as np
import pytest
from helpers import REPO, run_python, save_keras_application, saved_model_captions, served_captions, serving, write_config
from PIL import Image

keras_hub = pytest.importorskip("keras_hub", reason="keras-hub is installed by `make install` (pyproject.toml)")

IMAGES = 6  # captioned by every route


# -- backbones the tests make ------------------------------------------------------------------------

TINY = dict(patch_size=8, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32)
TEXT = dict(
    vocabulary_size=10, embedding_dim=16, hidden_dim=16, num_layers=1, num_heads=2, intermediate_dim=32, max_sequence_length=8
)
# Each family's normalisation as its published presets' image converters have it.
CLIP_MEAN, CLIP_STD = np.array([0.48145466, 0.4578275, 0.40821073]), np.array([0.26862954, 0.26130258, 0.27577711])
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def save_preset(kind, folder, size=32, seed=0):
    """A tiny keras-hub backbone of `kind` with random weights and its image converter, as a local preset folder."""
    import keras

    keras.utils.set_random_seed(seed)
    models, layers = keras_hub.models, keras_hub.layers
    shape = (size, size, 3)
    if kind == "clip":
        backbone = models.CLIPBackbone(
            models.CLIPVisionEncoder(**TINY, image_shape=shape), models.CLIPTextEncoder(**TEXT), projection_dim=8
        )
        converter = layers.CLIPImageConverter(
            image_size=(size, size), scale=list(1 / (255 * CLIP_STD)), offset=list(-CLIP_MEAN / CLIP_STD)
        )
    elif kind == "siglip":
        backbone = models.SigLIPBackbone(models.SigLIPVisionEncoder(**TINY, image_shape=shape), models.SigLIPTextEncoder(**TEXT))
        converter = layers.SigLIPImageConverter(image_size=(size, size), scale=1 / 127.5, offset=-1.0)
    else:
        backbone = models.DINOV2Backbone(**TINY, num_register_tokens=2, image_shape=shape, position_embedding_shape=shape)
        converter = layers.DINOV2ImageConverter(
            image_size=(size, size), scale=list(1 / (255 * IMAGENET_STD)), offset=list(-IMAGENET_MEAN / IMAGENET_STD)
        )
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="module")
def jpeg_data(demo_data, tmp_path_factory):
    """The demo set with every image re-saved as a JPEG (and the captions file naming them)."""
    folder = tmp_path_factory.mktemp("jpeg_demo")
    (folder / "Images").mkdir()
    for png in (demo_data / "Images").glob("*.png"):
        Image.open(png).convert("RGB").save(folder / "Images" / f"{png.stem}.jpg", quality=95)
    (folder / "captions.txt").write_text((demo_data / "captions.txt").read_text().replace(".png,", ".jpg,"))
    shutil.copy(demo_data / "glove.demo.50d.txt", folder)
    return folder


# -- keras-hub extractors ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["clip", "siglip", "dinov2"])
def test_keras_hub_patch_tokens_are_the_regions_with_the_presets_normalisation(kind, tmp_path):
    from training.features import get_feature_extractor

    preset = save_preset(kind, tmp_path / kind)
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    converter = keras_hub.layers.ImageConverter.from_preset(str(preset))
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    extractor = get_feature_extractor(f"keras_hub:{preset}", image_size=(32, 32))
    np.testing.assert_allclose(extractor.preprocess(images), converter(images), rtol=1e-5, atol=1e-5)

    pixels = converter(images)
    encoder = getattr(backbone, "vision_encoder", backbone)
    if kind == "siglip":  # no class token: the tokens before the pooling head, which gives the pooled vector
        import keras

        tokens = keras.Model(encoder.input, encoder.post_layer_norm.output).predict({"images": pixels}, verbose=0)
        patches, pooled = tokens, encoder.predict({"images": pixels}, verbose=0)
    else:
        tokens = encoder.predict({"images": pixels}, verbose=0)
        patches, pooled = tokens[:, 1 + (2 if kind == "dinov2" else 0) :], tokens[:, 0]  # DINOv2: 2 register tokens
    assert extractor.grid_shape == (4, 4) and extractor.feature_dim == 16
    np.testing.assert_allclose(
        extractor.predict_batch(extractor.preprocess(images)).numpy(),
        patches.reshape(2, 16, 16).astype(np.float16),
        rtol=2e-3,
        atol=2e-3,
    )
    with_class = get_feature_extractor(f"keras_hub_cls:{preset}", image_size=(32, 32))
    features = with_class.predict_batch(with_class.preprocess(images)).numpy()
    assert with_class.grid_shape == (1, 17)
    np.testing.assert_allclose(features[:, -1], pooled.astype(np.float16), rtol=2e-3, atol=2e-3)

    with pytest.raises(ValueError, match=r"'image_size': .* takes \[32, 32\] px images, not \[64, 64\]: set image_size"):
        get_feature_extractor(f"keras_hub:{preset}", image_size=(64, 64)).model


def test_a_moved_keras_hub_preset_keeps_its_feature_store(tmp_path):
    from training.features import FeatureStore, get_feature_extractor
    from training.features.store import FeatureStoreConflict

    names = [f"{i}.jpg" for i in range(3)]
    (tmp_path / "images").mkdir()
    for i, name in enumerate(names):
        Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(tmp_path / "images" / name)
    preset = save_preset("dinov2", tmp_path / "dinov2_tiny")
    first = FeatureStore.build(
        tmp_path / "store",
        get_feature_extractor(f"keras_hub:{preset}", image_size=(32, 32)),
        names,
        tmp_path / "images",
        verbose=0,
    )
    moved = shutil.move(preset, tmp_path / "attached" / "dinov2_tiny")
    again = FeatureStore.build(
        tmp_path / "store",
        get_feature_extractor(f"keras_hub:{moved}", image_size=(32, 32)),
        names,
        tmp_path / "images",
        verbose=0,
    )
    assert (first.extracted, again.reused, again.extracted, again.fingerprint) == (3, 3, 0, first.fingerprint)
    other = save_preset("dinov2", tmp_path / "other" / "dinov2_tiny", seed=1)  # same name, other weights
    with pytest.raises(FeatureStoreConflict, match="model.weights.h5"):
        FeatureStore.build(
            tmp_path / "store",
            get_feature_extractor(f"keras_hub:{other}", image_size=(32, 32)),
            names,
            tmp_path / "images",
            verbose=0,
        )


def test_a_moved_weights_file_or_preset_folder_is_the_same_run(tmp_path, monkeypatch):
    from training.configs import load_config
    from training.run.lifecycle import run_identity

    def identity(weights, extractor):
        return run_identity(
            load_config(
                REPO / "training" / "config.yaml",
                [f"extractor_weights={weights}", f"feature_extractor={extractor}", "glove_path=null"],
            ).with_absolute_paths()
        )

    for folder in ("here", "moved"):
        (tmp_path / folder / "dinov2_tiny").mkdir(parents=True)
        for name in ("config.json", "image_converter.json", "model.weights.h5", "weights.h5"):
            (tmp_path / folder / ("" if name == "weights.h5" else "dinov2_tiny") / name).write_text(name)
    monkeypatch.chdir(tmp_path)  # relative paths: absolute in the run's config
    here = identity("here/weights.h5", "keras_hub:here/dinov2_tiny")
    assert here == identity(tmp_path / "moved" / "weights.h5", f"keras_hub:{tmp_path / 'moved' / 'dinov2_tiny'}")
    assert here["extractor_weights"].startswith("file of 10 bytes, sha256 ")
    (tmp_path / "moved" / "weights.h5").write_text("retrained")
    assert identity("moved/weights.h5", "keras_hub:here/dinov2_tiny")["extractor_weights"] != here["extractor_weights"]
    (tmp_path / "moved" / "dinov2_tiny" / "model.weights.h5").write_text("retrained")
    assert identity("here/weights.h5", "keras_hub:moved/dinov2_tiny")["feature_extractor"] != here["feature_extractor"]
    config = load_config(REPO / "training" / "config.yaml", ["feature_extractor=keras_hub:here/dinov2_tiny"])
    assert config.with_absolute_paths().model.feature_extractor == f"keras_hub:{tmp_path / 'here' / 'dinov2_tiny'}"


TRAIN_AND_CAPTION = """
import json, sys
import numpy as np
from training import Captioner
from training.features import FeatureStore
from training.train import TrainingPipeline

run = TrainingPipeline(sys.argv[1]).run()["artifacts_dir"]
store, captioner = FeatureStore.open(run), Captioner.from_artifacts(run)
names = store.image_ids[:{images}]
paths = [f"{{sys.argv[2]}}/{{name}}" for name in names]
stored = np.stack([store.get(name) for name in names])
print(json.dumps(dict(grid=list(store.grid_shape), same_features=bool(np.allclose(captioner.features(paths), stored, atol=1e-2)),
                      from_images=[c.text for c in captioner.caption(paths)], from_store=[c.text for c in captioner.caption(stored)])))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name", ["keras_hub:siglip", "keras_hub_cls:dinov2"])
def test_siglip_and_dinov2_extract_train_and_caption(name, jpeg_data, tmp_path):
    prefix, _, kind = name.partition(":")
    preset = save_preset(kind, tmp_path / kind)
    config = write_config(
        tmp_path / "config.yaml",
        jpeg_data,
        tmp_path / "run",
        feature_extractor=f"{prefix}:{preset}",
        extractor_weights="imagenet",
        image_size=[32, 32],
        feature_dim=16,
        epochs=1,
        max_images=40,
    )
    done = run_python(["-c", TRAIN_AND_CAPTION.format(images=IMAGES), str(config), str(jpeg_data / "Images")])
    found = json.loads(done.stdout.splitlines()[-1])
    assert found["grid"] == ([1, 17] if prefix == "keras_hub_cls" else [4, 4])
    assert found["same_features"] and found["from_images"] == found["from_store"]
    assert all(found["from_images"])


# -- the whole way: extraction, training, caption, export, SavedModel, service ---------------------------


@pytest.fixture(scope="module", params=["MobileNetV3Small", "keras_hub:clip"])
def trained(request, jpeg_data, tmp_path_factory):
    """(run folder, JPEG paths, {path: (caption, score)} from `training.caption`) of one backbone, trained once."""
    work = tmp_path_factory.mktemp(request.param.replace(":", "_"))
    if request.param == "MobileNetV3Small":  # a weights file, as an offline machine is given it: 2x2 regions at 64 px
        from training.features import get_feature_extractor

        paths = sorted(str(p) for p in (jpeg_data / "Images").glob("*.jpg"))
        pixels = np.concatenate(list(get_feature_extractor("MobileNetV3Small", image_size=(64, 64)).dataset(paths)))
        weights = save_keras_application(work / "weights" / "mobilenet_v3_small.weights.h5", pixels)
        backbone = dict(
            feature_extractor="MobileNetV3Small", image_size=[64, 64], feature_dim=576, extractor_weights=str(weights)
        )
    else:  # a local preset folder, the preset's own weights: 4x4 regions at 32 px
        weights = save_preset("clip", work / "clip_tiny")
        backbone = dict(
            feature_extractor=f"keras_hub:{weights}", image_size=[32, 32], feature_dim=16, extractor_weights="imagenet"
        )
    config = write_config(work / "config.yaml", jpeg_data, work / "run", epochs=2, **backbone)
    run_python(["-m", "training.train", "--config", str(config)])
    images = sorted(str(p) for p in (jpeg_data / "Images").glob("*.jpg"))[:IMAGES]
    done = run_python(["-m", "training.caption", *images, "--artifacts", str(work / "run"), "--json"])
    reference = {r["image"]: (r["caption"], r["score"]) for r in json.loads(done.stdout)}
    return work / "run", images, reference, weights


@pytest.mark.slow
def test_caption_export_saved_model_and_service_agree_with_the_stored_features(trained, tmp_path):
    run, images, reference, weights = trained
    texts = [reference[path][0] for path in images]
    assert all(texts)

    out = tmp_path / "export"
    run_python(["-m", "training.export", "--artifacts", str(run), "--out", str(out)])
    shutil.move(weights, tmp_path / "away")  # the exported files carry the backbone: its weights file or preset folder
    code = f"""
import json, keras, numpy as np
from pathlib import Path
from training import Captioner
from training.features import FeatureStore
captioner = keras.saving.load_model({str(out / "captioner.keras")!r})
store = FeatureStore.open({str(run)!r})
stored = np.stack([store.get(Path(p).name) for p in {images!r}])
print(json.dumps(dict(files=[c.text for c in captioner.caption({images!r})], store=[c.text for c in captioner.caption(stored)])))
"""
    loaded = json.loads(run_python(code).stdout.splitlines()[-1])
    assert loaded["files"] == texts and loaded["store"] == texts  # the backbone in the .keras file is the store's

    saved = saved_model_captions(out / "saved_model", images)
    assert [text for text, _ in saved] == texts
    assert [score for _, score in saved] == pytest.approx([reference[p][1] for p in images], abs=1e-4)

    shutil.move(tmp_path / "away", weights)  # the service loads the run, which needs it
    with serving(run, "--max-batch", "4") as (url, _):
        answers = served_captions(url, images, "image/jpeg")
    assert [a["caption"] for a in answers] == texts
    assert [a["score"] for a in answers] == pytest.approx([reference[p][1] for p in images], abs=1e-4)


# -- a weights file the run cannot use stops it before anything is written --------------------------


@pytest.mark.slow
def test_a_missing_damaged_or_foreign_weights_file_is_one_line_and_exit_2(jpeg_data, tmp_path):
    noise = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype(np.float32)
    good = save_keras_application(tmp_path / "mobilenet.weights.h5", noise)
    truncated = tmp_path / "truncated.weights.h5"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (tmp_path / "text.h5").write_text("not HDF5\n")
    foreign = save_keras_application(tmp_path / "efficientnet.weights.h5", noise, application="EfficientNetB0")
    cases = [
        (tmp_path / "nowhere.weights.h5", "'extractor_weights': file not found"),
        (truncated, "is not a readable HDF5 weights file"),
        (tmp_path / "text.h5", "is not a readable HDF5 weights file"),
        (tmp_path / "weights.bin", "'extractor_weights' must be 'imagenet', null or the path of a weights file"),
        (foreign, "does not load into MobileNetV3Small"),
    ]
    for number, (weights, message) in enumerate(cases):
        artifacts = tmp_path / f"run{number}"
        config = write_config(
            tmp_path / f"config{number}.yaml",
            jpeg_data,
            artifacts,
            feature_extractor="MobileNetV3Small",
            image_size=[64, 64],
            feature_dim=576,
            extractor_weights=str(weights),
        )
        done = run_python(["-m", "training.train", "--config", str(config)], check=False)
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert done.returncode == 2 and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
        assert "Traceback" not in done.stderr
        # Nothing written: no run folder, or (for a file only the backbone can judge) only its lock.
        assert not artifacts.exists() or not [p.name for p in artifacts.iterdir() if not p.name.startswith(".")]
