"""The data pipeline, offline: small synthetic corpora, local copies in every accepted layout, the cache and its
atomicity, and the errors. Nothing here touches the network or any real corpus."""

import os

# Before datasets / huggingface_hub are imported anywhere in this process: never touch the network.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

import json  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from harness import data  # noqa: E402
from harness.data import (  # noqa: E402
    EOS_TOKEN,
    DataError,
    TokenData,
    default_cache_dir,
    load_text_splits,
    load_token_data,
    synthetic_stories,
)

VOCAB = 320
N_STORIES = 300  # train stories of the synthetic source (30 validation stories, about 6k tokens)
VAL_TOKENS = 1024
TRAIN_BYTES = 200_000


@pytest.fixture
def offline(tmp_path, monkeypatch):
    """Hub offline, and both Hugging Face caches in tmp_path, so that nothing cached on this machine is found and
    nothing is written outside tmp_path."""
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-hub"))
    return tmp_path


def _load(source: str, cache: Path, vocab_size: int = VOCAB, val_tokens: int = VAL_TOKENS, n: int = N_STORIES,
          with_score: bool = True):
    return load_token_data(source, vocab_size, val_tokens, cache, TRAIN_BYTES, synthetic_stories_n=n,
                           with_score=with_score)


def _entries(cache: Path) -> list[str]:
    """The token cache's entries (and left-over temporary folders), not the record of which entry each source is."""
    root = cache / "tokens"
    return sorted(p.name for p in root.iterdir() if p.name != "prepared") if root.exists() else []


def _first_story(token_data: TokenData, ids: np.ndarray) -> str:
    """The text of the tokens before the first EOS (all of them if there is none)."""
    from tokenizers import Tokenizer

    eos = np.flatnonzero(ids == token_data.eos_id)
    end = int(eos[0]) if len(eos) else len(ids)
    return Tokenizer.from_file(str(token_data.tokenizer_path)).decode([int(i) for i in ids[:end]])


def _write_stories(path: Path, stories: list[str]) -> None:
    path.write_text("".join(f"{story}\n{EOS_TOKEN}\n" for story in stories))


# --------------------------------------------------------------------------------------------------------------------
# Synthetic text


def test_synthetic_stories_are_deterministic_and_story_like():
    stories = synthetic_stories(300, seed=0)
    assert stories == synthetic_stories(300, seed=0)
    assert stories != synthetic_stories(300, seed=1)
    assert len(set(stories)) > 290
    words = {w.lower() for story in stories for w in re.findall(r"[A-Za-z']+", story)}
    assert len(words) > 300  # a vocabulary a 512-token BPE has something to merge in
    for story in stories[:50]:
        assert len(re.findall(r"[.!?]", story)) >= 5 and story[0].isupper()
    assert sum('"' in story for story in stories) > 200  # dialogue
    train, val, identity = load_text_splits("synthetic", 300)
    assert train == stories and len(val) == 30 and not set(val) & set(train)
    assert identity.startswith("synthetic")


# --------------------------------------------------------------------------------------------------------------------
# The cache


def test_synthetic_token_data_and_cache(tmp_path):
    cache = tmp_path / "cache"
    builds, hits = data.STATS["builds"], data.STATS["cache_hits"]
    first = _load("synthetic", cache)
    assert data.STATS["builds"] == builds + 1 and data.STATS["cache_hits"] == hits
    for array in (first.train, first.score, first.monitor):
        assert array.dtype == np.uint16 and array.ndim == 1
        assert int(array.max()) < first.vocab_size == VOCAB
    assert len(first.score) == len(first.monitor) == VAL_TOKENS and len(first.train) > 20 * VAL_TOKENS
    assert first.eos_id == 0 and (first.train == first.eos_id).sum() == N_STORIES and first.eos_id in first.score
    # the scored split opens the validation split's first half, apart from the entry; the monitoring split opens the
    # second half: never the same tokens
    scored = np.load(cache / "scored" / first.tokenizer_path.parent.name / "score.npy")
    monitor = np.load(first.tokenizer_path.parent / "monitor.npy")
    assert np.array_equal(scored[:VAL_TOKENS], first.score) and np.array_equal(monitor[:VAL_TOKENS], first.monitor)
    meta = json.loads((first.tokenizer_path.parent / "meta.json").read_text())
    assert meta["monitor_tokens"] == len(monitor) == meta["val_tokens_total"] - len(scored)
    # cut just after the end of the story nearest the middle: each half holds whole stories
    assert meta["score_tokens"] == len(scored) and scored[-1] == first.eos_id
    story_ends = np.flatnonzero(np.concatenate([scored, monitor]) == first.eos_id) + 1
    assert len(scored) == story_ends[np.argmin(abs(story_ends - meta["val_tokens_total"] // 2))]
    # what the training sandbox loads: the scored file is never opened
    blind = _load("synthetic", cache, with_score=False)
    assert blind.score is None and np.array_equal(blind.monitor, first.monitor)
    assert first.train[-1] == first.eos_id
    assert _first_story(first, first.train) == synthetic_stories(1)[0]
    assert len(first.data_hash) == 16 and len(first.tokenizer_hash) == 16
    entry = first.tokenizer_path.parent
    assert sorted(p.name for p in entry.iterdir()) == ["meta.json", "monitor.npy", "tokenizer.json", "train.npy"]
    meta = json.loads((entry / "meta.json").read_text())
    assert meta["tokenizer_vocab_size"] <= VOCAB and meta["train_stories"] == N_STORIES

    second = _load("synthetic", cache)  # served from the cache: nothing tokenised
    assert data.STATS["builds"] == builds + 1 and data.STATS["cache_hits"] == hits + 2  # the blind load, this one
    assert np.array_equal(first.train, second.train) and np.array_equal(first.score, second.score)
    assert (first.data_hash, first.tokenizer_hash, first.tokenizer_path) == (
        second.data_hash, second.tokenizer_hash, second.tokenizer_path)

    shorter = _load("synthetic", cache, val_tokens=VAL_TOKENS // 2)  # same entry, a shorter slice
    assert data.STATS["builds"] == builds + 1 and np.array_equal(shorter.score, first.score[: VAL_TOKENS // 2])

    other = _load("synthetic", cache, vocab_size=VOCAB + 64)  # a different vocabulary: a different entry
    assert data.STATS["builds"] == builds + 2
    assert other.tokenizer_path.parent != entry and other.data_hash == first.data_hash
    assert other.tokenizer_hash != first.tokenizer_hash and len(_entries(cache)) == 2

    fresh = _load("synthetic", tmp_path / "elsewhere")  # deterministic: byte-identical files from a fresh build
    for name in ("tokenizer.json", "train.npy", "monitor.npy"):
        assert (fresh.tokenizer_path.parent / name).read_bytes() == (entry / name).read_bytes()
    assert (tmp_path / "elsewhere" / "scored" / entry.name / "score.npy").read_bytes() == (
        cache / "scored" / entry.name / "score.npy").read_bytes()


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("HARNESS_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "harness"


def test_a_crash_mid_write_publishes_nothing(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real_save = np.save

    def save_half_then_crash(file, array, *args, **kwargs):
        real_save(file, array[: len(array) // 2], *args, **kwargs)  # partial content on disk ...
        raise OSError("disk full (simulated)")  # ... then the crash

    monkeypatch.setattr(np, "save", save_half_then_crash)
    with pytest.raises(OSError, match="simulated"):
        _load("synthetic", cache)
    assert _entries(cache) == []  # neither a published entry nor a left-over temporary folder
    monkeypatch.setattr(np, "save", real_save)

    def fsync_crash(path):
        raise OSError("crash while writing the tokenizer (simulated)")

    monkeypatch.setattr(data, "_fsync", fsync_crash)  # the tokenizer's temporary file is written, then the crash
    with pytest.raises(OSError, match="simulated"):
        _load("synthetic", cache)
    assert _entries(cache) == []
    monkeypatch.undo()

    builds = data.STATS["builds"]
    rebuilt = _load("synthetic", cache)  # the next run rebuilds cleanly
    assert data.STATS["builds"] == builds + 1 and len(rebuilt.score) == VAL_TOKENS
    assert _entries(cache) == [rebuilt.tokenizer_path.parent.name]
    assert np.array_equal(rebuilt.train, _load("synthetic", tmp_path / "reference").train)


def test_a_killed_build_is_never_trusted_and_is_cleaned_up(tmp_path):
    """A process killed mid-build (no cleanup ran) leaves only a temporary folder: never read, removed once stale."""
    cache = tmp_path / "cache"
    reference = _load("synthetic", tmp_path / "reference")
    key = reference.tokenizer_path.parent.name
    for name, age_s in (("recent", 60.0), ("stale", 2 * data.STALE_TEMP_AGE_S)):
        left_over = cache / "tokens" / f".tmp-{key}-{name}"
        left_over.mkdir(parents=True)
        (left_over / "tokenizer.json").write_text('{"trunc')
        np.save(left_over / "train.npy", np.zeros(3, dtype=np.uint16))
        old = time.time() - age_s
        os.utime(left_over, (old, old))
    loaded = _load("synthetic", cache)
    assert np.array_equal(loaded.train, reference.train) and loaded.tokenizer_hash == reference.tokenizer_hash
    assert _entries(cache) == [f".tmp-{key}-recent", key]  # the stale one was removed; a recent one may be live


# --------------------------------------------------------------------------------------------------------------------
# Local copies, with the hub unreachable


def _story_sets(n_train: int = 200, n_val: int = 40) -> tuple[list[str], list[str]]:
    return synthetic_stories(n_train, seed=5), synthetic_stories(n_val, seed=6)


def test_saved_datasetdict_folder(offline):
    from datasets import Dataset, DatasetDict

    train, val = _story_sets()
    folder = offline / "tinystories-copy"
    DatasetDict({"train": Dataset.from_dict({"text": train}),
                 "validation": Dataset.from_dict({"text": val})}).save_to_disk(str(folder))
    assert load_text_splits(str(folder)) == (train, val, "local-saved-dataset")
    loaded = _load(str(folder), offline / "cache")
    assert (loaded.train == loaded.eos_id).sum() == len(train) and len(loaded.score) == VAL_TOKENS
    assert _first_story(loaded, loaded.score) == val[0]


def test_parquet_folder(offline):
    from datasets import Dataset

    train, val = _story_sets()
    folder = offline / "parquet-copy"
    folder.mkdir()
    Dataset.from_dict({"text": train}).to_parquet(str(folder / "train.parquet"))
    Dataset.from_dict({"text": val}).to_parquet(str(folder / "validation.parquet"))
    assert load_text_splits(str(folder)) == (train, val, "local-data-files")
    loaded = _load(str(folder), offline / "cache")
    assert (loaded.train == loaded.eos_id).sum() == len(train)
    assert _first_story(loaded, loaded.train) == train[0]


def test_text_folder_and_single_text_file(offline):
    train, val = _story_sets()
    folder = offline / "text-copy"
    folder.mkdir()
    _write_stories(folder / "TinyStories-train.txt", train)
    _write_stories(folder / "TinyStories-valid.txt", val)
    assert load_text_splits(str(folder)) == (train, val, "local-text-files")
    loaded = _load(str(folder), offline / "cache")
    assert (loaded.train == loaded.eos_id).sum() == len(train)
    assert _first_story(loaded, loaded.train) == train[0]

    shards = offline / "sharded-text"  # data/train-*.txt shards, read in sorted order
    (shards / "data").mkdir(parents=True)
    _write_stories(shards / "data" / "train-00001.txt", train[100:])
    _write_stories(shards / "data" / "train-00000.txt", train[:100])
    _write_stories(shards / "data" / "validation-00000.txt", val)
    assert load_text_splits(str(shards)) == (train, val, "local-text-files")

    single = offline / "stories.txt"
    stories = train + val  # 240 stories: the last 240 // 50 = 4 are held out
    _write_stories(single, stories)
    split_train, split_val, identity = load_text_splits(str(single))
    assert split_train == stories[:-4] and split_val == stories[-4:] and "held-out" in identity
    loaded = _load(str(single), offline / "cache", val_tokens=256)
    head = _first_story(loaded, loaded.score)  # 256 tokens: part of the first held-out story
    assert len(head) > 200 and stories[-4].startswith(head)


@pytest.mark.parametrize("layout", ["saved", "text"])
def test_a_validation_story_also_in_train_or_repeated_is_never_scored(offline, layout):
    """Every source, as the synthetic one: a story the model trains on is not scored, and a story told twice in the
    validation split is scored at most once (a repeat would sit in the monitoring half too)."""
    from datasets import Dataset, DatasetDict

    train, val = _story_sets()
    train_seen = train + [val[0]]
    val_repeated = val + [val[1]]
    folder = offline / f"copy-{layout}"
    if layout == "saved":
        DatasetDict({"train": Dataset.from_dict({"text": train_seen}),
                     "validation": Dataset.from_dict({"text": val_repeated})}).save_to_disk(str(folder))
    else:
        folder.mkdir()
        _write_stories(folder / "train.txt", train_seen)
        _write_stories(folder / "validation.txt", val_repeated)
    split_train, split_val, _ = load_text_splits(str(folder))
    assert split_train == train_seen and split_val == val[1:]
    loaded = _load(str(folder), offline / "cache")
    assert _first_story(loaded, loaded.score) == val[1]
    with pytest.raises(DataError, match="also occurs in its train split: nothing can be scored"):
        data.held_out(train, train[:3], "a copy")


def test_split_files_are_named_by_whole_words_and_a_file_of_both_is_refused(offline):
    train, val = _story_sets()
    folder = offline / "shards"
    folder.mkdir()
    _write_stories(folder / "train-00000.txt", train)
    _write_stories(folder / "train_invalid.txt", val[:5])  # rejected from train by a cleaning pass: not validation
    _write_stories(folder / "validation-00000.txt", val)
    split_train, split_val, _ = load_text_splits(str(folder))
    # train_invalid.txt is train ('invalid' is not 'valid'), so the five stories it shares with the validation file
    # are held out of the scored text rather than opening it
    assert split_train == train + val[:5] and split_val == val[5:]
    _write_stories(folder / "train-valid-overlap.txt", val[:2])
    with pytest.raises(DataError, match="the name says both splits"):
        load_text_splits(str(folder))


def test_hub_name_offline_fails_fast_with_alternatives(offline):
    start = time.monotonic()
    with pytest.raises(DataError) as info:
        load_text_splits("roneneldan/TinyStories")
    assert time.monotonic() - start < 30
    message = str(info.value)
    for part in ("roneneldan/TinyStories", "offline", "unreachable", "HARNESS_DATA", "save_to_disk",
                 "TinyStories-train.txt", "synthetic"):
        assert part in message, part


def test_a_hub_source_is_fetched_by_the_host_and_then_read_from_the_cache_offline(offline, monkeypatch):
    """What the host's download (``fetch_hub_source``, before a preparation) leaves behind is what a preparation
    without network then reads: the hub dataset from the local cache. Other sources need no download."""
    from hub_cache import cache_hub_dataset

    from harness.data import fetch_hub_source, hub_name

    assert hub_name("roneneldan/TinyStories") == "roneneldan/TinyStories"
    for source in ("synthetic", str(offline), "./stories", "data/a/b", "stories.txt"):
        assert hub_name(source) is None and fetch_hub_source(source) == {}
    with pytest.raises(DataError, match="not in the local Hugging Face cache"):
        fetch_hub_source("roneneldan/TinyStories")
    train, val, _ = load_text_splits("synthetic", N_STORIES)
    cache_hub_dataset(offline / "hf-datasets", "roneneldan/TinyStories", {"train": train, "validation": val},
                      offline / "build")
    assert fetch_hub_source("roneneldan/TinyStories") == {"train": len(train), "validation": len(val)}
    # With the hub on, a cached copy is still used as it is: a node that joined later never fetches a newer revision.
    import datasets.config
    import huggingface_hub
    import huggingface_hub.constants

    asked = []
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable)
    for module, flag in ((datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
                         (huggingface_hub.constants, "HF_HUB_OFFLINE")):
        monkeypatch.setattr(module, flag, False)
    monkeypatch.setattr(huggingface_hub.HfApi, "hf_hub_download",
                        lambda *a, **k: asked.append(a) or (_ for _ in ()).throw(OSError("no hub here")))
    assert fetch_hub_source("roneneldan/TinyStories") == {"train": len(train), "validation": len(val)}
    assert asked == [] and datasets.config.HF_HUB_OFFLINE is False
    hub_train, hub_val, identity = load_text_splits("roneneldan/TinyStories")
    assert (hub_train, hub_val, identity) == (train, val, "hub:roneneldan/TinyStories")


# --------------------------------------------------------------------------------------------------------------------
# Clear errors


def test_missing_path(tmp_path):
    for source in (str(tmp_path / "no-such-folder"), str(tmp_path / "TinyStories-train.txt")):
        with pytest.raises(DataError, match="does not exist"):
            load_text_splits(source)


def test_empty_and_missing_splits(offline):
    from datasets import Dataset, DatasetDict

    def saved(name: str, **splits) -> str:
        folder = offline / name
        DatasetDict({k: Dataset.from_dict(v) for k, v in splits.items()}).save_to_disk(str(folder))
        return str(folder)

    _, val = _story_sets(1, 5)
    with pytest.raises(DataError, match=r"split 'train' of .* is empty"):
        load_text_splits(saved("empty-train", train={"text": ["", "  \n"]}, validation={"text": val}))
    with pytest.raises(DataError, match="no 'validation' split"):
        load_text_splits(saved("no-validation", train={"text": val}))
    with pytest.raises(DataError, match="no 'text' column"):
        load_text_splits(saved("no-text", train={"story": val}, validation={"story": val}))

    empty_file = offline / "empty.txt"
    empty_file.write_text(f"\n{EOS_TOKEN}\n\n")
    with pytest.raises(DataError, match="text file .*empty.txt is empty"):
        load_text_splits(str(empty_file))
    folder = offline / "text-no-validation"
    folder.mkdir()
    _write_stories(folder / "train.txt", val)
    with pytest.raises(DataError, match="no validation split"):
        load_text_splits(str(folder))


def test_validation_too_short(tmp_path):
    with pytest.raises(DataError, match=r"validation split has only \d+ tokens \(3 stories\).*val_tokens=100000"):
        load_token_data("synthetic", VOCAB, 100_000, tmp_path, TRAIN_BYTES, synthetic_stories_n=30)


def test_corrupt_cache_files(tmp_path):
    loaded = _load("synthetic", tmp_path)
    entry = loaded.tokenizer_path.parent
    good = loaded.tokenizer_path.read_bytes()
    loaded.tokenizer_path.write_bytes(good[: len(good) // 2])  # truncated JSON
    with pytest.raises(DataError) as info:
        _load("synthetic", tmp_path)
    assert "tokenizer.json" in str(info.value) and "corrupt" in str(info.value)
    assert f"delete the cache folder {entry}" in str(info.value)
    loaded.tokenizer_path.write_bytes(good)
    (entry / "train.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"train\.npy is unreadable or corrupt"):
        _load("synthetic", tmp_path)
    # an entry of another key copied under this one's name is not this data
    meta_path = entry / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "data_hash": "0123456789abcdef"}))
    with pytest.raises(DataError, match=r"meta\.json is unreadable or corrupt \(it describes the entry 0123456789abcdef"):
        _load("synthetic", tmp_path)


def test_vocab_size_bounds(tmp_path):
    with pytest.raises(DataError, match="uint16"):
        _load("synthetic", tmp_path, vocab_size=65536)
    with pytest.raises(DataError, match="at least 257"):
        _load("synthetic", tmp_path, vocab_size=256)


def test_a_prepared_source_is_opened_without_its_text_and_a_record_that_points_elsewhere_is_refused(tmp_path):
    """What a process that runs a program gets (``open_prepared``): the preparation's train and monitoring splits,
    found through the record the preparation wrote, with no text read and no scored split; a record that names a
    path instead of an entry is refused, not followed."""
    import json

    from harness.data import is_prepared, open_prepared

    cache = tmp_path / "cache"
    assert not is_prepared("synthetic", VOCAB, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    with pytest.raises(DataError, match="never prepared on this host"):
        open_prepared("synthetic", VOCAB, VAL_TOKENS, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    full = _load("synthetic", cache)
    assert is_prepared("synthetic", VOCAB, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    assert not is_prepared("synthetic", VOCAB + 1, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    opened = open_prepared("synthetic", VOCAB, VAL_TOKENS, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    assert opened.score is None and opened.data_hash == full.data_hash
    assert np.array_equal(opened.monitor, full.monitor) and np.array_equal(opened.train, full.train)
    [record] = (cache / "tokens" / "prepared").iterdir()
    for name in ("../scored", "/etc", ".tmp-x", 7):
        record.write_text(json.dumps({"entry": name}))
        with pytest.raises(DataError, match="names no entry"):
            open_prepared("synthetic", VOCAB, VAL_TOKENS, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
        assert not is_prepared("synthetic", VOCAB, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    # A record left behind by an entry since removed: the same as never prepared (a cluster prepares it again).
    record.write_text(json.dumps({"entry": "0123-gone"}))
    assert not is_prepared("synthetic", VOCAB, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
    with pytest.raises(DataError, match="is gone"):
        open_prepared("synthetic", VOCAB, VAL_TOKENS, cache, TRAIN_BYTES, synthetic_stories_n=N_STORIES)
