"""Tests for the Kaggle helpers on a fake /kaggle/input tree."""

import pytest
import yaml

from training.configs import load_config
from training.kaggle_utils import create_kaggle_config, find_datasets, setup_kaggle_training

# Copied from the seed README's Kaggle notebook template (Cell 3); it must run as written.
README_KAGGLE_CELL = """
from training.kaggle_utils import create_kaggle_config, setup_kaggle_training
create_kaggle_config()
env_info = setup_kaggle_training(verbose=True)
"""


def add_flickr8k(root):
    images = root / "flickr8k" / "Images"
    images.mkdir(parents=True)
    (images / "1000268201_693b08cb0e.jpg").write_bytes(b"jpg")
    (root / "flickr8k" / "captions.txt").write_text("image,caption\n1000268201_693b08cb0e.jpg,A child .\n")
    return root / "flickr8k"


def add_flickr30k(root):
    # The Kaggle 'flickr-image-dataset' layout: the image folder is nested in a folder of the same name.
    base = root / "flickr-image-dataset" / "flickr30k_images"
    (base / "flickr30k_images").mkdir(parents=True)
    (base / "flickr30k_images" / "1000092795.jpg").write_bytes(b"jpg")
    (base / "results.csv").write_text("image_name| comment_number| comment\n1000092795.jpg| 0| Two men .\n")
    return base


def add_glove(root, dim, folder="glove6b200d"):
    (root / folder).mkdir(parents=True, exist_ok=True)
    path = root / folder / f"glove.6B.{dim}d.txt"
    path.write_text("the " + " ".join(["0.1"] * dim) + "\n")
    return path


def test_flickr8k_and_glove_give_a_loadable_config(tmp_path):
    root = tmp_path / "input"
    dataset = add_flickr8k(root)
    glove = add_glove(root, 200)
    output = create_kaggle_config(
        input_root=root, working_dir=tmp_path / "working", output_path=tmp_path / "out" / "config.kaggle.yaml"
    )
    config = load_config(output)
    assert config.data.images_path == str(dataset / "Images")
    assert config.data.captions_file == str(dataset / "captions.txt")
    assert config.data.captions_format == "flickr8k_csv"
    assert config.data.glove_path == str(glove)
    assert config.data.artifacts_dir == str(tmp_path / "working")
    assert config.model.embedding_dim == 200
    assert config.training.batch_size == 64  # everything else comes from training/config.yaml
    assert [p.name for p in output.parent.iterdir()] == ["config.kaggle.yaml"]  # written atomically


def test_embedding_dim_follows_the_glove_file(tmp_path):
    root = tmp_path / "input"
    add_flickr8k(root)
    add_glove(root, 50, folder="glove50")
    config = load_config(create_kaggle_config(input_root=root, output_path=tmp_path / "c.yaml"))
    assert config.model.embedding_dim == 50 and config.data.glove_path.endswith("glove.6B.50d.txt")

    add_glove(root, 300, folder="glove300")
    add_glove(root, 200, folder="glove200")  # several files: the configured 200-d one wins
    config = load_config(create_kaggle_config(input_root=root, output_path=tmp_path / "c.yaml"))
    assert config.model.embedding_dim == 200 and config.data.glove_path.endswith("glove.6B.200d.txt")


def test_flickr30k_is_found_and_flickr8k_preferred(tmp_path):
    root = tmp_path / "input"
    base = add_flickr30k(root)
    add_glove(root, 200)
    config = load_config(create_kaggle_config(input_root=root, output_path=tmp_path / "c.yaml"))
    assert config.data.images_path == str(base / "flickr30k_images")
    assert config.data.captions_file == str(base / "results.csv")
    assert config.data.captions_format == "flickr30k"

    add_flickr8k(root)
    config = load_config(create_kaggle_config(input_root=root, output_path=tmp_path / "c.yaml"))
    assert config.data.captions_file.endswith("flickr8k/captions.txt")
    assert find_datasets(root)["flickr30k"]["captions_file"] == base / "results.csv"


def test_missing_glove_trains_embeddings_from_scratch(tmp_path):
    root = tmp_path / "input"
    add_flickr8k(root)
    config = load_config(create_kaggle_config(input_root=root, output_path=tmp_path / "c.yaml"))
    assert config.data.glove_path is None and config.model.train_embeddings is True


def test_no_dataset_is_a_clear_error_and_writes_nothing(tmp_path):
    root = tmp_path / "input"
    add_glove(root, 200)
    output = tmp_path / "c.yaml"
    with pytest.raises(FileNotFoundError) as error:
        create_kaggle_config(input_root=root, output_path=output)
    message = str(error.value)
    assert str(root) in message and "Images/ and captions.txt" in message and "results.csv" in message
    assert not output.exists()
    with pytest.raises(FileNotFoundError, match="no captioning dataset found under .*does-not-exist"):
        create_kaggle_config(input_root=tmp_path / "does-not-exist", output_path=output)


def test_readme_kaggle_cell_runs_with_the_env_override(tmp_path, monkeypatch, capsys):
    root = tmp_path / "input"
    add_flickr8k(root)
    add_glove(root, 200)
    monkeypatch.setenv("KAGGLE_INPUT_ROOT", str(root))
    monkeypatch.chdir(tmp_path)  # not the repo root: the packaged training/config.yaml is the base
    namespace = {}
    exec(README_KAGGLE_CELL, namespace)

    raw = yaml.safe_load((tmp_path / "training" / "config.kaggle.yaml").read_text())
    assert raw["artifacts_dir"] == "/kaggle/working"
    assert load_config(tmp_path / "training" / "config.kaggle.yaml").data.images_path == str(root / "flickr8k" / "Images")
    env_info = namespace["env_info"]
    assert env_info["input_datasets"] == ["flickr8k", "glove6b200d"]
    assert env_info["tensorflow_version"].startswith("2.") and isinstance(env_info["gpus"], list)
    assert "tensorflow_version: 2." in capsys.readouterr().out
    assert set(setup_kaggle_training(verbose=False)) == {
        "on_kaggle",
        "tensorflow_version",
        "gpus",
        "input_root",
        "input_datasets",
    }


def add_file(root, relative, text="{}"):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_attached_backbone_weights_become_extractor_weights(tmp_path):
    import h5py

    root = tmp_path / "input"
    add_flickr8k(root)
    add_glove(root, 200)
    create_kaggle_config(input_root=root, output_path=tmp_path / "online.yaml")
    assert load_config(tmp_path / "online.yaml").model.extractor_weights == "imagenet"  # nothing attached: downloads

    weights = root / "keras-weights" / "efficientnetb3_notop.h5"  # the base config's EfficientNetB3, as keras names it
    for path in (weights, root / "other" / "efficientnetb0_notop.h5"):  # another backbone's file is not taken
        path.parent.mkdir(parents=True)
        with h5py.File(path, "w") as handle:
            handle.create_dataset("kernel", data=[1.0])
    create_kaggle_config(input_root=root, output_path=tmp_path / "offline.yaml")
    assert load_config(tmp_path / "offline.yaml").model.extractor_weights == str(weights)


def test_an_attached_keras_hub_preset_becomes_the_extractor(tmp_path):
    root = tmp_path / "input"
    add_flickr8k(root)
    base = tmp_path / "base.yaml"
    base.write_text(
        yaml.safe_dump(
            {"feature_extractor": "keras_hub:dinov2_small", "image_size": [224, 224], "feature_dim": 384, "glove_path": None}
        )
    )
    for preset in ("dinov2_base", "dinov2_small"):  # a Kaggle model: <model>/keras/<preset>/<version>/
        for name in ("config.json", "model.weights.h5"):
            add_file(root, f"dinov2/keras/{preset}/1/{name}")
    create_kaggle_config(input_root=root, output_path=tmp_path / "config.yaml", base_config=base)
    config = load_config(tmp_path / "config.yaml")
    assert config.model.feature_extractor == f"keras_hub:{root / 'dinov2' / 'keras' / 'dinov2_small' / '1'}"
    assert config.model.extractor_weights == "imagenet"  # the preset's own weights
