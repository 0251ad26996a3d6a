"""Vocabulary and word embeddings: cleaned captions -> word ids, and a GloVe matrix aligned to them.

Vocabulary order: 0 is <pad>, 1 is <unk>, then words by descending training count with ties
broken alphabetically, so the same captions always give the same ids. Words seen fewer than
`min_word_count` times map to <unk>; the start and end markers are always kept.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from training.errors import UserInputError
from training.run.artifacts import IXTOWORD_FILE, WORDTOIX_FILE
from training.utils.io import load_json, save_json

logger = logging.getLogger(__name__)


class GloVeFileError(UserInputError):
    """A GloVe file that does not fit the config (dimension) or is damaged: names the file and line."""


PAD_TOKEN = "<pad>"
UNK_TOKEN = "<unk>"


def _check_texts(texts, caller: str) -> None:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{caller} takes a list of captions, got a single string; wrap it in a list")


class Tokenizer:
    """Word <-> id mapping fitted on the training captions ('startseq words endseq')."""

    pad_id = 0
    unk_id = 1

    def __init__(self, min_word_count: int = 5, start_token: str = "startseq", end_token: str = "endseq"):
        if not isinstance(min_word_count, int) or min_word_count < 1:
            raise ValueError(f"min_word_count (config key word_count_threshold) must be >= 1, got {min_word_count!r}")
        self.min_word_count: int | None = min_word_count  # None after load(): the files do not record it
        self.start_token = start_token
        self.end_token = end_token
        self.word_counts: Counter | None = None  # training counts; None after load()
        self._word_index: dict[str, int] | None = None
        self._index_word: dict[int, str] | None = None

    # ------------------------------------------------------------ fitting

    def fit(self, texts: Iterable[str]) -> Tokenizer:
        _check_texts(texts, "Tokenizer.fit")
        counts = Counter(word for text in texts for word in text.split())
        for special in (PAD_TOKEN, UNK_TOKEN):
            counts.pop(special, None)
        if not counts:
            raise ValueError("Tokenizer.fit: no words in the given captions")
        for marker in (self.start_token, self.end_token):
            if marker not in counts:
                logger.warning("Tokenizer.fit: %r never occurs; were the captions wrapped by CaptionPreprocessor?", marker)
        markers = {self.start_token, self.end_token}
        kept = [w for w in counts if counts[w] >= self.min_word_count or w in markers]
        kept += [m for m in (self.start_token, self.end_token) if m not in counts]
        kept.sort(key=lambda w: (-counts.get(w, 0), w))
        self._set_vocabulary([PAD_TOKEN, UNK_TOKEN] + kept)
        self.word_counts = counts
        logger.info(
            "vocabulary: %d words seen, %d kept with count >= %d, vocab_size %d (with %s and %s)",
            len(counts),
            len(kept),
            self.min_word_count,
            self.vocab_size,
            PAD_TOKEN,
            UNK_TOKEN,
        )
        return self

    def _set_vocabulary(self, words: list[str]) -> None:
        self._word_index = {word: index for index, word in enumerate(words)}
        self._index_word = dict(enumerate(words))

    def _fitted(self) -> tuple[dict[str, int], dict[int, str]]:
        if self._word_index is None or self._index_word is None:
            raise RuntimeError("Tokenizer is not fitted: call fit(train_captions) or Tokenizer.load(directory) first")
        return self._word_index, self._index_word

    # ------------------------------------------------------------ lookups

    @property
    def word_index(self) -> dict[str, int]:
        return self._fitted()[0]

    @property
    def index_word(self) -> dict[int, str]:
        return self._fitted()[1]

    @property
    def vocab_size(self) -> int:
        return len(self._fitted()[0])

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def start_id(self) -> int:
        return self._fitted()[0][self.start_token]

    @property
    def end_id(self) -> int:
        return self._fitted()[0][self.end_token]

    def texts_to_sequences(self, texts: Iterable[str]) -> list[list[int]]:
        _check_texts(texts, "texts_to_sequences")
        word_index = self._fitted()[0]
        return [[word_index.get(word, self.unk_id) for word in text.split()] for text in texts]

    def sequences_to_texts(self, sequences: Iterable[Sequence[int]], strip_special: bool = False) -> list[str]:
        """Ids back to text; padding is always skipped. strip_special drops the start marker and stops at the end marker."""
        index_word = self._fitted()[1]
        texts = []
        for sequence in sequences:
            words = []
            for raw_id in sequence:
                index = int(raw_id)
                if index not in index_word:
                    raise ValueError(f"token id {index} is outside the vocabulary (0..{len(index_word) - 1})")
                if index == self.pad_id:
                    continue
                word = index_word[index]
                if strip_special and word == self.end_token:
                    break
                if strip_special and word == self.start_token:
                    continue
                words.append(word)
            texts.append(" ".join(words))
        return texts

    # ------------------------------------------------------------ persistence

    def save(self, directory: str | Path) -> None:
        """Write wordtoix.json ({word: id}) and ixtoword.json ({"id": word}), each atomically."""
        word_index, index_word = self._fitted()
        directory = Path(directory)
        save_json(word_index, directory / WORDTOIX_FILE)
        save_json({str(index): word for index, word in index_word.items()}, directory / IXTOWORD_FILE)

    @classmethod
    def from_vocabulary(cls, words: Sequence[str], start_token: str = "startseq", end_token: str = "endseq") -> Tokenizer:
        """A fitted tokenizer whose word i has id i (the order of `ixtoword.json`)."""
        words = list(words)
        if words[:2] != [PAD_TOKEN, UNK_TOKEN] or start_token not in words or end_token not in words:
            raise ValueError(f"a vocabulary starts with {PAD_TOKEN!r}, {UNK_TOKEN!r} and holds {start_token!r} and {end_token!r}")
        tokenizer = cls(start_token=start_token, end_token=end_token)
        tokenizer.min_word_count = None
        tokenizer._set_vocabulary(words)
        return tokenizer

    @property
    def vocabulary(self) -> list[str]:
        """The words in id order."""
        index_word = self._fitted()[1]
        return [index_word[i] for i in range(len(index_word))]

    @classmethod
    def load(cls, directory: str | Path, start_token: str = "startseq", end_token: str = "endseq") -> Tokenizer:
        directory = Path(directory)
        word_path, index_path = directory / WORDTOIX_FILE, directory / IXTOWORD_FILE
        for path in (word_path, index_path):
            if not path.is_file():
                raise FileNotFoundError(
                    f"tokenizer file not found: {path}; point at the artifacts directory of a training run "
                    f"(it holds {WORDTOIX_FILE} and {IXTOWORD_FILE})"
                )
        word_index, raw_index_word = load_json(word_path), load_json(index_path)
        _check_mapping(word_index, word_path, "{word: id}")
        _check_mapping(raw_index_word, index_path, '{"id": word}')
        try:
            index_word = {int(index): word for index, word in raw_index_word.items()}
        except ValueError:
            raise ValueError(f"{index_path}: keys must be integer ids written as strings") from None
        n = len(word_index)
        problem = None
        if sorted(word_index.values()) != list(range(n)):
            problem = f"{word_path}: ids must be 0..{n - 1} with no gaps or repeats"
        elif {word: index for index, word in index_word.items()} != word_index or len(index_word) != n:
            problem = f"{index_path} is not the inverse of {word_path}"
        elif index_word.get(cls.pad_id) != PAD_TOKEN or index_word.get(cls.unk_id) != UNK_TOKEN:
            problem = f"{word_path}: id {cls.pad_id} must be {PAD_TOKEN!r} and id {cls.unk_id} must be {UNK_TOKEN!r}"
        elif start_token not in word_index or end_token not in word_index:
            problem = f"{word_path}: the markers {start_token!r} and {end_token!r} must be in the vocabulary"
        if problem:
            raise ValueError(f"inconsistent tokenizer files: {problem}; save them again from the same Tokenizer")
        tokenizer = cls(start_token=start_token, end_token=end_token)
        tokenizer.min_word_count = None
        tokenizer._set_vocabulary([index_word[i] for i in range(n)])
        return tokenizer


def _check_mapping(data, path: Path, expected: str) -> None:
    if not isinstance(data, dict) or not data:
        raise ValueError(f"{path}: expected a non-empty JSON object {expected}; save the tokenizer again")


class GloVeEmbeddings:
    """Embedding matrix for a Tokenizer's vocabulary, read from a GloVe text file.

    Rows: <pad> is zeros; a word found in the file gets its vector; every other word (the
    start/end markers, <unk>, words GloVe lacks) gets a seeded random normal vector whose std
    is that of the vectors found (0.1 when none is found). Matching the scale matters because
    the embedding is frozen by default (train_embeddings: false), so these rows stay as drawn
    and should be as distinguishable as real words. `glove_path=None` gives random rows only.
    """

    def __init__(self, glove_path: str | Path | None, embedding_dim: int, seed: int = 42):
        if not isinstance(embedding_dim, int) or embedding_dim < 1:
            raise ValueError(f"embedding_dim must be a positive integer, got {embedding_dim!r}")
        self.glove_path = Path(glove_path) if glove_path is not None else None
        self.embedding_dim = embedding_dim
        self.seed = seed
        self.coverage: float | None = None  # share of vocabulary words found (pad and unk excluded)
        self.missing_words: list[str] = []

    def create_embedding_matrix(self, tokenizer: Tokenizer) -> np.ndarray:
        word_index = tokenizer.word_index
        vectors = self._read_vectors(set(word_index) - {PAD_TOKEN}) if self.glove_path else {}
        scale = float(np.std(np.stack(list(vectors.values())))) if vectors else 0.1
        # one draw for the whole matrix keeps each word's random row independent of what was found
        matrix = np.random.default_rng(self.seed).normal(0.0, scale, (len(word_index), self.embedding_dim))
        matrix = matrix.astype(np.float32)
        for word, vector in vectors.items():
            matrix[word_index[word]] = vector
        matrix[tokenizer.pad_id] = 0.0
        words = [w for w in word_index if w not in (PAD_TOKEN, UNK_TOKEN)]
        self.missing_words = [w for w in words if w not in vectors]
        self.coverage = (len(words) - len(self.missing_words)) / len(words) if words else 0.0
        logger.info(
            "GloVe coverage: %d of %d vocabulary words found (%.1f%%) in %s; %d get random vectors (std %.3f)%s",
            len(words) - len(self.missing_words),
            len(words),
            100 * self.coverage,
            self.glove_path,
            len(self.missing_words),
            scale,
            f", e.g. {', '.join(self.missing_words[:10])}" if self.missing_words else "",
        )
        return matrix

    def _read_vectors(self, wanted: set[str]) -> dict[str, np.ndarray]:
        """Stream the file, parsing only the lines of wanted words; stop once all are found."""
        path = self.glove_path
        if not path.is_file():
            raise FileNotFoundError(
                f"GloVe file not found: {path}; set glove_path in the config to a GloVe text file "
                f"(e.g. glove.6B.200d.txt) or to null for random embeddings"
            )
        from tqdm import tqdm

        dim = self.embedding_dim
        found: dict[str, np.ndarray] = {}
        with (
            open(path, "rb") as handle,
            tqdm(
                total=path.stat().st_size,
                unit="B",
                unit_scale=True,
                desc=f"reading {path.name}",
                leave=False,
                disable=path.stat().st_size < 16_000_000,  # a bar only where reading takes a while
            ) as progress,
        ):
            for number, raw in enumerate(handle, 1):
                progress.update(len(raw))
                fields = raw.rstrip(b"\r\n").rstrip(b" ").split(b" ")
                if fields == [b""]:
                    continue  # blank line
                if number == 1 and len(fields) - 1 != dim:
                    raise GloVeFileError(
                        f"{path}: vectors have {len(fields) - 1} values (line 1) but embedding_dim is {dim}; "
                        f"set embedding_dim to {len(fields) - 1} or use a GloVe file with {dim}-d vectors"
                    )
                if len(fields) < dim + 1:
                    raise GloVeFileError(f"{path}: line {number} has {len(fields)} fields, expected a word and {dim} numbers")
                try:
                    # glove.840B has a few words containing spaces: the vector is the last `dim` fields
                    word = b" ".join(fields[:-dim]).decode("utf-8")
                except UnicodeDecodeError:
                    raise GloVeFileError(f"{path}: line {number} is not UTF-8 text") from None
                if word not in wanted or word in found:
                    continue
                try:
                    found[word] = np.array(fields[-dim:], dtype=np.float32)
                except ValueError:
                    raise GloVeFileError(
                        f"{path}: line {number} ({word!r}) has a value that is not a number; "
                        f"the file is damaged, download it again"
                    ) from None
                if len(found) == len(wanted):
                    break
        return found
