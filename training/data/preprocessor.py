"""Caption cleaning: raw caption text -> lowercase word tokens wrapped in start/end markers.

Cleaning rules (`TextPreprocessor.clean`), the usual Flickr8k recipe with two choices made explicit:

- lowercase;
- apostrophes vanish, so a possessive or contraction stays one word ("dog's" -> "dogs",
  "don't" -> "dont") instead of leaving a stray "s" or "t";
- hyphens and dashes split words ("rock-climbing" -> "rock climbing", "black-and-white" ->
  "black and white"), so compounds share vocabulary with their parts rather than becoming
  rare words that end up as <unk>;
- every other punctuation mark becomes a space;
- tokens holding any digit are dropped ("2", "3rd", "90s"): numbers are rare and noisy in
  captions;
- one-character tokens are dropped except "a" (this also drops the "t" of "t-shirt" and
  stray letters left by punctuation);
- whitespace is normalised to single spaces.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger(__name__)

_APOSTROPHES = re.compile(r"['\u2018\u2019\u02bc`]")
# \w is Unicode-aware, so accented letters survive; "_" counts as \w, hence listed separately.
_PUNCTUATION = re.compile(r"[^\w\s]|_")


class TextPreprocessor:
    """Cleans one caption string by the rules in this module's docstring."""

    def clean(self, text: str) -> str:
        text = _APOSTROPHES.sub("", text.lower())
        text = _PUNCTUATION.sub(" ", text)  # hyphens and dashes included: they split words
        words = [word for word in text.split() if not any(ch.isdigit() for ch in word) and (len(word) > 1 or word == "a")]
        return " ".join(words)


class CaptionPreprocessor:
    """Cleans captions and wraps each as '<start> words <end>' for teacher forcing."""

    def __init__(self, start_token: str = "startseq", end_token: str = "endseq"):
        for name, token in (("start_token", start_token), ("end_token", end_token)):
            if not token or len(token.split()) != 1:
                raise ValueError(f"{name} must be a single word without spaces, got {token!r}")
        if start_token == end_token:
            raise ValueError(f"start_token and end_token must differ, both are {start_token!r}")
        self.start_token = start_token
        self.end_token = end_token
        self.text_preprocessor = TextPreprocessor()
        self.stats: dict[str, int] = {}  # counts from the last process() call

    def process_caption(self, text: str) -> str:
        """One caption -> 'startseq words endseq' ('startseq endseq' when nothing survives cleaning)."""
        cleaned = self.text_preprocessor.clean(text)
        return " ".join(part for part in (self.start_token, cleaned, self.end_token) if part)

    def process(self, captions: dict[str, list[str]]) -> dict[str, list[str]]:
        """Clean and wrap every caption; drop captions empty after cleaning, then images left with none."""
        processed: dict[str, list[str]] = {}
        n_captions = n_empty = 0
        for image_id, texts in captions.items():
            kept = []
            for text in texts:
                n_captions += 1
                cleaned = self.text_preprocessor.clean(text)
                if cleaned:
                    kept.append(f"{self.start_token} {cleaned} {self.end_token}")
                else:
                    n_empty += 1
            if kept:
                processed[image_id] = kept
        n_images_dropped = len(captions) - len(processed)
        self.stats = {
            "captions_in": n_captions,
            "empty_captions_dropped": n_empty,
            "images_dropped": n_images_dropped,
            "captions_out": n_captions - n_empty,
            "images_out": len(processed),
        }
        if n_empty or n_images_dropped:
            logger.warning(
                "caption cleaning dropped %d of %d captions that were empty after cleaning, and %d images left with no caption",
                n_empty,
                n_captions,
                n_images_dropped,
            )
        logger.info("cleaned %d captions for %d images", n_captions - n_empty, len(processed))
        return processed
