"""ConvEncoder: a conv net on PatchGrid's pixels trains with the decoder inside the caption model, on a PatchGrid
store, and the saved run captions alike through `training.caption`, the export and the service."""

import json

import numpy as np
import pytest
import yaml
from helpers import run_python, tiny_config, train_with_callback
from test_fine_tune import RECORD_OR_KILL, assert_export_and_service_agree
from test_long_runs import metrics

IMAGES = 6


@pytest.fixture(scope="module")
def conv_run(demo_data, tmp_path_factory):
    """A PatchGrid run, then a ConvEncoder run on its feature store: (the ConvEncoder run's artifacts_dir, its
    encoder's weights by epoch, what the two runs printed)."""
    folder = tmp_path_factory.mktemp("conv")
    settings = dict(max_images=60, epochs=3, eval_max_images=IMAGES, features_dir=str(folder / "store"))
    patch = folder / "patch.yaml"
    patch.write_text(yaml.safe_dump(tiny_config(demo_data, folder / "patch", **settings)))
    patch_run = run_python(["-m", "training.train", "--config", str(patch)])
    conv = folder / "conv.yaml"
    settings.update(feature_extractor="ConvEncoder", encoder_filters=[8, 16])  # 32 px: 4x4 regions of 16 + 192 channels
    conv.write_text(yaml.safe_dump(tiny_config(demo_data, folder / "conv", **settings)))
    conv_run = train_with_callback(RECORD_OR_KILL, conv, folder / "weights.json", "none")
    assert conv_run.returncode == 0, conv_run.stderr[-3000:]
    weights = json.loads((folder / "weights.json").read_text())
    return folder / "conv", weights, patch_run.stderr + conv_run.stderr


def test_the_encoder_trains_with_the_decoder_on_a_patch_grid_store(conv_run):
    artifacts, seen, output = conv_run
    assert "(ConvEncoder): 60 image(s) reused, 0 extracted" in output  # PatchGrid's store serves it
    assert all(a != b for a, b in zip(seen["1"], seen["start"])) and all(a != b for a, b in zip(seen["3"], seen["2"]))
    losses = [float(row["train_loss"]) for row in metrics(artifacts)]
    assert losses[-1] < losses[0]


def test_the_saved_model_holds_the_trained_encoder(conv_run):
    code = f"""
import json, numpy as np
from training import load_model
model = load_model({str(conv_run[0] / "image_caption_model_final.keras")!r})
encoder = model.image_encoder
print(json.dumps(dict(kind=type(encoder).__name__, filters=list(encoder.filters), grid=list(encoder.grid),
                      weights=[float(np.abs(np.asarray(w.numpy(), "float64")).sum()) for w in encoder.trainable_weights])))
"""
    found = json.loads(run_python(code).stdout.splitlines()[-1])
    assert found["kind"] == "PatchConvEncoder" and found["filters"] == [8, 16] and found["grid"] == [4, 4]
    # The final model is the best checkpoint, of one of the three epochs.
    assert any(np.allclose(found["weights"], conv_run[1][epoch]) for epoch in ("1", "2", "3"))


def test_decode_bench_reports_the_encoders_own_time(conv_run):
    done = run_python(
        ["bench/decode.py", "--artifacts", str(conv_run[0]), "--images", "8", "--batch-size", "4", "--runs", "1"], timeout=900
    )
    encoder = json.loads(done.stdout.strip().splitlines()[-1])["image_encoder"]
    assert encoder["name"] == "PatchConvEncoder" and encoder["seconds"] > 0 and encoder["share_of_beam3"] > 0
    assert "its image encoder (PatchConvEncoder) alone" in done.stdout


def test_caption_command_export_and_service_give_the_captions_of_the_test_split(conv_run, demo_data, tmp_path):
    artifacts = conv_run[0]
    rows = json.loads((artifacts / "predictions_test.json").read_text())["captions"]
    expected = {row["image_id"]: row["prediction"] for row in rows}
    images = [str(demo_data / "Images" / name) for name in sorted(expected)]
    done = run_python(["-m", "training.caption", *images, "--artifacts", str(artifacts), "--json"])
    captioned = [(r["caption"], r["score"]) for r in json.loads(done.stdout)]
    assert [text for text, _ in captioned] == [expected[name] for name in sorted(expected)]  # the run's own captions
    assert_export_and_service_agree(artifacts, images, captioned, tmp_path)


def augmentation_builder(augment, seed=3):
    from training.data.dataset import DatasetBuilder
    from training.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_vocabulary(["<pad>", "<unk>", "startseq", "endseq", "a", "red", "circle"])
    pixels = np.random.default_rng(0).uniform(-1, 1, (6, 4, 12)).astype("float16")  # 6 images, 4 regions of 2x2 pixels
    index = {f"i{n}": n for n in range(6)}
    return DatasetBuilder(pixels, index, tokenizer, 5, batch_size=4, seed=seed, augment=augment), pixels


def first_batch(builder, **kwargs):
    captions = {f"i{n}": ["a red circle"] * 2 for n in range(6)}
    return next(iter(builder.build(captions, **kwargs)))[0][0].numpy()


def test_augmentation_keeps_hue_and_resumes_and_leaves_validation_alone():
    plain, pixels = augmentation_builder(())
    builder, _ = augmentation_builder(("brightness", "contrast"))
    seen = first_batch(builder, first_epoch=4)
    unchanged = first_batch(plain, first_epoch=4)
    assert not np.allclose(seen, unchanged) and seen.min() >= -1 and seen.max() <= 1
    np.testing.assert_array_equal(seen, first_batch(augmentation_builder(("brightness", "contrast"))[0], first_epoch=4))
    assert not np.allclose(seen, first_batch(builder, first_epoch=5))  # another epoch, other draws
    # Brightness and contrast move a pixel's three channels alike: the order of R, G and B never reverses.
    before = unchanged.reshape(-1, 3).astype("float32")
    after = seen.reshape(-1, 3)
    for a, b in ((0, 1), (1, 2), (0, 2)):
        assert np.all((before[:, a] - before[:, b]) * (after[:, a] - after[:, b]) >= -1e-6)
    np.testing.assert_array_equal(first_batch(builder, training=False), first_batch(plain, training=False))


@pytest.mark.parametrize("channels", [32, 6])
def test_group_norm_relu_is_keras_group_normalization_then_relu(channels):
    """The encoder's faster group norm gives Keras' GroupNormalization's values and gradients, on activations
    whose mean is well off zero (the variance is E[x^2] - E[x]^2) and with trained-looking gamma and beta."""
    import keras
    import tensorflow as tf

    from training.features.patches import group_norm_relu

    norm = keras.layers.GroupNormalization(int(np.gcd(channels, 8)))
    norm.build((None, 8, 8, channels))
    rng = np.random.default_rng(channels)
    norm.gamma.assign(rng.normal(size=channels).astype("float32"))
    norm.beta.assign(rng.normal(size=channels).astype("float32"))
    x = tf.constant(rng.normal(4.0, 3.0, size=(3, 8, 8, channels)).astype("float32"))
    upstream = tf.constant(rng.normal(size=(3, 8, 8, channels)).astype("float32"))

    def value_and_gradients(function):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = function(x)
            loss = tf.reduce_sum(y * upstream)
        return [y, *tape.gradient(loss, [x, norm.gamma.value, norm.beta.value])]

    ours = value_and_gradients(lambda v: group_norm_relu(v, norm))
    keras_ = value_and_gradients(lambda v: tf.nn.relu(norm(v)))
    assert float(tf.reduce_mean(tf.cast(keras_[0] > 0, tf.float32))) > 0.3  # relu leaves a real share through
    for a, b in zip(ours, keras_):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-4)
