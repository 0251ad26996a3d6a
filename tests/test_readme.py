"""The README's Python examples run as written.

The tracking, versioning and Kaggle examples run in test_utils, test_versioning and test_kaggle,
the Captioner example in test_serving (it needs a trained run), which also check that the README
still shows them verbatim.
"""

import re

from helpers import REPO, run_python

TESTED_ELSEWHERE = ("ExperimentTracker(", "ModelVersionManager(", "kaggle_utils", "Captioner.from_artifacts")


def readme_blocks():
    text = (REPO / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_python_examples_run_as_written():
    blocks = [b for b in readme_blocks() if not any(marker in b for marker in TESTED_ELSEWHERE)]
    assert len(blocks) >= 4, "the README lost its examples"
    script = "\n\n".join(blocks) + (
        "\n\nfrom training.features import get_feature_extractor as _get"
        "\nassert _get('MyModel', weights=None).model.output_shape[-1] == 2048"
        "\nassert pipeline.callbacks and config.model.feature_dim == 1536"
        "\nprint('examples ran')"
    )
    done = run_python(script, cwd=REPO)
    assert "1536" in done.stdout and "examples ran" in done.stdout


def test_the_readme_stays_short_and_its_architecture_names_every_module():
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 400, "the README grew past 400 lines: move detail to docs/ or bench/RESULTS.md"
    tree = text.split("## Architecture")[1].split("\n## ")[0]
    modules = sorted(p.relative_to(REPO / "training") for p in (REPO / "training").rglob("*.py") if p.name != "__init__.py")
    missing = [str(m) for m in modules if m.name not in tree]
    assert not missing, f"the README's Architecture tree does not name {missing}"
    for folder in sorted({m.parts[0] for m in modules if len(m.parts) > 1}):
        assert f"{folder}/" in tree, f"the README's Architecture tree does not show the package {folder}/"
