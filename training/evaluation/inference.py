"""Inference stage: image features -> captions, by greedy or beam-search decoding, a batch of images at a time.

The model is used through a small duck-typed protocol (`encode`, `init_cache`, `decode_step`,
`max_length`; see `training/models/caption_model.py`), so any model that implements it can be decoded.
`decode_step` gets the memory of each image once and the rows of its hypotheses consecutively.

Choices shared by both decoders:
- The whole decode loop (encode, then a `tf.while_loop` over steps with the cache as a loop variable)
  is one `tf.function`: on CPU it beat a Python loop calling a compiled step for a small model and
  tied at the config's width, where compute hides the per-step Python dispatch and host sync.
- A batch of at least 2 x MIN_SHARD_IMAGES images is split into shards, one per CPU core, each an
  independent search in the same graph, which the executor runs side by side: a decode step is a
  chain of small ops that one search cannot spread over the cores. That gave more images/s than one
  search while the cores were free, and no change while other processes kept them busy. The captions are the same; a batch smaller than
  2 x MIN_SHARD_IMAGES is never split.
  The ops of a step are small, so TensorFlow's intra-op threads cost more than they give: a process
  that only decodes ran faster with TF_NUM_INTRAOP_THREADS=1 (process-wide, so not set here).
- Images leave a search once it is over for them, in groups (see `_search_shard`), so a step
  costs what the images still searched need rather than what the slowest one does. This is why
  every leaf of the model's memory holds one image per row of its first axis.
- Padding, the start token and the unknown-word token are never emitted: their log-probs are set to
  -inf after the softmax (unk stands for every rare word, so a model often rates it likely, but a
  caption saying "<unk>" tells a reader nothing). Scores stay the model's own log-probabilities over
  the full vocabulary, not renormalised over the allowed tokens.
- `max_length` is the most decode steps, so the most tokens a caption can have; a caption that has
  not produced endseq by then is returned truncated. endseq ends a caption and is not part of it,
  but its log-prob is part of the score.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

from training.utils.logging import draws_progress


@dataclass
class Caption:
    tokens: list[int]  # word ids, without start, end or padding
    text: str
    score: float  # sum of log-probs of the tokens (and of endseq, when the caption ended)
    attention: np.ndarray | None = None  # (len(tokens), regions): the attention that produced each token
    normalized_score: float | None = None  # score / length penalty: what beam search ranks by
    finished: bool = True  # False: the search stopped before endseq (max_length, or an alternative left behind)
    alternatives: list[Caption] | None = None  # the beam's other hypotheses, best first (alternatives=True)


def length_penalty(length, alpha: float):
    """GNMT length normalisation, ((5 + length) / 6) ** alpha; alpha = 0 ranks by the raw sum of log-probs."""
    return ((5.0 + tf.cast(length, tf.float32)) / 6.0) ** alpha


MIN_SHARD_IMAGES = 32  # 2 shards of 32 still paid; smaller not measured


def cpu_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def cache_shape_invariants(cache, rows_change: bool = False):
    """tf.while_loop shape invariants for a decode cache: any axis but the first (rows) and the last
    may change from step to step (the transformer's cache grows by a position each step). The row
    count stays static, which keeps every step's shapes known, unless `rows_change` (rows leave)."""

    def invariant(t):
        rows = [None] if rows_change else t.shape[:1]
        if t.shape.rank < 2:
            return tf.TensorShape(rows) if t.shape.rank else t.shape
        return tf.TensorShape(rows + [None] * (t.shape.rank - 2) + t.shape[-1:])

    return tf.nest.map_structure(invariant, cache)


class BeamSearchDecoder:
    """Beam search with `beam_size` hypotheses per image, folded into the batch axis (B * beam rows).

    Finished hypotheses stay in the beam and can only be extended by padding at no cost, so they
    compete with the live ones on their length-normalised score (as tf.contrib.seq2seq's
    BeamSearchDecoder did). With beam_size=1 this is exactly greedy decoding.
    With alternatives=True each caption also carries the beam's other hypotheses as the search left
    them: some may be unfinished (the search stops once none can beat the best finished one).
    """

    def __init__(
        self,
        model,
        tokenizer,
        beam_size: int = 3,
        length_penalty: float = 0.0,
        max_length: int | None = None,
        batch_size: int = 64,
        alternatives: bool = False,
    ):
        limit = int(model.max_length)
        self.max_length = limit if max_length is None else int(max_length)
        if not 1 <= self.max_length <= limit:
            raise ValueError(f"max_length must be in 1..{limit} (the model's max_length), got {max_length}")
        if beam_size < 1 or batch_size < 1:
            raise ValueError(f"beam_size and batch_size must be >= 1, got {beam_size} and {batch_size}")
        if length_penalty < 0:  # the early stop below relies on longer never meaning lower-penalised
            raise ValueError(f"length_penalty must be >= 0 (0 = raw log-prob, ~0.6-1 favours longer), got {length_penalty}")
        self.model, self.tokenizer = model, tokenizer
        self.beam_size, self.alpha, self.batch_size = int(beam_size), float(length_penalty), int(batch_size)
        self.kept = self.beam_size if alternatives else 1  # hypotheses returned per image
        self._banned = sorted({i for i in (tokenizer.pad_id, tokenizer.start_id, tokenizer.unk_id) if i is not None})
        # The loops are written as tf.while_loop/tf.cond already: AutoGraph's conversion would only add
        # seconds of tracing per decoder.
        self._search = tf.function(self._search_batch, autograph=False)
        self._search_shard_traced_once = tf.function(self._search_shard, autograph=False)  # see _search_batch

    # ---- public API ------------------------------------------------------------------------------

    def decode(self, image_features: np.ndarray) -> list[Caption]:
        """Caption every image of `image_features` (N, regions, channels), `batch_size` images per model call.

        The last of several batches is padded to `batch_size`: the search of that size is traced already,
        and tracing another costs more than decoding the padding (see `_search_batch`)."""
        features = self._check(image_features)
        starts = range(0, len(features), self.batch_size)
        captions: list[Caption] = []
        for start in tqdm(
            starts, desc=type(self).__name__, unit="batch", leave=False, disable=len(starts) < 2 or not draws_progress(sys.stderr)
        ):
            batch = features[start : start + self.batch_size]
            count = len(batch)
            if len(starts) > 1 and count < self.batch_size:
                batch = np.concatenate([batch, np.zeros((self.batch_size - count, *batch.shape[1:]), batch.dtype)])
            captions += self._decode_batch(batch)[:count]
        return captions

    def decode_one_at_a_time(self, image_features: np.ndarray) -> list[Caption]:
        """Caption the images one by one (batch of 1): the slow baseline that `decode` is measured against."""
        features = self._check(image_features)
        return [
            c
            for i in tqdm(
                range(len(features)),
                desc="one at a time",
                unit="image",
                leave=False,
                disable=len(features) < 2 or not draws_progress(sys.stderr),
            )
            for c in self._decode_batch(features[i : i + 1])
        ]

    # ---- the compiled search -----------------------------------------------------------------------

    def _search_batch(self, features):
        """Decode one batch in a single graph, its shards side by side; the best hypothesis per image."""
        batch = features.shape[0]  # static: each batch size gets its own trace (one: `decode` pads the last batch)
        size = -(-batch // max(1, min(cpu_cores(), batch // MIN_SHARD_IMAGES)))
        # Shards of one size share one trace (the graph inlines each call): tracing a search costs
        # about as much as decoding hundreds of images.
        found = [self._search_shard_traced_once(features[start : start + size]) for start in range(0, batch, size)]
        return found[0] if len(found) == 1 else {k: tf.concat([f[k] for f in found], 0) for k in found[0]}

    def _search_shard(self, features):
        """Beam search over a static-size group of images; returns beam 0 (the best, after sorting) of each."""
        model, beam, steps = self.model, self.beam_size, self.max_length
        batch = features.shape[0]
        rows = batch * beam
        regions = features.shape[1]
        # Row b * beam + k holds hypothesis k of image b. The memory stays one per image (the model
        # groups an image's rows; see `decode_step`); the cache is per row.
        memory = model.encode(features)
        cache = model.init_cache(rows)
        compact = batch > 1  # images whose search is over leave the batch (see `_initial_state`)
        state = self._initial_state(batch, rows, steps, compact)

        def not_done(state, cache, memory):
            done = state["done"] if compact else self._images_done(state)
            return tf.logical_and(state["step"] < steps, tf.logical_not(tf.reduce_all(done)))

        def body(state, cache, memory):
            state, cache = self._step(state, cache, memory, rows)
            if compact:
                state["done"] = done = self._images_done(state)
                # Leaving copies the memory and cache of the images that stay, so it waits until an
                # eighth of them are done (leaving when a quarter, or any one image, was done gained less).
                worth_it = tf.logical_and(
                    8 * tf.reduce_sum(tf.cast(done, tf.int32)) >= tf.size(done), tf.logical_not(tf.reduce_all(done))
                )
                state, cache, memory = tf.cond(
                    worth_it, lambda: self._compact(state, cache, memory, done), lambda: (state, cache, memory)
                )
            return state, cache, memory

        def invariant(t):  # the row (or image) count changes when images leave
            return tf.TensorShape([None] + t.shape[1:]) if compact and t.shape.rank else t.shape

        keep = {k: invariant(t) if isinstance(t, tf.Tensor) and k != "result" else tf.TensorShape(None) for k, t in state.items()}
        if compact:
            keep["result"] = tf.nest.map_structure(lambda t: t.shape, state["result"])
        state, _, _ = tf.while_loop(
            not_done,
            body,
            (state, cache, memory),
            shape_invariants=(keep, cache_shape_invariants(cache, rows_change=compact), tf.nest.map_structure(invariant, memory)),
        )
        picked = self._results(state) if compact else {k: state[k] for k in ("log_prob", "length", "finished")}
        # top_k leaves each image's hypotheses sorted, best first: keep the first `kept` of each.
        best = tf.reshape(tf.range(batch)[:, None] * beam + tf.range(self.kept)[None], [-1])
        picked = {k: tf.gather(v, best) for k, v in picked.items()}
        picked["sequence"], picked["attention"] = self._backtrack(state, best, regions)
        picked["normalized"] = picked["log_prob"] / length_penalty(picked["length"], self.alpha)
        return picked

    def _initial_state(self, batch: int, rows: int, steps: int, compact: bool) -> dict:
        """The search state before step 0: every row at startseq, only hypothesis 0 of each image alive."""
        beam = self.beam_size
        # Only hypothesis 0 starts alive (the others at -inf), so step 0 does not expand `beam` copies of it.
        first = tf.one_hot(0, beam, on_value=0.0, off_value=-np.inf)
        history = lambda dtype: tf.TensorArray(dtype, size=steps)  # noqa: E731
        state = dict(
            step=tf.constant(0, tf.int32),
            tokens=tf.fill([rows], tf.cast(self.tokenizer.start_id, tf.int32)),
            log_prob=tf.tile(first, [batch]),
            length=tf.zeros([rows], tf.int32),
            finished=tf.zeros([rows], tf.bool),
            # Per step, written once and never reordered: each row's token, the row it extends
            # (its parent) and the attention that row's step computed. A caption is read back
            # along its parents at the end, so a step costs the same whatever the caption length.
            chosen=history(tf.int32),
            parents=history(tf.int32),
            attention=history(tf.float32),
        )
        # Images whose search is over leave the batch (see `_compact`), so a step's work follows the
        # images still searched, not the slowest one. The history keeps the shard's own row numbers,
        # `image` maps the images left to them and `result` holds the scores of those that left.
        # One image alone never leaves early: its search simply ends.
        if compact:
            state.update(
                image=tf.range(batch),
                done=tf.zeros([batch], tf.bool),
                result={k: state[k] for k in ("log_prob", "length", "finished")},
            )
        return state

    def _shard_rows(self, state):
        """The shard's row numbers of the rows still searched."""
        return tf.reshape(state["image"][:, None] * self.beam_size + tf.range(self.beam_size)[None], [-1])

    def _results(self, state):
        """log_prob, length and finished for every row of the shard: of the rows still searched, and
        as they were when they left for the others."""
        index = self._shard_rows(state)[:, None]
        return {k: tf.tensor_scatter_nd_update(v, index, state[k]) for k, v in state["result"].items()}

    def _compact(self, state, cache, memory, done):
        """Drop the images that are done: keep their scores in `result`, and the rows, cache and memory of the rest.

        Their captions need nothing more: after the step that finished an image, its best hypothesis is
        row 0 of its rows (top_k sorts them and none left alive can still beat it), and a row that is
        no longer searched extends itself with padding in the history (see `_step`).
        """
        stay = tf.reshape(tf.where(tf.logical_not(done)), [-1])
        rows = tf.reshape(stay[:, None] * self.beam_size + tf.range(self.beam_size, dtype=tf.int64)[None], [-1])
        state = dict(
            state,
            result=self._results(state),
            image=tf.gather(state["image"], stay),
            done=tf.gather(done, stay),
            **{k: tf.gather(state[k], rows) for k in ("tokens", "log_prob", "length", "finished")},
        )
        cache = tf.nest.map_structure(lambda t: tf.gather(t, rows), cache)
        memory = tf.nest.map_structure(lambda t: tf.gather(t, stay), memory)
        return state, cache, memory

    def _backtrack(self, state, rows, regions):
        """The tokens (B, max_length) and attention (B, max_length, regions) of `rows` at the last step,
        read back through the parents; steps never reached are padding and zeros."""
        taken = state["step"]
        tokens = tf.TensorArray(tf.int32, size=taken)
        attention = tf.TensorArray(tf.float32, size=taken)

        def back(step, rows, tokens, attention):
            parents = tf.gather(state["parents"].read(step), rows)
            tokens = tokens.write(step, tf.gather(state["chosen"].read(step), rows))
            attention = attention.write(step, tf.gather(state["attention"].read(step), parents))
            return step - 1, parents, tokens, attention

        _, _, tokens, attention = tf.while_loop(lambda step, *_: step >= 0, back, (taken - 1, rows, tokens, attention))
        missing = self.max_length - taken
        sequence = tf.pad(tf.transpose(tokens.stack()), [[0, 0], [0, missing]], constant_values=self.tokenizer.pad_id)
        attention = tf.pad(tf.transpose(attention.stack(), (1, 0, 2)), [[0, 0], [0, missing], [0, 0]])
        return tf.ensure_shape(sequence, [None, self.max_length]), tf.ensure_shape(attention, [None, self.max_length, regions])

    def _step(self, state, cache, memory, shard_rows):
        beam, step, pad = self.beam_size, state["step"], self.tokenizer.pad_id
        rows = state["tokens"].shape[0]  # static, unless images leave the batch as their search ends
        batch = rows // beam if rows is not None else tf.shape(state["tokens"])[0] // beam
        logits, cache, attention = self.model.decode_step(state["tokens"], step, memory, cache)
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        vocab = log_probs.shape[-1]
        banned = tf.scatter_nd([[i] for i in self._banned], tf.fill([len(self._banned)], -np.inf), [vocab])
        # A finished hypothesis has one continuation, padding at log-prob 0, so it keeps its score and rank.
        only_pad = tf.one_hot(pad, vocab, on_value=0.0, off_value=-np.inf)
        finished = state["finished"][:, None]
        total = state["log_prob"][:, None] + tf.where(finished, only_pad, log_probs + banned)
        length = state["length"] + tf.cast(tf.logical_not(state["finished"]), tf.int32)
        if beam == 1:  # greedy: each row continues itself
            tokens = tf.argmax(total, axis=-1, output_type=tf.int32)
            parent = tf.range(batch)
            log_prob, finished = tf.reduce_max(total, axis=-1), state["finished"]
        else:
            ranked = total / length_penalty(length, self.alpha)[:, None]
            # Best `beam` of the beam * vocab candidates of each image.
            _, index = tf.math.top_k(tf.reshape(ranked, [batch, beam * vocab]), k=beam)
            parent = tf.reshape(index // vocab + tf.range(batch)[:, None] * beam, [-1])
            tokens = tf.reshape(index % vocab, [-1])
            # Reorder what belongs to a hypothesis by its parent row.
            cache = tf.nest.map_structure(lambda t: tf.gather(t, parent), cache)
            log_prob = tf.gather(tf.reshape(total, [-1]), parent * vocab + tokens)
            length, finished = tf.gather(length, parent), tf.gather(state["finished"], parent)
        attention = tf.cast(attention, tf.float32)
        history = dict(chosen=tokens, parents=parent, attention=attention)
        if "image" in state:  # some images may have left: the history is in the shard's row numbers
            index = self._shard_rows(state)
            row_of = lambda r: tf.gather(index, r)  # noqa: E731
            scatter = lambda values, empty: tf.tensor_scatter_nd_update(empty, index[:, None], values)  # noqa: E731
            # A row no longer searched extends itself with padding, so backtracking passes through it.
            history = dict(
                chosen=scatter(tokens, tf.fill([shard_rows], tf.cast(pad, tf.int32))),
                parents=scatter(row_of(parent), tf.range(shard_rows)),
                attention=scatter(attention, tf.zeros([shard_rows, tf.shape(attention)[1]])),
            )
        state = dict(
            state,
            step=step + 1,
            tokens=tokens,
            log_prob=log_prob,
            length=length,
            finished=tf.logical_or(finished, tokens == self.tokenizer.end_id),
            **{k: state[k].write(step, v) for k, v in history.items()},
        )
        return state, cache

    def _images_done(self, state):
        """Per image, True when no live hypothesis can still beat its best finished one (t2t's early stop).

        Log-probs only fall, so a live one's best possible score is its log-prob over the largest
        length penalty; with no live hypotheses left this is simply "every sequence has finished".
        """
        normalized = state["log_prob"] / length_penalty(state["length"], self.alpha)
        best_finished = tf.reduce_max(tf.reshape(tf.where(state["finished"], normalized, -np.inf), [-1, self.beam_size]), 1)
        bound = tf.where(state["finished"], -np.inf, state["log_prob"] / length_penalty(self.max_length, self.alpha))
        return best_finished > tf.reduce_max(tf.reshape(bound, [-1, self.beam_size]), 1)

    # ---- numpy side ----------------------------------------------------------------------------------

    def _check(self, image_features) -> np.ndarray:
        # Cast per batch, not here: the feature store hands over a float16 memory map of the whole split.
        if np.ndim(image_features) != 3:
            raise ValueError(f"image_features must be (images, regions, channels), got shape {np.shape(image_features)}")
        return image_features

    def _decode_batch(self, features: np.ndarray) -> list[Caption]:
        found = {k: v.numpy() for k, v in self._search(tf.constant(features, tf.float32)).items()}
        captions = []
        for i in range(len(found["length"])):  # `kept` rows per image
            # endseq is counted in `length` (it is scored) but is not part of the caption.
            n = int(found["length"][i]) - int(found["finished"][i])
            captions.append(
                Caption(
                    tokens=[int(t) for t in found["sequence"][i, :n]],
                    text="",
                    score=float(found["log_prob"][i]),
                    attention=found["attention"][i, :n],
                    normalized_score=float(found["normalized"][i]),
                    finished=bool(found["finished"][i]),
                )
            )
        texts = self.tokenizer.sequences_to_texts([c.tokens for c in captions], strip_special=True)
        for caption, text in zip(captions, texts):
            caption.text = text
        if self.kept == 1:
            return captions
        best = captions[:: self.kept]
        for i, caption in enumerate(best):  # a hypothesis never reached stays at -inf: not an alternative
            caption.alternatives = [c for c in captions[i * self.kept + 1 : (i + 1) * self.kept] if np.isfinite(c.score)]
        return best


class GreedyDecoder(BeamSearchDecoder):
    """Greedy decoding: the most likely next token at every step (beam search with one hypothesis)."""

    def __init__(self, model, tokenizer, max_length: int | None = None, batch_size: int = 64):
        super().__init__(model, tokenizer, beam_size=1, length_penalty=0.0, max_length=max_length, batch_size=batch_size)


class CaptionSampler:
    """Random captions drawn from the model's own next-word distribution, `samples` per image (for SCST).

    One compiled pass per batch: the image memory is encoded once and shared by the image's
    `samples` rows (see `decode_step`), and every step draws each row's next word with a stateless
    sampler seeded by (seed, step), so the same seed gives the same captions in any process. As in
    the decoders, padding, the start token and the unknown-word token are never drawn (the policy is
    the model's distribution renormalised over the other words: `banned_mask` gives the same
    renormalisation to the training loss). Rows stop at endseq and are padded after it.

    The words are drawn from the masked logits (the sampler normalises them itself: no log-softmax
    over the vocabulary), and the model's weights are read and cast to the compute dtype once per
    batch rather than at every step (`read_variables_once`); the draws are the same.
    Rows that ended keep running until the batch's longest sample ends (bench/scst.py reports the
    share of row-steps this spends). Letting them leave was tried on the same shapes: rows leaving
    one by one need a copy of the image memory per row, whose one-query cross-attention cost more
    than the rows saved; images leaving once all their samples ended, or the last fifth of the rows
    leaving together, gained less than the run-to-run noise.
    """

    def __init__(self, model, tokenizer, samples: int = 5, max_length: int | None = None):
        limit = int(model.max_length)
        self.max_length = limit if max_length is None else int(max_length)
        if not 1 <= self.max_length <= limit or samples < 1:
            raise ValueError(f"need samples >= 1 and max_length in 1..{limit}, got {samples} and {max_length}")
        self.model, self.tokenizer, self.samples = model, tokenizer, int(samples)
        self._banned = sorted({i for i in (tokenizer.pad_id, tokenizer.start_id, tokenizer.unk_id) if i is not None})
        self._sample = tf.function(self._sample_batch, autograph=False)  # explicit loop, as the search's

    def banned_mask(self, vocab: int):
        """(vocab,) float32: -inf at the tokens never drawn, 0 elsewhere."""
        return tf.scatter_nd([[i] for i in self._banned], tf.fill([len(self._banned)], -np.inf), [vocab])

    def sample(self, image_features: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
        """(images * samples, max_length) int32 word ids: row i * samples + j is image i's j-th sample,
        endseq included when the caption ended, padding (0) after it."""
        features = tf.constant(np.asarray(image_features), tf.float32)
        return self._sample(features, tf.constant(seed, tf.int64)).numpy()

    def _sample_batch(self, features, seed):
        from training.utils.keras_private import read_variables_once

        model, steps, pad, end = self.model, self.max_length, self.tokenizer.pad_id, self.tokenizer.end_id
        rows = features.shape[0] * self.samples  # static per trace: at most two (full and last batch)
        with read_variables_once(model.weights, model.compute_dtype):
            memory = model.encode(features)
            cache = model.init_cache(rows)
            banned = self.banned_mask(model.vocab_size)
            tokens = tf.fill([rows], tf.cast(self.tokenizer.start_id, tf.int32))
            finished = tf.zeros([rows], tf.bool)
            drawn = tf.TensorArray(tf.int32, size=steps)

            def body(step, tokens, finished, cache, drawn):
                logits, cache, _ = model.decode_step(tokens, step, memory, cache)
                step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(step, tf.int64))
                words = tf.cast(tf.random.stateless_categorical(logits + banned, 1, seed=step_seed)[:, 0], tf.int32)
                words = tf.where(finished, tf.cast(pad, tf.int32), words)
                return step + 1, words, tf.logical_or(finished, words == end), cache, drawn.write(step, words)

            step = tf.constant(0, tf.int32)
            _, _, _, _, drawn = tf.while_loop(
                lambda step, tokens, finished, *_: tf.logical_and(step < steps, tf.logical_not(tf.reduce_all(finished))),
                body,
                (step, tokens, finished, cache, drawn),
                shape_invariants=(step.shape, tokens.shape, finished.shape, cache_shape_invariants(cache), tf.TensorShape(None)),
            )
        taken = drawn.stack()  # (steps taken, rows)
        sequences = tf.pad(tf.transpose(taken), [[0, 0], [0, steps - tf.shape(taken)[0]]], constant_values=pad)
        return tf.ensure_shape(sequences, [rows, steps])
