"""Configuration: loading, flat and sectioned forms, validation, overrides."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training.configs import Config, ConfigError, load_config, save_config
from training.configs.training_config import apply_overrides, config_from_dict

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path, data, name="config.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_shipped_configs_agree_with_their_extractor_and_make_demos_data(demo_data):
    # (Replaces tests that read values back: the seed README's feature_dim example runs in test_readme.)
    from training.features import FeatureExtractorRegistry, get_feature_extractor

    for name in ("config.yaml", "config.demo.yaml"):
        model = load_config(REPO / "training" / name).model
        extractor_class = FeatureExtractorRegistry().lookup(model.feature_extractor)
        assert model.image_size == tuple(extractor_class.DEFAULT_IMAGE_SIZE), name
        assert model.feature_dim == extractor_class.FEATURE_DIM, name  # the backbone's channels: training would stop
    demo = load_config(REPO / "training" / "config.demo.yaml")
    extractor = get_feature_extractor(demo.model.feature_extractor, image_size=demo.model.image_size, weights=None)
    assert extractor.feature_dim == demo.model.feature_dim  # the grid the demo's extractor really gives
    # `make demo` writes its data to demo_data/ (the Makefile's DEMO_DIR), where the demo config reads it.
    assert re.search(r"^DEMO_DIR \?= demo_data$", (REPO / "Makefile").read_text(), flags=re.M)
    for key in ("images_path", "captions_file", "glove_path"):
        relative = Path(getattr(demo.data, key)).relative_to("demo_data")
        assert (demo_data / relative).exists(), key
    with open(demo_data / Path(demo.data.glove_path).name) as glove:
        assert len(glove.readline().split()) == 1 + demo.model.embedding_dim


def test_flat_and_sectioned_forms_are_equal(tmp_path):
    flat = load_config(write(tmp_path, {"hidden_dim": 64, "epochs": 3, "glove_path": "g.txt"}))
    sectioned = load_config(
        write(tmp_path, {"model": {"hidden_dim": 64}, "training": {"epochs": 3}, "data": {"glove_path": "g.txt"}}, "s.yaml")
    )
    assert flat == sectioned
    assert flat.model.hidden_dim == 64 and flat.training.epochs == 3


def test_misspelt_key_names_it_and_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'hiden_dim'; did you mean 'hidden_dim'\?"):
        load_config(write(tmp_path, {"hiden_dim": 64}))
    with pytest.raises(ConfigError, match=r"'model.batch_size'.*did you mean"):
        load_config(write(tmp_path, {"model": {"batch_size": 8}}))


@pytest.mark.parametrize(
    "values, key",
    [
        ({"train_split": 0.7, "val_split": 0.2, "test_split": 0.2}, "train_split \\+ val_split \\+ test_split"),
        ({"train_split": 0.0, "val_split": 0.5, "test_split": 0.5}, "train_split"),
        ({"dropout": 1.0}, "dropout"),
        ({"learning_rate": 0}, "learning_rate"),
        ({"batch_size": 0}, "batch_size"),
        ({"hidden_dim": -4}, "hidden_dim"),
        ({"hidden_dim": 30, "num_heads": 8}, "hidden_dim"),
        ({"architecture": "gru"}, "architecture"),
        ({"captions_format": "xml"}, "captions_format"),
        ({"epochs": "ten"}, "epochs"),
        ({"use_regions": "yes"}, "use_regions"),
        ({"image_size": [300]}, "image_size"),
    ],
)
def test_bad_values_name_the_key(tmp_path, values, key):
    with pytest.raises(ConfigError, match=key):
        load_config(write(tmp_path, values))


def test_split_ratios_within_tolerance(tmp_path):
    config = load_config(write(tmp_path, {"train_split": 0.6, "val_split": 0.2, "test_split": 0.2}))
    assert config.data.train_split == 0.6


def test_type_coercion(tmp_path):
    config = load_config(write(tmp_path, "learning_rate: 1e-4\nimage_size: [224, 224]\nglove_path: null\n"))
    assert config.training.learning_rate == pytest.approx(1e-4)
    assert config.model.image_size == (224, 224)
    assert config.data.glove_path is None


def test_config_is_frozen():
    config = Config()
    with pytest.raises(AttributeError):
        config.model.hidden_dim = 3


def test_overrides(tmp_path):
    path = write(tmp_path, {"model": {"hidden_dim": 64}})
    config = load_config(path, ["epochs=3", "hidden_dim=32", "training.learning_rate=0.01", "glove_path=null"])
    assert (config.training.epochs, config.model.hidden_dim) == (3, 32)
    assert config.training.learning_rate == 0.01 and config.data.glove_path is None
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["epochs"])
    with pytest.raises(ConfigError, match="epoch"):
        load_config(path, ["epoch=3"])


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1,"))
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- 1\n- 2\n"))


def test_save_round_trip(tmp_path):
    config = config_from_dict({"hidden_dim": 32, "num_heads": 4, "epochs": 2})
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config


def test_train_command_reports_bad_key(tmp_path):
    path = write(tmp_path, {"hiden_dim": 3})
    out = subprocess.run(
        [sys.executable, "-m", "training.train", "--config", str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "hiden_dim" in out.stderr and "hidden_dim" in out.stderr


def test_config_from_dict_round_trips_and_paths_become_absolute(tmp_path):
    config = load_config("training/config.yaml", ["max_images=7", "image_size=[224, 224]"])
    assert Config.from_dict(config.to_dict()) == config
    absolute = config.with_absolute_paths(tmp_path)
    assert absolute.data.captions_file == str(tmp_path / config.data.captions_file)
    assert absolute.with_absolute_paths("/elsewhere") == absolute  # absolute paths stay as they are
    assert Config.from_dict(absolute.to_dict()) == absolute


def test_run_identity_does_not_depend_on_where_the_files_lie(tmp_path):
    from training.run.lifecycle import run_identity

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "captions.txt").write_text("image,caption\nx.jpg,a dog\n")
    here = load_config(
        "training/config.yaml",
        [
            f"captions_file={tmp_path / 'a' / 'captions.txt'}",
            "glove_path=null",
            f"images_path={tmp_path / 'a'}",
            f"artifacts_dir={tmp_path / 'a' / 'run'}",
        ],
    )
    moved = load_config(
        "training/config.yaml",
        [
            f"captions_file={tmp_path / 'b' / 'captions.txt'}",
            "glove_path=null",
            f"images_path={tmp_path / 'b'}",
            f"artifacts_dir={tmp_path / 'b' / 'run'}",
            f"features_dir={tmp_path / 'a' / 'run'}",
        ],
    )
    assert run_identity(here) == run_identity(moved)
    (tmp_path / "b" / "captions.txt").write_text("image,caption\nx.jpg,a cat\n")  # other contents: another run
    assert run_identity(here) != run_identity(moved)


def test_a_config_not_in_utf8_names_the_file_and_line(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("epochs: 3\nrun_name: café\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9 on line 2\); save the file as UTF-8"):
        load_config(path)


def test_a_folder_given_as_the_config_is_called_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="is a folder, not a config file"):
        load_config(tmp_path)


@pytest.mark.parametrize("override, example", [("data=5", "data.seed=7"), ("training=3", "training.epochs=3")])
def test_a_section_set_as_a_value_says_it_is_a_section(tmp_path, override, example):
    with pytest.raises(
        ConfigError, match=rf"'{override[:-2]}' is a section, not a value; set one of its keys, e\.g\. --set {example}"
    ):
        load_config(write(tmp_path, {"epochs": 2}), [override])


def test_the_built_in_extractor_names_are_those_training_features_registers():
    # The training command refuses another name with this list, before it imports TensorFlow.
    from training.configs.training_config import BUILT_IN_EXTRACTORS, BUILT_IN_FAMILIES
    from training.features import available_extractors

    families = [f"{family}:<preset>" for family in sorted(BUILT_IN_FAMILIES)]
    assert sorted(BUILT_IN_EXTRACTORS) + families == available_extractors()
