"""Shared test fixtures: the real Flickr8k captions file when present, quiet TensorFlow."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
FLICKR8K_CAPTIONS = Path(
    os.environ.get("FLICKR8K_CAPTIONS", REPO.parent / "shared" / "data" / "flickr8k_captions.txt")
)


@pytest.fixture(scope="session")
def flickr8k_captions() -> Path:
    if not FLICKR8K_CAPTIONS.is_file():
        pytest.skip(f"real Flickr8k captions not found at {FLICKR8K_CAPTIONS} (set FLICKR8K_CAPTIONS)")
    return FLICKR8K_CAPTIONS


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> Path:
    """A small generated demo set (120 images of 32 px), shared by the end-to-end tests."""
    from training.data.demo import generate_demo_dataset

    out = tmp_path_factory.mktemp("demo")
    generate_demo_dataset(out, num_images=120, seed=1, image_size=32)
    return out
