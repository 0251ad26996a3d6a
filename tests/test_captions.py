"""Captions: cleaning rules, every file format, auto-detection, file errors, splits, max length."""

import json
import logging

import pytest

from training.data.caption_loader import (
    CaptionFileError,
    CaptionLoader,
    DataSplit,
    create_splits,
    get_max_caption_length,
)
from training.data.preprocessor import CaptionPreprocessor, TextPreprocessor

IMG1, IMG2 = "1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg"


def write(tmp_path, name, text, encoding="utf-8", newline="\n"):
    path = tmp_path / name
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


# ------------------------------------------------------------------ cleaning


@pytest.mark.parametrize(
    "raw, clean",
    [
        ("A Dog runs .", "a dog runs"),
        ("The dog's ball , isn't it ?", "the dogs ball isnt it"),
        ("A rock-climbing man in a t-shirt", "a rock climbing man in a shirt"),  # 't' is one letter
        ("Two 2 dogs 3rd place 90s", "two dogs place"),
        ("I see a b c dog", "see a dog"),
        ('  "Quoted"\tword\n here!! ', "quoted word here"),
        ("Café—crème_brûlée", "café crème brûlée"),
        ("... 1 ?", ""),
    ],
)
def test_text_preprocessor_clean(raw, clean):
    assert TextPreprocessor().clean(raw) == clean


def test_caption_preprocessor_wraps_and_drops_empty(caplog):
    pre = CaptionPreprocessor()
    assert pre.process_caption("A dog.") == "startseq a dog endseq"
    assert CaptionPreprocessor("<s>", "</s>").process_caption("Hi there") == "<s> hi there </s>"
    with caplog.at_level(logging.WARNING, logger="training.data"):
        out = pre.process({"x.jpg": ["A cat .", "!!! 42"], "y.jpg": ["7", "?"], "z.jpg": ["Go"]})
    assert out == {"x.jpg": ["startseq a cat endseq"], "z.jpg": ["startseq go endseq"]}
    assert pre.stats["empty_captions_dropped"] == 3 and pre.stats["images_dropped"] == 1
    assert "dropped 3 of 5 captions" in caplog.text and "1 images" in caplog.text
    with pytest.raises(ValueError, match="start_token"):
        CaptionPreprocessor(start_token="start seq")


# ------------------------------------------------------------------ formats

CSV = f"""image,caption
{IMG1},A child in a pink dress is climbing up a set of stairs .
{IMG1},"A dog shakes its head near the shore , a red ball next to it ."
{IMG1},"She said ""hello"" , then left ."
{IMG2},A black dog and a spotted dog are fighting
{IMG2},A dog, running fast .
"""


@pytest.mark.parametrize("bom, newline", [(False, "\n"), (True, "\r\n")])
def test_flickr8k_csv(tmp_path, bom, newline):
    path = write(tmp_path, "captions.txt", ("\ufeff" if bom else "") + CSV, newline=newline)
    loader = CaptionLoader()
    captions = loader.load(path)
    assert loader.detected_format == "flickr8k_csv" and loader.file_splits is None
    assert list(captions) == [IMG1, IMG2]
    assert captions[IMG1][1] == "A dog shakes its head near the shore , a red ball next to it ."
    assert captions[IMG1][2] == 'She said "hello" , then left .'
    assert captions[IMG2][1] == "A dog, running fast ."  # unquoted commas rejoined
    assert loader.stats["images"] == 2 and loader.stats["captions"] == 5


def test_flickr8k_token(tmp_path):
    text = f'{IMG1}#0\tA child climbs stairs .\n{IMG1}#1\tA girl , "smiling" .\n{IMG2}#0\tTwo dogs .\n'
    loader = CaptionLoader("flickr8k_token")
    assert loader.load(write(tmp_path, "Flickr8k.token.txt", text, newline="\r\n")) == {
        IMG1: ["A child climbs stairs .", 'A girl , "smiling" .'],
        IMG2: ["Two dogs ."],
    }
    auto = CaptionLoader()
    auto.load(write(tmp_path, "t.txt", text))
    assert auto.detected_format == "flickr8k_token" and auto.stats["captions"] == 3


def test_flickr30k_skips_bad_rows(tmp_path, caplog):
    text = (
        "image_name| comment_number| comment\n"
        "1000092795.jpg| 0| Two young guys with shaggy hair , look at their hands .\n"
        '1000092795.jpg| 1| A man | in a "blue" shirt .\n'
        "2199200615.jpg| 4   A dog runs across the grass .\n"  # real malformed row: a '|' missing
        "2199200615.jpg| 3|\n"
        "2199200615.jpg| 2\n"
        "10002456.jpg| 0| Several men in hard hats .\n"
    )
    loader = CaptionLoader()
    with caplog.at_level(logging.WARNING, logger="training.data"):
        captions = loader.load(write(tmp_path, "results.csv", text))
    assert loader.detected_format == "flickr30k"
    assert captions == {
        "1000092795.jpg": ["Two young guys with shaggy hair , look at their hands .", 'A man | in a "blue" shirt .'],
        "10002456.jpg": ["Several men in hard hats ."],
    }
    assert loader.stats["malformed_rows"] == 1 and loader.stats["missing_caption"] == 2
    assert "skipped 1 malformed rows (first at line 4)" in caplog.text
    assert "skipped 2 rows with no caption (first at line 5)" in caplog.text


def test_coco(tmp_path):
    data = {
        "info": {},
        "images": [{"id": 9, "file_name": "b.jpg"}, {"id": 3, "file_name": "a.jpg"}, {"id": 5, "file_name": "c.jpg"}],
        "annotations": [
            {"image_id": 3, "id": 1, "caption": "A cat .\n"},
            {"image_id": 9, "id": 2, "caption": "A dog , sitting ."},
            {"image_id": 3, "id": 3, "caption": "Another cat ."},
            {"image_id": 77, "id": 4, "caption": "Nobody ."},
            {"image_id": 9, "id": 5, "caption": ""},
        ],
    }
    loader = CaptionLoader()
    captions = loader.load(write(tmp_path, "captions_val2014.json", json.dumps(data)))
    assert loader.detected_format == "coco"
    assert captions == {"b.jpg": ["A dog , sitting ."], "a.jpg": ["A cat .", "Another cat ."]}
    assert loader.stats["unknown_image"] == 1 and loader.stats["missing_caption"] == 1
    assert loader.stats["images_without_captions"] == 1 and loader.file_splits is None


def karpathy_data():
    def image(name, split, *raws, **extra):
        return {"filename": name, "split": split, "sentences": [{"raw": r, "tokens": r.split()} for r in raws], **extra}

    return {
        "dataset": "flickr8k",
        "images": [
            image("a.jpg", "train", "A dog .", "A brown dog ."),
            image("b.jpg", "restval", "A cat ."),
            image("c.jpg", "val", "A bird ."),
            image("d.jpg", "test", "A fish ."),
            image("e.jpg", "val", "A cow .", filepath="val2014"),
        ],
    }


def test_karpathy_with_its_split(tmp_path):
    loader = CaptionLoader()
    captions = loader.load(write(tmp_path, "dataset_flickr8k.json", json.dumps(karpathy_data()), newline="\r\n"))
    assert loader.detected_format == "karpathy"
    assert captions["a.jpg"] == ["A dog .", "A brown dog ."] and captions["val2014/e.jpg"] == ["A cow ."]
    assert loader.file_splits == {"a.jpg": "train", "b.jpg": "train", "c.jpg": "val", "d.jpg": "test", "val2014/e.jpg": "val"}
    split = create_splits(captions, seed=0, file_splits=loader.file_splits)
    assert sorted(split.train) == ["a.jpg", "b.jpg"] and sorted(split.val) == ["c.jpg", "val2014/e.jpg"]
    assert list(split.test) == ["d.jpg"]


def test_karpathy_bad_split_names_image(tmp_path):
    data = karpathy_data()
    data["images"][2]["split"] = "holdout"
    with pytest.raises(CaptionFileError, match=r"images\[2\] \(c.jpg\) has split 'holdout'"):
        CaptionLoader("karpathy").load(write(tmp_path, "d.json", json.dumps(data)))


def test_duplicates_and_missing_captions_counted(tmp_path, caplog):
    text = f"image,caption\n{IMG1},A dog .\n{IMG1},A dog .\n{IMG1},\n{IMG2}\n,orphan caption\n\n{IMG2},A cat .\n"
    path = write(tmp_path, "c.csv", text)
    loader = CaptionLoader(drop_duplicates=True)
    with caplog.at_level(logging.WARNING, logger="training.data"):
        assert loader.load(path) == {IMG1: ["A dog ."], IMG2: ["A cat ."]}
    assert loader.stats["duplicate_rows"] == 1 and loader.stats["missing_caption"] == 2
    assert loader.stats["malformed_rows"] == 1
    assert "skipped 1 exact duplicate rows (first at line 3)" in caplog.text
    kept = CaptionLoader()  # the default keeps repeated captions: they are real references
    with caplog.at_level(logging.INFO, logger="training.data"):
        assert kept.load(path)[IMG1] == ["A dog .", "A dog ."] and kept.stats["duplicate_rows"] == 1
    assert "kept 1 exact duplicate rows (first at line 3)" in caplog.text


# ------------------------------------------------------------------ file errors


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.txt.*captions_file"):
        CaptionLoader().load(tmp_path / "nope.txt")
    with pytest.raises(CaptionFileError, match=r"empty\.txt: file is empty"):
        CaptionLoader().load(write(tmp_path, "empty.txt", ""))
    with pytest.raises(CaptionFileError, match="file is empty"):
        CaptionLoader().load(write(tmp_path, "bom_only.txt", "\ufeff\n \r\n"))
    with pytest.raises(CaptionFileError, match="no captions found"):
        CaptionLoader().load(write(tmp_path, "header_only.txt", "image,caption\n"))


def test_not_utf8_names_offset_and_line(tmp_path):
    path = write(tmp_path, "latin.txt", f"image,caption\n{IMG1},Un caf\u00e9 .\n", encoding="latin-1")
    with pytest.raises(CaptionFileError, match=r"latin\.txt: not UTF-8 text: byte 0xe9 at byte offset 46 \(line 2\)"):
        CaptionLoader().load(path)


def test_undetectable_and_mismatched_formats(tmp_path):
    with pytest.raises(CaptionFileError, match=r"odd\.txt: cannot tell the captions format from line 1.*captions_format"):
        CaptionLoader().load(write(tmp_path, "odd.txt", "hello world\nmore\n"))
    with pytest.raises(CaptionFileError, match=r"x\.json: JSON file of unknown layout.*captions_format"):
        CaptionLoader().load(write(tmp_path, "x.json", '{"foo": 1}'))
    with pytest.raises(CaptionFileError, match=r"bad\.json: not valid JSON \(line 2"):
        CaptionLoader().load(write(tmp_path, "bad.json", '{"images": [],\n oops}'))
    with pytest.raises(CaptionFileError, match=r"line 1 is .*expected the header 'image,caption'"):
        CaptionLoader("flickr8k_csv").load(write(tmp_path, "t.txt", f"{IMG1}#0\tA dog .\n"))
    with pytest.raises(CaptionFileError, match="not valid JSON"):
        CaptionLoader("coco").load(write(tmp_path, "c.txt", CSV))
    with pytest.raises(ValueError, match="unknown captions_format 'flickr'"):
        CaptionLoader("flickr")


def test_unclosed_quote_names_line(tmp_path):
    text = f'image,caption\n{IMG1},A dog .\n{IMG1},"A cat , never closed .\n{IMG2},A bird .\n'
    with pytest.raises(CaptionFileError, match=r"line 3: a double quote opened here is never closed"):
        CaptionLoader().load(write(tmp_path, "q.csv", text))


# ------------------------------------------------------------------ splits and length


def many_captions(n):
    return {f"img_{i:04d}.jpg": [f"caption {i} a", f"caption {i} b"] for i in range(n)}


def test_splits_seeded_disjoint_and_sized():
    captions = many_captions(101)
    split = create_splits(captions, 0.6, 0.2, 0.2, seed=7)
    assert isinstance(split, DataSplit)
    sizes = {name: counts["images"] for name, counts in split.summary().items()}
    assert sizes == {"train": 61, "val": 20, "test": 20}  # rounding, remainder to train
    assert split.summary()["val"]["captions"] == 40
    parts = [set(split.train), set(split.val), set(split.test)]
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert set().union(*parts) == set(captions)
    reversed_input = dict(reversed(list(captions.items())))
    assert create_splits(reversed_input, 0.6, 0.2, 0.2, seed=7) == split  # dict order does not matter
    assert create_splits(captions, 0.6, 0.2, 0.2, seed=8).train.keys() != split.train.keys()
    assert split.train[next(iter(split.train))] is not captions[next(iter(split.train))]  # copies


def test_split_ratio_errors_and_file_splits_gaps():
    captions = many_captions(10)
    with pytest.raises(ValueError, match="must be 1.0"):
        create_splits(captions, 0.7, 0.2, 0.2)
    with pytest.raises(ValueError, match="'test_split' must be in"):
        create_splits(captions, 0.9, 0.2, -0.1)
    assert create_splits(captions, 1.0, 0.0, 0.0).summary()["train"]["images"] == 10
    file_splits = {image: "train" for image in captions}
    del file_splits["img_0003.jpg"]
    with pytest.raises(ValueError, match=r"1 images have captions but no split.*'img_0003.jpg'"):
        create_splits(captions, file_splits=file_splits)


def test_max_caption_length():
    assert get_max_caption_length({"a": ["startseq a b endseq", "x"], "b": ["one  two   three four five"]}) == 5
    with pytest.raises(ValueError):
        get_max_caption_length({})


# ------------------------------------------------------------------ the real Flickr8k file


def test_real_flickr8k(flickr8k_captions):
    loader = CaptionLoader()
    captions = loader.load(flickr8k_captions)
    assert len(captions) == 8091 and sum(map(len, captions.values())) == 40455
    assert all(len(texts) == 5 for texts in captions.values())
    # 10 captions repeat another of the same image verbatim: counted, and dropped only on request
    assert loader.stats["duplicate_rows"] == 10
    deduplicated = CaptionLoader(drop_duplicates=True)
    deduplicated.load(flickr8k_captions)
    assert deduplicated.stats["captions"] == 40445
    split = create_splits(CaptionPreprocessor().process(captions), 0.6, 0.2, 0.2, seed=42)
    parts = [set(split.train), set(split.val), set(split.test)]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 8091
    assert [len(p) for p in parts] == [4855, 1618, 1618]
