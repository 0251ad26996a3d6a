"""Run report: scores, loss and learning-rate curves, a captioned test gallery and attention maps, in one HTML file."""

from __future__ import annotations

import base64
import html
import io
import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image, UnidentifiedImageError

from training.evaluation.diversity import collapse_warning, epoch_warnings
from training.run.artifacts import (
    CAPTION_METRICS_CURVE,
    GALLERY_IMAGE,
    LOSS_CURVE,
    LR_CURVE,
    METRICS_FILE,
    REPORT_FILE,
    attention_strip_name,
    predictions_name,
    read_features_index,
    read_metrics,
    read_predictions,
    read_snapshot,
    read_summary,
)
from training.run.mlflow_logging import flatten_config
from training.utils.io import atomic_path, atomic_write_text

SCORE_NAMES = {
    "bleu1": "BLEU-1",
    "bleu2": "BLEU-2",
    "bleu3": "BLEU-3",
    "bleu4": "BLEU-4",
    "coco_bleu1": "BLEU-1 (coco-caption)",
    "coco_bleu2": "BLEU-2 (coco-caption)",
    "coco_bleu3": "BLEU-3 (coco-caption)",
    "coco_bleu4": "BLEU-4 (coco-caption)",
    "meteor": "METEOR",
    "rouge_l": "ROUGE-L",
    "cider": "CIDEr",
    "object_precision": "object precision",
    "object_recall": "object recall",
    "count_accuracy": "count accuracy",
    "chair_i": "CHAIR-i (mentions not in the image)",
    "chair_s": "CHAIR-s (captions naming one)",
    "distinct_share": "distinct captions (share)",
    "vocab_used": "words used",
}
CONFIG_SUMMARY = {
    "data": ("images_path", "captions_file", "captions_format"),
    "model": ("architecture", "feature_extractor", "image_size", "hidden_dim", "num_layers"),
    "training": ("epochs", "batch_size", "learning_rate", "beam_size"),
}
THUMB = 256  # longest side of images drawn in the report; keeps report.html small
STRIP_COLUMNS = 8  # panels per row of an attention strip
PLACEHOLDER = np.full((THUMB, THUMB, 3), 200, np.uint8)  # stands in for a missing image, so layouts keep their shape


def _read_metrics(path: Path) -> dict[str, list]:
    rows = read_metrics(path)
    # An empty cell is a metric that epoch did not log: NaN, which matplotlib draws as a gap.
    # The training `stage` (xe, scst; none in runs older than SCST) is text: it splits the curves.
    metrics = {
        column: [float("nan") if row.get(column) is None else float(row[column]) for row in rows]
        for column in (rows[0] if rows else {})
        if column != "stage"
    }
    metrics["stage"] = [row.get("stage") or "xe" for row in rows]
    return metrics


def _show(value) -> str:
    """A score as the report shows it: 4 decimals, or n/a where it does not apply (e.g. nothing to count)."""
    return f"{value:.4f}" if isinstance(value, float) else "n/a" if value is None else str(value)


def _save(figure: Figure, path: Path) -> Path:
    # A bare Figure (no pyplot) never joins pyplot's global registry, so it needs no close and no backend switch.
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    return path


def _plot(axes, epochs: list[float], series: dict[str, list[float]], ylabel: str, title: str | None = None) -> None:
    for label, values in series.items():
        axes.plot(epochs, values, marker="o", label=label)
    axes.set(xlabel="epoch", ylabel=ylabel, title=title)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend()


def _curve(path: Path, epochs: list[float], series: dict[str, list[float]], ylabel: str, scst_from: float | None = None) -> Path:
    figure = Figure(figsize=(6, 3.5))
    axes = figure.add_subplot()
    _plot(axes, epochs, series, ylabel)
    if scst_from is not None:  # one curve over both stages: where the second begins
        axes.axvline(scst_from - 0.5, color="grey", linestyle="--", linewidth=1)
        axes.text(scst_from - 0.5, 1.0, "SCST", transform=axes.get_xaxis_transform(), va="bottom", color="grey")
    return _save(figure, path)


def loss_panels(metrics: dict[str, list]) -> list[tuple[str, list[float], dict[str, list[float]], str]]:
    """(title, epochs, curves, y label) of each stage: the cross-entropy losses, then SCST's mean reward and
    policy loss (-advantage x log-prob: negative whenever the samples beat their baseline, not a cross-entropy)."""
    panels = []
    for stage, title, names, ylabel in (
        ("xe", "cross-entropy", {"train_loss": "train_loss", "val_loss": "val_loss"}, "loss"),
        ("scst", "SCST", {"reward": "mean reward (CIDEr-D)", "train_loss": "policy loss"}, "value"),
    ):
        rows = [i for i, s in enumerate(metrics["stage"]) if s == stage]
        if rows:
            curves = {label: [metrics[name][i] for i in rows] for name, label in names.items() if name in metrics}
            panels.append((title, [metrics["epoch"][i] for i in rows], curves, ylabel))
    return panels


def _loss_curves(path: Path, metrics: dict[str, list]) -> Path:
    """The stages side by side, each in a panel of its own."""
    panels = loss_panels(metrics)
    figure = Figure(figsize=(6 * len(panels), 3.5))
    for axes, (title, epochs, curves, ylabel) in zip(figure.subplots(1, len(panels), squeeze=False)[0], panels):
        _plot(axes, epochs, curves, ylabel, title if len(panels) > 1 else None)
    return _save(figure, path)


def _load_image(images_path: Path | None, image_id: str) -> Image.Image | None:
    if images_path is None:
        return None
    try:
        with Image.open(images_path / image_id) as image:
            image = image.convert("RGB")
    except (OSError, UnidentifiedImageError):
        return None  # missing or unreadable: the report notes it instead
    scale = THUMB / max(image.size)  # up as well as down: the demo's 64 px scenes would be specks
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.BICUBIC)


def _heatmap(weights: list[float], grid_shape: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
    grid = np.asarray(weights, dtype=np.float32).reshape(grid_shape)
    # PIL's bilinear resize of a float image: each region's weight spread smoothly over its pixels.
    return np.asarray(Image.fromarray(grid).resize(size, Image.Resampling.BILINEAR))


def _grid_shape(index: dict | None, regions: int) -> tuple[int, int] | None:
    shape, side = tuple((index or {}).get("grid_shape") or ()), math.isqrt(regions)
    for candidate in (shape, (side, side)):  # the store's grid first; older stores only have square grids
        if len(candidate) == 2 and candidate[0] * candidate[1] == regions:
            return candidate
    return None


def _attention_strip(path: Path, image: Image.Image | None, words: list[str], attention: list, grid_shape) -> Path:
    base = np.asarray(image if image is not None else PLACEHOLDER)
    height, width = base.shape[:2]
    columns = min(STRIP_COLUMNS, len(attention) + 1)
    rows = math.ceil((len(attention) + 1) / columns)  # long captions wrap instead of shrinking to specks
    figure = Figure(figsize=(1.8 * columns, 2.0 * rows))
    panels = figure.subplots(rows, columns, squeeze=False).ravel()
    panels[0].imshow(base)
    panels[0].set_title("image" if image is not None else "image missing", fontsize=9)
    for axes, word, weights in zip(panels[1:], words + ["?"] * len(attention), attention):
        heat = _heatmap(weights, grid_shape, (width, height))
        axes.imshow(base)
        axes.imshow(heat, cmap="jet", alpha=0.5, vmin=0.0, vmax=max(float(heat.max()), 1e-8))
        axes.set_title(word, fontsize=9, parse_math=False)
    for axes in panels:
        # No ticks at all, not only hidden ones: laying out the hidden ticks of every panel took about half
        # of a strip's drawing time (figures: bench/RESULTS.md, "Choices in the code").
        axes.set(xticks=[], yticks=[])
        axes.axis("off")
    return _save(figure, path)


def _gallery(path: Path, records: list[dict], images: dict[str, Image.Image | None]) -> Path:
    columns = min(4, len(records))
    rows = math.ceil(len(records) / columns)
    figure = Figure(figsize=(3.2 * columns, 4.2 * rows))
    for position, record in enumerate(records):
        axes = figure.add_subplot(rows, columns, position + 1)
        image = images[record["image_id"]]
        axes.imshow(image if image is not None else PLACEHOLDER)
        if image is None:
            axes.text(
                0.5,
                0.5,
                f"image missing\n{record['image_id']}",
                transform=axes.transAxes,
                ha="center",
                va="center",
                parse_math=False,
            )
        axes.set(xticks=[], yticks=[])
        lines = [f"pred: {record.get('prediction', '')}"] + [f"ref: {r}" for r in record.get("references", [])[:2]]
        text = "\n".join(textwrap.fill(line, 38) for line in lines)
        axes.text(0.5, -0.03, text, transform=axes.transAxes, ha="center", va="top", fontsize=8, parse_math=False)
    figure.subplots_adjust(hspace=0.9)
    return _save(figure, path)


def _img(source: Path | Image.Image, alt: str) -> str:
    """An <img> with the PNG inline, so report.html stands alone (mail it, open it offline)."""
    buffer = io.BytesIO()
    if isinstance(source, Path):
        buffer.write(source.read_bytes())
    else:
        source.save(buffer, format="PNG")
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}" alt="{html.escape(alt)}">'


def _note(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _table(rows: list[tuple], header: tuple = ()) -> str:
    cells = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    return f"<table>{head}{cells}</table>"


def _scores(predictions: dict | None, summary: dict | None) -> dict[str, float]:
    if predictions and predictions.get("scores"):
        return predictions["scores"]
    summary = summary or {}
    scores = {k.removeprefix("test_"): v for k, v in summary.get("bleu_scores", {}).items()}
    return {**scores, **summary.get("scores", {})}


CSS = """body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1400px} .meta,.ref{color:#555}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}
.note{background:#fff4ce;border-left:4px solid #e0b000;padding:6px 10px} .curves img{max-width:48%;margin-right:1%}
.curves img:first-child{max-width:97%}
.gallery{display:flex;flex-wrap:wrap;gap:12px} .card{width:260px;border:1px solid #ddd;padding:6px;font-size:13px}
.missing{height:160px;word-break:break-all;padding:6px;background:#eee;display:flex;align-items:center;color:#a00}
.pred{font-weight:bold} .strip img{max-width:100%;margin-bottom:10px} th{background:#f2f2f2}"""


def _card(record: dict, image: Image.Image | None, images_path: Path | None) -> str:
    image_id = record["image_id"]
    picture = (
        _img(image, image_id)
        if image is not None
        else (f'<div class="missing">image not found: {html.escape(str((images_path or Path()) / image_id))}</div>')
    )
    refs = "".join(f'<div class="ref">ref: {html.escape(r)}</div>' for r in record.get("references", []))
    return (
        f'<div class="card">{picture}<div>{html.escape(image_id)}</div>'
        f'<div class="pred">{html.escape(record.get("prediction", ""))}</div>{refs}</div>'
    )


def build_report(artifacts_dir: str | Path, images_path: str | Path | None = None, gallery_size: int = 12) -> Path:
    """Write the curves, gallery, attention strips and report.html into `artifacts_dir`; return report.html."""
    return write_report(artifacts_dir, images_path, gallery_size)[0]


def write_report(artifacts_dir: str | Path, images_path: str | Path | None = None, gallery_size: int = 12):
    """build_report, and the gallery's image ids not found under images_path (and that folder)."""
    artifacts = Path(artifacts_dir)
    if not artifacts.is_dir():
        raise FileNotFoundError(f"{artifacts}: artifacts directory not found")
    summary, config = read_summary(artifacts), read_snapshot(artifacts) or {}
    predictions, index = read_predictions(artifacts), read_features_index(artifacts)
    images_path = images_path or config.get("data", {}).get("images_path")  # absolute since runs store it so
    images_path = Path(images_path) if images_path else None
    body = (
        _header(artifacts, summary) + _score_section(predictions, summary, config) + _collapse_section(artifacts, summary, config)
    )
    body += _config_section(config)
    body += _curves_section(artifacts)
    records = (predictions or {}).get("captions", [])[:gallery_size]
    images = {r["image_id"]: _load_image(images_path, r["image_id"]) for r in records}
    body += _gallery_section(artifacts, records, images, images_path) + _attention_section(artifacts, records, images, index)
    run_name = str(((summary or {}).get("metadata") or {}).get("run_name") or artifacts.name)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Run report: {html.escape(run_name)}'
        f"</title><style>{CSS}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    missing = [image_id for image_id, image in images.items() if image is None]
    return atomic_write_text(artifacts / REPORT_FILE, page), missing, images_path


def _header(artifacts: Path, summary: dict | None) -> list[str]:
    meta = (summary or {}).get("metadata", {})
    run_name = str(meta.get("run_name") or artifacts.name)
    facts = {
        "run id": meta.get("run_id"),
        "started": meta.get("started_at"),
        "finished": meta.get("finished_at"),
        "wall time (s)": meta.get("wall_time_seconds"),
        "seed": meta.get("seed"),
        "git commit": (meta.get("git_info") or {}).get("commit"),
    }
    body = [
        f"<h1>Run report: {html.escape(run_name)}</h1>",
        '<p class="meta">' + " · ".join(f"{k}: {html.escape(str(v))}" for k, v in facts.items() if v is not None) + "</p>",
    ]
    if summary is None:
        body.append(_note("run_summary.json not found: the run has not finished, or this is not an artifacts_dir."))
    return body


def _score_section(predictions: dict | None, summary: dict | None, config: dict) -> list[str]:
    """The scores of the captions the gallery shows (predictions_test.json), naming split and beam."""
    scores = _scores(predictions, summary)
    beam = (predictions or {}).get("beam_size") or config.get("training", {}).get("beam_size")
    what = f"test split, beam {beam}" if beam else "test split"
    ordered = [k for k in SCORE_NAMES if k in scores] + [k for k in scores if k not in SCORE_NAMES]
    rows = [(SCORE_NAMES.get(k, k), _show(scores[k])) for k in ordered]
    before = (summary or {}).get("scores_before_scst")
    if before and rows:  # two stages: the cross-entropy model's scores beside the final model's
        final = (summary.get("scst") or {}).get("final_model", "?")
        rows = [(name, _show(before.get(k)), value) for (name, value), k in zip(rows, ordered)]
        why = (summary.get("scst") or {}).get("final_model_reason")
        reason = [f'<p class="meta">{html.escape(why)}</p>'] if why else []
        return [
            f"<h2>Scores ({what}; final model: {html.escape(final)})</h2>",
            *reason,
            _table(rows, ("metric", "before SCST", "final")),
        ]
    return [f"<h2>Scores ({what})</h2>", _table(rows, ("metric", "value")) if rows else _note("No scores yet.")]


def collapse_warnings(artifacts: Path, summary: dict | None, config: dict) -> list[str]:
    """The run's caption-collapse warnings, as its log gave them: each epoch's validation captions (metrics.csv),
    and the final test captions (against collapse_threshold, and SCST's against the cross-entropy model's)."""
    threshold = (config.get("training") or {}).get("collapse_threshold")
    if threshold is None:  # a run from before the collapse guard
        return []
    summary = summary or {}
    stage = summary.get("scst") or {}
    found = epoch_warnings(read_metrics(artifacts / METRICS_FILE), threshold, stage.get("xe_val_distinct_share"))
    share = (summary.get("scores") or {}).get("distinct_share")
    found.append(collapse_warning(share, threshold, "the test captions"))
    before = (summary.get("scores_before_scst") or {}).get("distinct_share")
    if stage.get("final_model") == "scst":
        found.append(collapse_warning(share, 0.0, "SCST's test captions", before, "the cross-entropy model's"))
    return [w for w in found if w]


def _collapse_section(artifacts: Path, summary: dict | None, config: dict) -> list[str]:
    warnings = collapse_warnings(artifacts, summary, config)
    return ["<h2>Caption collapse</h2>", *(_note(w) for w in warnings)] if warnings else []


def _config_section(config: dict) -> list[str]:
    picked = [(f"{s}.{k}", config[s][k]) for s, keys in CONFIG_SUMMARY.items() for k in keys if k in config.get(s, {})]
    body = ["<h2>Config</h2>", _table(picked) if picked else _note("config_snapshot.json not found.")]
    if config:
        body.append(f"<details><summary>Full config</summary>{_table(flatten_config(config).items())}</details>")
    return body


def _curves_section(artifacts: Path) -> list[str]:
    metrics = _read_metrics(artifacts / METRICS_FILE)
    if not metrics.get("epoch"):
        return ["<h2>Training curves</h2>", _note("metrics.csv not found or empty: no epochs logged yet.")]
    scst = [epoch for epoch, stage in zip(metrics["epoch"], metrics["stage"]) if stage == "scst"]
    scst_from = scst[0] if scst else None
    curves = [_loss_curves(artifacts / LOSS_CURVE, metrics)]
    if "learning_rate" in metrics:
        lr = {"learning rate": metrics["learning_rate"]}
        curves.append(_curve(artifacts / LR_CURVE, metrics["epoch"], lr, "learning rate", scst_from))
    captions = {name: metrics[name] for name in ("val_bleu4", "val_cider") if name in metrics}
    if captions:  # caption metrics of the validation images, both stages
        curves.append(_curve(artifacts / CAPTION_METRICS_CURVE, metrics["epoch"], captions, "validation score", scst_from))
    return ["<h2>Training curves</h2>", '<div class="curves">' + "".join(_img(p, p.stem) for p in curves) + "</div>"]


def _gallery_section(artifacts: Path, records: list[dict], images: dict, images_path: Path | None) -> list[str]:
    if not records:
        return [
            "<h2>Test gallery</h2>",
            _note(
                f"No test predictions yet ({predictions_name('test')} missing or empty): "
                f"run python -m training.evaluate --artifacts {artifacts}"
            ),
        ]
    _gallery(artifacts / GALLERY_IMAGE, records, images)
    cards = "".join(_card(r, images[r["image_id"]], images_path) for r in records)
    return ["<h2>Test gallery</h2>", f'<div class="gallery">{cards}</div>']


def _attention_section(artifacts: Path, records: list[dict], images: dict, index: dict | None) -> list[str]:
    attended = [r for r in records if r.get("attention")]
    body = ["<h2>Attention over image regions</h2>"] if attended else []
    for record in attended:
        image_id, attention = record["image_id"], record["attention"]
        shape = _grid_shape(index, len(attention[0]))
        if shape is None:
            body.append(_note(f"{image_id}: {len(attention[0])} regions do not form a known grid; no attention map."))
            continue
        strip = _attention_strip(
            artifacts / attention_strip_name(image_id), images[image_id], record.get("prediction", "").split(), attention, shape
        )
        body.append(f'<div class="strip">{_img(strip, image_id)}</div>')
    return body
