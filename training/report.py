"""Run report: loss and learning-rate curves, a captioned test gallery and attention maps, in one HTML file.

python -m training.report --artifacts artifacts/demo [--images demo_data/Images]
"""

from __future__ import annotations

import sys
from pathlib import Path

from training import cli
from training.evaluation.loading import require_run_folder
from training.evaluation.report import build_report, write_report  # noqa: F401 - build_report: its home before


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("training.report", __doc__)
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a run")
    parser.add_argument("--images", type=Path, default=None, help="images folder (default: the run's images_path)")
    parser.add_argument("--gallery-size", type=cli.int_range(0), default=12)
    args = parser.parse_args(argv)
    cli.start(args.log_level, import_tensorflow=False)  # the report needs no TensorFlow
    return cli.run(lambda: _report(args))


def _report(args) -> int:
    require_run_folder(args.artifacts, holding="a run")
    path, missing, images_path = write_report(args.artifacts, args.images, args.gallery_size)
    print(f"report written to {path}")
    if missing:
        print(
            f"warning: {len(missing)} gallery image(s) not found in {images_path} (e.g. {missing[0]}): "
            "the report shows placeholders; pass --images with the run's images folder",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
