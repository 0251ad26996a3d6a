"""The collapse guard: how many different captions a model gives, and a warning when they are too few.

A model can score a fair BLEU and CIDEr while it gives the same few captions to every image (the most
common complaint about captioning models); SCST, which rewards what scores well on average, can push it
there. Every caption evaluation therefore reports:

- distinct_share: distinct captions / captions (1.0: every image its own caption; 1/N: one caption for all);
- vocab_used: how many distinct words the captions use.

`collapse_warning` says when the share falls under `collapse_threshold` (a config key) or below
`DROP_RATIO` times the share it is compared with (an SCST epoch's: the cross-entropy model's or the best
earlier SCST epoch's; SCST's final test captions: the cross-entropy model's).
"""

from __future__ import annotations

DROP_RATIO = 0.9  # a share below 0.9x the one compared with is a sharp drop


def diversity(texts: list[str]) -> dict[str, float | None]:
    """distinct_share and vocab_used of `texts` (one caption per image); None when there is no caption."""
    return {
        "distinct_share": len(set(texts)) / len(texts) if texts else None,
        "vocab_used": float(len({word for text in texts for word in text.split()})),
    }


def collapse_warning(
    share: float | None, threshold: float, what: str, best: float | None = None, against: str = ""
) -> str | None:
    """The warning `what` (e.g. "epoch 3") deserves for a distinct share `share`, or None: under `threshold`, or
    below DROP_RATIO x `best` (the share of `against`, e.g. "the best earlier epoch")."""
    if share is None:
        return None
    if share < threshold:
        return (
            f"caption collapse? {what}: only {share:.1%} of the captions are distinct (collapse_threshold "
            f"{threshold:.0%}): the model gives many images the same caption"
        )
    if best is not None and share < DROP_RATIO * best:
        return (
            f"caption collapse? {what}: {share:.1%} of the captions are distinct, below {DROP_RATIO:g}x "
            f"the {best:.1%} of {against}"
        )
    return None


class CollapseWatch:
    """The collapse warnings of a stage's epochs, in order: each share against the threshold and, for a stage that
    starts from a trained model's share `reference` (SCST: the cross-entropy model's), against the best share before
    it. Cross-entropy epochs get the threshold alone: an undertrained model's share swings (its first, near-random
    captions are all distinct), and a drop there is learning, not collapse."""

    def __init__(self, threshold: float, reference: float | None = None):
        self.threshold, self.best, self.against = threshold, reference, "the cross-entropy model"
        self.drops = reference is not None  # whether a sharp drop warns too

    def check(self, share: float | None, what: str) -> str | None:
        if share is None or share != share:  # not measured (or NaN)
            return None
        warning = collapse_warning(share, self.threshold, what, self.best if self.drops else None, self.against)
        if self.best is None or share > self.best:
            self.best, self.against = share, "the best earlier epoch"
        return warning


def epoch_name(epoch: int, stage: str) -> str:
    """How a warning names a run epoch (numbered as metrics.csv numbers it) and its stage: "epoch 5 (scst)"."""
    return f"epoch {epoch} ({stage})"


def epoch_warnings(rows: list[dict], threshold: float, xe_share: float | None = None) -> list[str]:
    """The warnings of metrics.csv `rows` (epoch, stage, val_distinct_share) as the run logged them: each stage
    watched on its own, SCST's from the cross-entropy model's share `xe_share`."""
    watches = {"xe": CollapseWatch(threshold), "scst": CollapseWatch(threshold, xe_share)}
    found = []
    for row in rows:
        stage = row.get("stage") or "xe"
        watch = watches.setdefault(stage, CollapseWatch(threshold))
        found.append(watch.check(row.get("val_distinct_share"), epoch_name(int(row["epoch"]), stage)))
    return [w for w in found if w]
