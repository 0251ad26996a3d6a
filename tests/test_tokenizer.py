"""Vocabulary (order, ties, threshold, unk/pad, save/load) and GloVe embedding matrices."""

import json

import numpy as np
import pytest

from training.data.caption_loader import CaptionLoader, create_splits
from training.data.preprocessor import CaptionPreprocessor
from training.data.tokenizer import GloVeEmbeddings, Tokenizer

TEXTS = [
    "startseq a dog runs endseq",
    "startseq a cat runs endseq",
    "startseq a dog sits endseq",
    "startseq a bird flies endseq",
]


def fitted(min_word_count=2):
    return Tokenizer(min_word_count=min_word_count).fit(TEXTS)


def test_vocabulary_order_ties_and_threshold():
    tokenizer = fitted()
    # a/endseq/startseq 4 each (ties alphabetical), then dog/runs 2 each; once-seen words dropped
    assert tokenizer.index_word == {0: "<pad>", 1: "<unk>", 2: "a", 3: "endseq", 4: "startseq", 5: "dog", 6: "runs"}
    assert tokenizer.word_index == {w: i for i, w in tokenizer.index_word.items()}
    assert tokenizer.vocab_size == len(tokenizer) == 7
    assert (tokenizer.pad_id, tokenizer.unk_id, tokenizer.start_id, tokenizer.end_id) == (0, 1, 4, 3)
    everything = Tokenizer(1).fit(TEXTS)
    assert everything.vocab_size == 2 + 9
    assert [everything.index_word[i] for i in range(7, 11)] == ["bird", "cat", "flies", "sits"]


def test_markers_kept_below_threshold():
    tokenizer = Tokenizer(min_word_count=5).fit(TEXTS)
    assert set(tokenizer.word_index) == {"<pad>", "<unk>", "startseq", "endseq"}
    unwrapped = Tokenizer(min_word_count=1).fit(["a dog"])
    assert "startseq" in unwrapped.word_index and "endseq" in unwrapped.word_index


def test_sequences_round_trip_with_unk_and_pad():
    tokenizer = fitted()
    seqs = tokenizer.texts_to_sequences(["startseq a dog jumps endseq", "zebra"])
    assert seqs == [[4, 2, 5, 1, 3], [1]]
    padded = [[4, 2, 5, 3, 0, 0], np.array([4, 6, 3, 2, 0])]
    assert tokenizer.sequences_to_texts(padded) == ["startseq a dog endseq", "startseq runs endseq a"]
    assert tokenizer.sequences_to_texts(padded, strip_special=True) == ["a dog", "runs"]
    assert tokenizer.sequences_to_texts([[1, 2]]) == ["<unk> a"]
    with pytest.raises(ValueError, match="token id 99 is outside the vocabulary"):
        tokenizer.sequences_to_texts([[99]])
    with pytest.raises(TypeError, match="list of captions"):
        tokenizer.texts_to_sequences("startseq a dog endseq")


def test_unfitted_and_bad_arguments():
    tokenizer = Tokenizer()
    for use in (lambda: tokenizer.vocab_size, lambda: tokenizer.texts_to_sequences(["a"]), lambda: tokenizer.save(".")):
        with pytest.raises(RuntimeError, match="not fitted"):
            use()
    with pytest.raises(ValueError, match="word_count_threshold"):
        Tokenizer(min_word_count=0)
    with pytest.raises(ValueError, match="no words"):
        Tokenizer().fit(["", "  "])


def test_save_load_round_trip(tmp_path):
    tokenizer = fitted()
    tokenizer.save(tmp_path / "artifacts")
    assert json.loads((tmp_path / "artifacts" / "wordtoix.json").read_text())["dog"] == 5
    assert json.loads((tmp_path / "artifacts" / "ixtoword.json").read_text())["5"] == "dog"
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir()) == ["ixtoword.json", "wordtoix.json"]
    loaded = Tokenizer.load(tmp_path / "artifacts")
    assert loaded.word_index == tokenizer.word_index and loaded.index_word == tokenizer.index_word
    assert loaded.texts_to_sequences(TEXTS) == tokenizer.texts_to_sequences(TEXTS)
    assert (loaded.start_id, loaded.end_id) == (tokenizer.start_id, tokenizer.end_id)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"wordtoix\.json"):
        Tokenizer.load(tmp_path)
    fitted().save(tmp_path)
    (tmp_path / "ixtoword.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"ixtoword\.json"):
        Tokenizer.load(tmp_path)
    fitted().save(tmp_path)
    index_word = json.loads((tmp_path / "ixtoword.json").read_text())
    index_word["5"] = "cat"
    (tmp_path / "ixtoword.json").write_text(json.dumps(index_word))
    with pytest.raises(ValueError, match=r"ixtoword\.json is not the inverse of .*wordtoix\.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "wordtoix.json").write_text(json.dumps({"<pad>": 0, "<unk>": 1, "a": 5}))
    with pytest.raises(ValueError, match=r"wordtoix\.json: ids must be 0\.\.2"):
        Tokenizer.load(tmp_path)
    (tmp_path / "wordtoix.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"wordtoix\.json: expected a non-empty JSON object"):
        Tokenizer.load(tmp_path)


# ------------------------------------------------------------------ GloVe


def glove_file(tmp_path, lines, name="glove.test.4d.txt"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GLOVE_LINES = [
    "the 0.1 0.2 0.3 0.4",
    "a 1 2 3 4",
    ". . . 0.5 0.5 0.5 0.5",  # glove.840B style: a word holding spaces; the vector is the last 4 fields
    "dog -1 -2 -3 -4",
    "dog 9 9 9 9",  # a repeated word: the first one wins
    "runs 0.25 0.5 0.75 1e-1",
]


def test_embedding_matrix_and_coverage(tmp_path):
    tokenizer = fitted()  # <pad> <unk> a endseq startseq dog runs
    glove = GloVeEmbeddings(glove_file(tmp_path, GLOVE_LINES), embedding_dim=4, seed=3)
    matrix = glove.create_embedding_matrix(tokenizer)
    assert matrix.shape == (7, 4) and matrix.dtype == np.float32
    assert not matrix[0].any()  # pad
    np.testing.assert_array_equal(matrix[tokenizer.word_index["dog"]], [-1, -2, -3, -4])
    np.testing.assert_allclose(matrix[tokenizer.word_index["runs"]], [0.25, 0.5, 0.75, 0.1])
    assert glove.coverage == pytest.approx(3 / 5)  # a, dog, runs of a/endseq/startseq/dog/runs
    assert glove.missing_words == ["endseq", "startseq"]
    for word in ("<unk>", "startseq", "endseq"):
        assert matrix[tokenizer.word_index[word]].any()
    again = GloVeEmbeddings(glove.glove_path, embedding_dim=4, seed=3).create_embedding_matrix(tokenizer)
    np.testing.assert_array_equal(matrix, again)  # seeded
    vocab_with_spaces = Tokenizer(1).fit(["x"])  # no caption can hold such a word: set it by hand
    vocab_with_spaces._set_vocabulary(["<pad>", "<unk>", "startseq", "endseq", ". . ."])
    spaced = GloVeEmbeddings(glove.glove_path, embedding_dim=4).create_embedding_matrix(vocab_with_spaces)
    np.testing.assert_array_equal(spaced[4], [0.5, 0.5, 0.5, 0.5])


def test_no_glove_gives_random_rows():
    glove = GloVeEmbeddings(None, embedding_dim=3)
    matrix = glove.create_embedding_matrix(fitted())
    assert matrix.shape == (7, 3) and not matrix[0].any() and glove.coverage == 0.0
    assert 0.0 < np.abs(matrix[1:]).mean() < 0.3  # std 0.1


def test_glove_errors(tmp_path):
    tokenizer = fitted()
    with pytest.raises(FileNotFoundError, match=r"missing\.txt.*glove_path"):
        GloVeEmbeddings(tmp_path / "missing.txt", 4).create_embedding_matrix(tokenizer)
    path = glove_file(tmp_path, GLOVE_LINES)
    with pytest.raises(ValueError, match=r"glove\.test\.4d\.txt: vectors have 4 values .* embedding_dim is 50"):
        GloVeEmbeddings(path, 50).create_embedding_matrix(tokenizer)
    bad = glove_file(tmp_path, GLOVE_LINES[:3] + ["dog 1 2 x 4"], name="bad.txt")
    with pytest.raises(ValueError, match=r"bad\.txt: line 4 \('dog'\) has a value that is not a number"):
        GloVeEmbeddings(bad, 4).create_embedding_matrix(tokenizer)
    short = glove_file(tmp_path, GLOVE_LINES[:2] + ["dog 1 2"], name="short.txt")
    with pytest.raises(ValueError, match=r"short\.txt: line 3 has 3 fields"):
        GloVeEmbeddings(short, 4).create_embedding_matrix(tokenizer)


# ------------------------------------------------------------------ the real Flickr8k file


def test_real_flickr8k_vocabulary(flickr8k_captions):
    captions = CaptionPreprocessor().process(CaptionLoader().load(flickr8k_captions))
    split = create_splits(captions, 0.6, 0.2, 0.2, seed=42)
    train_texts = [text for texts in split.train.values() for text in texts]
    first = Tokenizer(min_word_count=5).fit(train_texts)
    second = Tokenizer(min_word_count=5).fit(list(reversed(train_texts)))
    assert first.word_index == second.word_index
    print(f"Flickr8k vocab_size at threshold 5 on the 0.6 train split (seed 42): {first.vocab_size}")
    assert 2000 <= first.vocab_size <= 4000
    assert first.index_word[2] == "a" and {first.start_id, first.end_id} == {3, 4}
