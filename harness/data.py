"""The TinyStories data pipeline: raw text → byte-level BPE → cached uint16 token arrays.

A data source is one of (see :func:`load_text_splits`):

- ``"synthetic"``: story-like text made by a small template grammar (:func:`synthetic_stories`), for tests and
  offline smoke runs;
- a hub dataset name such as ``"roneneldan/TinyStories"`` (splits ``train`` and ``validation``, column ``text``);
- a local copy: a folder written by ``DatasetDict.save_to_disk``, a folder of per-split data files that
  ``datasets.load_dataset(folder)`` understands (parquet, json, csv), or TinyStories-style text files whose stories
  are separated by ``<|endoftext|>`` lines (a folder with a train and a validation file, or a single file).

:func:`load_token_data` trains the tokenizer on the train split only, tokenises both splits (every story followed by
the EOS token) and caches the result under ``cache_dir/tokens/<key>/`` where the key is the content hash of the raw
text plus the vocabulary size and the tokenizer's training budget. A cache entry is built in a temporary folder and
published by renaming it, so a crash never leaves a half-written entry that a later run would trust.
The pipeline is deterministic: the same inputs give byte-identical token arrays and tokenizer.

The validation split serves twice, cut in two halves by tokens. The first ``val_tokens`` tokens of the first half are
the scored split, which only the trusted scorer reads; the first ``val_tokens`` of the second half are the monitoring
split, for the training curve and the in-sandbox checks. The first half lives apart, in
``cache_dir/scored/<key>/score.npy``, so that a sandbox given ``cache_dir/tokens`` to read cannot read it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.trusted.fingerprint import is_data_hash
from harness.trusted.profiles import default_cache_dir  # noqa: F401 - the cache folder, defined with the settings

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
CACHE_FORMAT_VERSION = 3  # bump when the tokenisation or the cache layout changes: old entries are then ignored
MIN_VOCAB_SIZE = 257  # the 256 byte-level symbols plus the EOS token
MAX_VOCAB_SIZE = 65535  # ids are stored as uint16
HELD_OUT_EVERY = 50  # a single text file: its last len // 50 stories (2%) are the validation split
ENCODE_CHUNK_STORIES = 8192  # stories per encode_batch call
STALE_TEMP_AGE_S = 24 * 3600.0  # unpublished build folders older than this are left-overs of a crash: removed

# Accepted file names of local text splits (stories separated by <|endoftext|> lines).
TRAIN_TEXT_NAMES = ("train.txt", "TinyStories-train.txt", "TinyStoriesV2-GPT4-train.txt")
VALIDATION_TEXT_NAMES = ("validation.txt", "valid.txt", "TinyStories-valid.txt", "TinyStoriesV2-GPT4-valid.txt")
VALIDATION_SPLIT_NAMES = ("validation", "valid")
DATA_FILE_SUFFIXES = (".txt", ".parquet", ".json", ".jsonl", ".csv", ".arrow")

# What happened in this process, for tests and logs: "builds" counts cache entries built (text tokenised),
# "cache_hits" counts loads served from an existing entry without tokenising anything.
STATS = {"builds": 0, "cache_hits": 0}

LOCAL_ALTERNATIVES = (
    "To run without the hub, set HARNESS_DATA (the data source) to a local copy: a folder written by "
    "DatasetDict.save_to_disk, a folder of train/validation parquet, json or csv files, a folder holding "
    "TinyStories-train.txt and TinyStories-valid.txt (stories separated by <|endoftext|> lines), or a single such "
    ".txt file; or use the source 'synthetic' for an offline smoke run."
)


class DataError(RuntimeError):
    """The data cannot be had: a missing, empty or unreadable source, split or cache file. The message says what and
    what to do. A set-up problem, never a candidate's fault."""


@dataclass(frozen=True)
class TokenData:
    train: np.ndarray  # uint16 ids of the whole train split, each story followed by eos_id (read-only memory map)
    # uint16, the scored split: the first val_tokens tokens of the validation split's first half. Only the trusted
    # scorer reads it (harness.scorer); the training sandbox never opens its file (None there).
    score: np.ndarray | None
    # uint16, the monitoring split: the first val_tokens tokens of the second half. The training curve, pruning and
    # the in-sandbox checks read this one.
    monitor: np.ndarray
    vocab_size: int  # the requested vocabulary size (the embedding size); every id is below it
    eos_id: int
    data_hash: str  # sha256 (first 16 hex) of the raw text of both splits and the source identity
    tokenizer_hash: str  # sha256 (first 16 hex) of the tokenizer JSON
    tokenizer_path: Path  # tokenizer.json inside the cache entry


# --------------------------------------------------------------------------------------------------------------------
# Synthetic stories

_GIRLS = ("Lily", "Mia", "Sue", "Anna", "Lucy", "Emma", "Zoe", "Ruby", "Ella", "Rose", "Amy", "Kate", "Sara", "Molly")
_BOYS = ("Tom", "Ben", "Max", "Sam", "Jack", "Tim", "Leo", "Finn", "Jake", "Bob", "Ned", "Joe", "Timmy", "Billy")
_ANIMALS = (
    ("puppy", ("Spot", "Buddy", "Rex")), ("kitten", ("Mittens", "Kitty", "Whiskers")), ("bunny", ("Hops", "Fluffy")),
    ("bird", ("Tweety", "Pip")), ("bear", ("Bruno", "Teddy")), ("fox", ("Rusty", "Red")), ("duck", ("Quack", "Daisy")),
    ("frog", ("Ribbit", "Freddy")), ("mouse", ("Squeak", "Tiny")), ("turtle", ("Shelly", "Slow")),
)
_ADJECTIVES = ("little", "happy", "curious", "brave", "shy", "kind", "silly", "friendly", "clever", "gentle",
               "playful", "sleepy", "small", "cheerful")
_PLACES = (
    ("park", ("a big slide", "green trees", "a small pond", "a red swing")),
    ("forest", ("tall trees", "a little river", "soft moss", "a hollow log")),
    ("beach", ("warm sand", "blue waves", "pretty shells", "a big rock")),
    ("farm", ("a red barn", "a muddy pond", "tall corn", "a wooden fence")),
    ("garden", ("bright flowers", "a tall sunflower", "a little bench", "buzzing bees")),
    ("kitchen", ("a warm oven", "a big table", "a jar of cookies", "a shiny pot")),
    ("school", ("a big playground", "a box of crayons", "a tall bookshelf", "a sandbox")),
    ("zoo", ("a huge elephant", "a funny monkey", "a tall giraffe", "a sleepy lion")),
    ("lake", ("cold water", "a little boat", "green reeds", "a wooden dock")),
    ("hill", ("soft grass", "a big tree", "a windy top", "a winding path")),
    ("town", ("a busy street", "a small shop", "a bakery", "a fountain")),
    ("backyard", ("a sandbox", "a tree house", "a swing", "a vegetable patch")),
)
_OBJECTS = ("ball", "kite", "balloon", "toy car", "teddy bear", "rock", "book", "hat", "boat", "blanket", "drum",
            "shell", "crayon", "doll", "truck", "key", "cup", "bucket", "scarf", "robot", "puzzle", "whistle")
_COLORS = ("red", "blue", "green", "yellow", "pink", "purple", "orange", "shiny", "soft", "big", "tiny", "striped")
_GOOD_FEELINGS = ("happy", "excited", "proud", "glad", "joyful")
_BAD_FEELINGS = ("sad", "scared", "worried", "lonely", "upset")
_OPENINGS = ("Once upon a time", "One day", "One sunny morning", "One rainy afternoon", "Long ago",
             "One cold winter day", "One warm summer day", "One bright spring morning")
_FEARS = (("the dark", "dark"), ("the big slide", "tall"), ("the loud thunder", "loud"), ("the deep water", "deep"),
          ("the big dog next door", "big"), ("the tall ladder", "high"))
_GAMES = ("tag", "hide and seek", "catch", "jump rope", "a race", "pretend pirates", "build a sand castle")
_GIFTS = (("a cake", "baked"), ("a picture", "drew"), ("a card", "made"), ("a flower crown", "made"),
          ("a necklace", "made"), ("a song", "wrote"))
_TROUBLES = (("a bird with a hurt wing", "helped the bird get better", "The bird sang a happy song."),
             ("a kitten stuck in a tree", "helped the kitten climb down", "The kitten purred and licked their hand."),
             ("an old man who dropped his apples", "picked up all the apples", "The old man smiled and gave them an apple."),
             ("a lost puppy", "found the puppy's home", "The puppy wagged its tail."),
             ("a little duck that could not find its mom", "led the duck back to the pond", "The duck said quack."))
_MORALS = ("Sharing is caring.", "It is good to be kind.", "Friends help each other.", "It is good to tell the truth.",
           "Being brave feels good.", "Helping others makes everyone happy.")


class _Character:
    def __init__(self, rng: random.Random, avoid: str = ""):
        roll = rng.random()
        if roll < 0.4:
            self.name, self.kind, self.he, self.his = rng.choice(_GIRLS), "girl", "she", "her"
        elif roll < 0.8:
            self.name, self.kind, self.he, self.his = rng.choice(_BOYS), "boy", "he", "his"
        else:
            kind, names = rng.choice(_ANIMALS)
            self.name, self.kind = rng.choice(names), kind
            self.he, self.his = ("she", "her") if rng.random() < 0.5 else ("he", "his")
        if self.name == avoid:  # two characters never share a name
            self.name = self.name + "y" if not self.name.endswith("y") else "Little " + self.name
        self.adjective = rng.choice(_ADJECTIVES)
        self.him = "her" if self.he == "she" else "him"

    @property
    def intro(self) -> str:
        article = "an" if self.adjective[0] in "aeiou" else "a"
        return f"{article} {self.adjective} {self.kind} named {self.name}"


def _cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def _story(rng: random.Random) -> str:
    hero = _Character(rng)
    friend = _Character(rng, avoid=hero.name)
    place, features = rng.choice(_PLACES)
    feature_a, feature_b = rng.sample(features, 2)
    color, obj = rng.choice(_COLORS), rng.choice(_OBJECTS)
    good, bad = rng.choice(_GOOD_FEELINGS), rng.choice(_BAD_FEELINGS)
    parent = rng.choice(("mom", "dad", "grandma", "grandpa"))
    h, f = hero, friend
    s = [f"{rng.choice(_OPENINGS)}, there was {h.intro}.",
         f"{h.name} lived near a {place} with {feature_a} and {feature_b}."]
    if rng.random() < 0.5:
        s.append(f"{_cap(h.he)} loved to play with {h.his} {color} {obj} every day.")
    plot = rng.randrange(8)
    if plot == 0:  # lost and found
        s += [f"One day, {h.name} went to the {place} with {h.his} {color} {obj}.",
              f"{_cap(h.he)} played near {feature_a}, but then the {obj} was gone!",
              f"{h.name} felt very {bad}. \"Where is my {obj}?\" {h.he} cried.",
              f"{f.name} the {f.kind} saw {h.him} and asked, \"Why are you {bad}?\"",
              f"\"I lost my {color} {obj},\" said {h.name}. \"I will help you look,\" said {f.name}.",
              f"They looked under {feature_b}. They looked behind {feature_a}.",
              f"At last, {f.name} found the {obj} {rng.choice(('under a leaf', 'in the grass', 'behind a rock', 'near the water'))}.",
              f"{h.name} was so {good}. \"Thank you, {f.name}!\" {h.he} said.",
              f"From that day on, {h.name} and {f.name} were best friends."]
    elif plot == 1:  # sharing
        s += [f"{h.name} had a {color} {obj}. {_cap(h.he)} did not want to share it.",
              f"{f.name} came to the {place} and said, \"Can I play with your {obj}, please?\"",
              f"\"No, it is mine!\" said {h.name}. {f.name} felt {bad} and walked away.",
              f"{h.his.capitalize()} {parent} saw this and said, \"{h.name}, it is nice to share with your friends.\"",
              f"{h.name} thought about it. Then {h.he} ran to {f.name} and gave {f.him} the {obj}.",
              f"They played with the {obj} together all afternoon. Both of them felt {good}.",
              rng.choice(_MORALS)]
    elif plot == 2:  # a fear overcome
        fear, quality = rng.choice(_FEARS)
        s += [f"{h.name} was scared of {fear}. It was so {quality}!",
              f"\"I can not do it,\" {h.name} said. {_cap(h.he)} felt {bad}.",
              f"{f.name} held {h.his} hand and said, \"Do not be scared. I am here with you.\"",
              f"{h.name} took a deep breath. {_cap(h.he)} counted to three.",
              f"Then {h.he} was brave and faced {fear}. It was not so bad after all!",
              f"{h.name} smiled and felt very {good}. \"I did it!\" {h.he} shouted.",
              "Being brave feels good."]
    elif plot == 3:  # a new friend
        game = rng.choice(_GAMES)
        s += [f"{h.name} was {rng.choice(('lonely', 'bored', 'sad'))} because {h.he} had no one to play with.",
              f"One day at the {place}, {h.he} saw {f.intro}.",
              f"\"Hi, I am {h.name}. Do you want to play?\" asked {h.name}.",
              f"\"Yes, I would love to!\" said {f.name}. They played {game} near {feature_a}.",
              "They laughed and ran until the sun went down.",
              f"{h.name} was {good}. {_cap(h.he)} had a new friend.",
              f"Every day after that, {h.name} and {f.name} played {game} together."]
    elif plot == 4:  # helping someone in trouble
        trouble, action, thanks = rng.choice(_TROUBLES)
        s += [f"One day, {h.name} and {f.name} walked to the {place}.",
              f"There they saw {trouble}. \"Oh no!\" said {f.name}.",
              f"\"We have to help,\" said {h.name}. So they {action}.",
              thanks,
              f"{h.name} and {f.name} felt warm and {good} inside.",
              "Helping others makes everyone happy."]
    elif plot == 5:  # a mistake and the truth
        s += [f"One day, {h.name} was playing with {f.name}'s {color} {obj} in the {place}.",
              f"{_cap(h.he)} threw it too high, and it broke!",
              f"{h.name} felt {bad}. {_cap(h.he)} wanted to hide the {obj}.",
              f"But then {h.he} remembered what {h.his} {parent} said: always tell the truth.",
              f"\"I am sorry, {f.name}. I broke your {obj},\" said {h.name}.",
              f"{f.name} was {bad} at first, but then {f.he} said, \"Thank you for telling me. Let us fix it together.\"",
              f"They fixed the {obj} with glue and tape. It was as good as new.",
              "It is good to tell the truth."]
    elif plot == 6:  # a gift
        gift, verb = rng.choice(_GIFTS)
        s += [f"It was {h.his} {parent}'s birthday, and {h.name} wanted to give {rng.choice(('a special', 'a nice'))} gift.",
              f"{_cap(h.he)} asked {f.name}, \"What can I give?\" {f.name} said, \"Make something with love!\"",
              f"So {h.name} {verb} {gift} with {color} colors and lots of care.",
              f"When {h.his} {parent} saw the gift, {'she' if parent in ('mom', 'grandma') else 'he'} was very surprised.",
              f"\"Thank you, {h.name}! This is the best gift ever,\" said {h.his} {parent} with a big hug.",
              f"{h.name} felt {good} all day long."]
    else:  # a race
        s += [f"One day, {h.name} and {f.name} had a race to {feature_b}.",
              f"\"Ready, set, go!\" shouted {f.name}. They ran as fast as they could.",
              f"But {f.name} fell down and hurt {f.his} knee. {_cap(f.he)} felt {bad}.",
              f"{h.name} stopped running and went back to help {f.him}.",
              f"\"Are you okay?\" asked {h.name}. {_cap(h.he)} helped {f.name} stand up.",
              f"They walked to {feature_b} together, holding hands.",
              f"\"You are a good friend,\" said {f.name}. They both felt {good}.",
              "Friends help each other."]
    if rng.random() < 0.3:
        s.append("The end.")
    return " ".join(s[:2]) + "\n" + " ".join(s[2:])


def synthetic_stories(n_stories: int, seed: int = 0) -> list[str]:
    """Deterministic story-like English text made by a small template grammar (characters, places, objects, feelings,
    eight simple plots, dialogue), so that tests and offline smoke runs never need the corpus. Its vocabulary (some
    500 words) makes a BPE of 512 tokens meaningful; it is regular enough that a tiny LM learns it quickly.
    The same (n_stories, seed) always gives the same list; each story is a few short paragraphs."""
    rng = random.Random(f"harness-synthetic-stories-v1:{seed}")
    return [_story(rng) for _ in range(n_stories)]


# --------------------------------------------------------------------------------------------------------------------
# Raw text


def _clean(texts, where: str) -> list[str]:
    """Stories with surrounding whitespace stripped; empty ones and non-strings dropped."""
    stories = []
    for text in texts:
        if isinstance(text, str):
            text = text.strip()
            if text:
                stories.append(text)
    if not stories:
        raise DataError(f"{where} is empty: it holds no non-empty story text")
    return stories


def _read_text_stories(path: Path, allow_empty: bool = False) -> list[str]:
    """Stories of a TinyStories-style text file: separated by <|endoftext|> (on lines of their own)."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"the text file {path} is not UTF-8 text ({exc}); pass a UTF-8 file of stories "
                        f"separated by {EOS_TOKEN} lines") from exc
    except OSError as exc:
        raise DataError(f"the text file {path} cannot be read: {exc}") from exc
    if allow_empty and not text.strip():
        return []
    return _clean(text.split(EOS_TOKEN), f"the text file {path}")


def _splits_of(dataset_dict, where: str) -> tuple[list[str], list[str]]:
    """(train, validation) story lists of a DatasetDict, with clear errors for missing splits and columns."""
    from datasets import DatasetDict

    if not isinstance(dataset_dict, (dict, DatasetDict)):
        raise DataError(f"{where} holds a single dataset without named splits; it needs a 'train' and a 'validation' "
                        f"split: save a DatasetDict({{'train': ..., 'validation': ...}}) instead")
    splits = sorted(dataset_dict)
    if "train" not in dataset_dict:
        raise DataError(f"{where} has no 'train' split (it has {splits})")
    validation = next((name for name in VALIDATION_SPLIT_NAMES if name in dataset_dict), None)
    if validation is None:
        raise DataError(f"{where} has no 'validation' split (it has {splits}); the fixed validation slice is "
                        f"taken from it")
    out = []
    for name in ("train", validation):
        split = dataset_dict[name]
        if "text" not in split.column_names:
            raise DataError(f"split {name!r} of {where} has no 'text' column (columns: {split.column_names})")
        column = split["text"]  # a lazy Column in datasets >= 4, a list before: slicing gives a list in both
        out.append(_clean(column[:], f"split {name!r} of {where}"))
    return out[0], out[1]


def _honour_offline_env() -> None:
    """datasets and huggingface_hub read HF_DATASETS_OFFLINE / HF_HUB_OFFLINE when imported; honour them when they
    are set later too, so that an offline process always fails fast instead of retrying the network."""
    truthy = {"1", "ON", "YES", "TRUE"}
    if not any(os.environ.get(var, "").upper() in truthy for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")):
        return
    import datasets.config
    import huggingface_hub.constants

    datasets.config.HF_HUB_OFFLINE = True
    datasets.config.HF_DATASETS_OFFLINE = True
    huggingface_hub.constants.HF_HUB_OFFLINE = True


def _offline_flags(flags: tuple[bool, bool, bool] | None = None) -> tuple[bool, bool, bool]:
    """The offline switches datasets and huggingface_hub read at each call (set to ``flags`` if given)."""
    import datasets.config
    import huggingface_hub.constants

    if flags is not None:
        (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE,
         huggingface_hub.constants.HF_HUB_OFFLINE) = flags
    return (datasets.config.HF_HUB_OFFLINE, datasets.config.HF_DATASETS_OFFLINE,
            huggingface_hub.constants.HF_HUB_OFFLINE)


def _offline() -> bool:
    import datasets.config

    return bool(datasets.config.HF_HUB_OFFLINE)


def _hub_dataset(name: str):
    """``datasets.load_dataset(name)``: downloaded into the local Hugging Face cache, or served from it offline."""
    import datasets

    _honour_offline_env()
    try:
        return datasets.load_dataset(name)
    except Exception as exc:
        if _offline():
            why = ("offline mode is on (HF_DATASETS_OFFLINE / HF_HUB_OFFLINE) and the dataset is not in the local "
                   "Hugging Face cache, so the hub is unreachable")
        else:
            why = ("the Hugging Face hub is unreachable from here, or no dataset of that name exists (nor a local "
                   "file or folder of that name)")
        raise DataError(f"cannot load the hub dataset {name!r}: {why} ({type(exc).__name__}: {exc}). "
                        f"{LOCAL_ALTERNATIVES}") from exc


def _load_hub(name: str) -> tuple[list[str], list[str], str]:
    train, val = _splits_of(_hub_dataset(name), f"the hub dataset {name!r}")
    return train, val, f"hub:{name}"


def hub_name(source: str) -> str | None:
    """The hub dataset a data source names, or None: 'synthetic', or a local file or folder."""
    if source == "synthetic" or Path(source).expanduser().exists() or _looks_like_path(source):
        return None
    return source


def fetch_hub_source(source: str) -> dict[str, int]:
    """Make a hub source loadable offline on this host ({split: rows}; {} for any other source). The preparation
    sandbox has no network: the host runs this first, in a process that runs no program, and the sandbox then loads
    the dataset from the local Hugging Face cache. A copy already cached is used as it is, without asking the hub for
    a newer revision; only a source not cached is downloaded, as the hub holds it then. DataError when it cannot be
    had."""
    name = hub_name(source)
    if name is None:
        return {}
    was_offline = _offline_flags()
    _offline_flags((True, True, True))
    try:
        dataset_dict = _hub_dataset(name)
    except DataError:  # not cached here: download it, unless the user turned the hub off
        _offline_flags(was_offline)
        dataset_dict = _hub_dataset(name)
    finally:
        _offline_flags(was_offline)
    try:
        return {str(split): int(dataset_dict[split].num_rows) for split in dataset_dict}
    except (AttributeError, TypeError):
        raise DataError(f"the hub dataset {name!r} holds a single dataset without named splits; it needs a 'train' "
                        f"and a 'validation' split") from None


SPLIT_WORDS = {"train": ("train", "training"), "valid": ("valid", "validation", "val", "dev")}


def _split_words(name: str) -> set[str]:
    """The words of a file name (letters only, lower case): 'train-00000-of-00004.txt' has 'train', 'of', 'txt'."""
    return set(re.findall(r"[a-z]+", name.lower()))


def _text_split_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """The text files of each split in a folder: the first of TRAIN_TEXT_NAMES / VALIDATION_TEXT_NAMES present at
    its top; else every .txt file below it whose name has the word 'train' / 'valid' or 'validation' (e.g.
    data/train-00000-of-00004.txt), in sorted order. A file whose name has a word of both splits
    (train_invalid.txt has 'train' and 'invalid', not 'valid'; train-valid.txt has both) is refused."""
    found = []
    for names, split in ((TRAIN_TEXT_NAMES, "train"), (VALIDATION_TEXT_NAMES, "valid")):
        named = next((folder / name for name in names if (folder / name).is_file()), None)
        if named is not None:
            found.append([named])
        else:
            found.append(sorted(p for p in folder.rglob("*.txt")
                                if p.is_file() and _split_words(p.name) & set(SPLIT_WORDS[split])))
    both = sorted(set(found[0]) & set(found[1]))
    if both:
        raise DataError(f"{', '.join(map(str, both))}: the name says both splits, so its stories could be trained on "
                        "and scored; rename it to name one split")
    return found[0], found[1]


def _read_text_files(paths: list[Path], where: str) -> list[str]:
    stories = []
    for path in paths:  # an empty shard among several is fine; all of them empty is not
        stories += _read_text_stories(path, allow_empty=len(paths) > 1)
    if not stories:
        raise DataError(f"{where} is empty: it holds no non-empty story text")
    return stories


def _load_folder(folder: Path) -> tuple[list[str], list[str], str]:
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        import datasets

        try:
            dataset_dict = datasets.load_from_disk(str(folder))
        except Exception as exc:
            raise DataError(f"cannot read the saved dataset in {folder}: {type(exc).__name__}: {exc}") from exc
        train, val = _splits_of(dataset_dict, f"the saved dataset in {folder}")
        return train, val, "local-saved-dataset"
    train_files, val_files = _text_split_files(folder)
    if train_files or val_files:
        if not train_files:
            raise DataError(f"{folder} has validation text but no train split: add one of {TRAIN_TEXT_NAMES}")
        if not val_files:
            raise DataError(f"{folder} has train text but no validation split: add one of "
                            f"{VALIDATION_TEXT_NAMES} (stories separated by {EOS_TOKEN} lines)")
        return (_read_text_files(train_files, f"the train text of {folder}"),
                _read_text_files(val_files, f"the validation text of {folder}"), "local-text-files")
    has_data_files = any(p.is_file() and p.name.lower().endswith(DATA_FILE_SUFFIXES) for p in folder.rglob("*"))
    if not has_data_files:
        raise DataError(f"the folder {folder} holds no data: expected a folder written by DatasetDict.save_to_disk, "
                        f"train/validation data files (parquet, json, csv), or {TRAIN_TEXT_NAMES[0]} and "
                        f"{VALIDATION_TEXT_NAMES[0]} text files")
    import datasets

    _honour_offline_env()
    try:
        dataset_dict = datasets.load_dataset(str(folder))
    except Exception as exc:
        raise DataError(f"cannot read the data files in {folder} with datasets.load_dataset: "
                        f"{type(exc).__name__}: {exc}") from exc
    train, val = _splits_of(dataset_dict, f"the data files in {folder}")
    return train, val, "local-data-files"


def _looks_like_path(source: str) -> bool:
    """Hub names are 'name' or 'owner/name'; anything else that names a file or folder is a path."""
    return (source.startswith(("/", ".", "~")) or "\\" in source or source.count("/") > 1
            or source.lower().endswith(DATA_FILE_SUFFIXES))


def held_out(train: list[str], val: list[str], where: str) -> list[str]:
    """The validation stories that may be scored: those that do not also occur in the train split (a model that
    trained on a story would be scored on text it has seen), each once (a repeat would sit in both the scored and the
    monitoring half). Order kept. Exact matches of the cleaned text; a source with none loses nothing."""
    seen = set(train)
    out = []
    for story in val:
        if story not in seen:
            seen.add(story)
            out.append(story)
    if not out:
        raise DataError(f"every validation story of {where} also occurs in its train split: nothing can be scored")
    return out


def load_text_splits(source: str, synthetic_stories_n: int = 3000) -> tuple[list[str], list[str], str]:
    """(train_stories, validation_stories, source_identity) of ``source``, the validation stories ``held_out``
    from train: the same rule for every source."""
    train, val, identity = _load_text_splits(source, synthetic_stories_n)
    return train, held_out(train, val, f"the data source {source!r}"), identity


def _load_text_splits(source: str, synthetic_stories_n: int) -> tuple[list[str], list[str], str]:
    """Returns (train_stories, validation_stories, source_identity). ``source`` is one of:

    - ``"synthetic"``: ``synthetic_stories(synthetic_stories_n, seed=0)`` for train and a disjoint generated set for
      validation (seed 1, ``synthetic_stories_n // 10`` stories, none of which also occurs in train);
    - a hub dataset name such as ``"roneneldan/TinyStories"``: ``datasets.load_dataset(source)``, splits ``train`` and
      ``validation``, column ``text`` (offline, e.g. HF_DATASETS_OFFLINE=1, it is served from the local Hugging Face
      cache or fails at once);
    - a local folder written by ``DatasetDict.save_to_disk`` (read with ``datasets.load_from_disk``);
    - a local folder of text files: one of ``TRAIN_TEXT_NAMES`` (``train.txt``, ``TinyStories-train.txt``) and one of
      ``VALIDATION_TEXT_NAMES`` (``validation.txt``, ``TinyStories-valid.txt``), stories separated by
      ``<|endoftext|>`` lines;
    - a local folder of other data files that ``datasets.load_dataset(folder)`` understands, e.g.
      ``train.parquet``/``validation.parquet`` or ``data/train-*.parquet``, or json/csv files per split;
    - a single local ``.txt`` file of stories separated by ``<|endoftext|>`` lines: it is the train split except for
      a deterministic held-out tail, its last ``len(stories) // 50`` stories (2%, at least one), the validation split.

    Stories are stripped of surrounding whitespace and empty ones dropped. The source identity names the kind of
    source (and the hub name), never a machine-specific path, so the same text hashes the same everywhere.
    Raises DataError for a path that does not exist, a hub dataset that cannot be loaded, a missing or empty split,
    a missing text column, or an unreadable file."""
    if source == "synthetic":
        if synthetic_stories_n < 10:
            raise DataError(f"the synthetic source needs at least 10 stories (synthetic_stories_n={synthetic_stories_n})")
        train = synthetic_stories(synthetic_stories_n, seed=0)
        seen = set(train)
        n_val = synthetic_stories_n // 10
        val = [story for story in synthetic_stories(2 * n_val, seed=1) if story not in seen][:n_val]
        return train, val, f"synthetic:v1:n={synthetic_stories_n}"
    path = Path(source).expanduser()
    if path.is_dir():
        return _load_folder(path)
    if path.is_file():
        if path.suffix.lower() != ".txt":
            raise DataError(f"{path} is a file but not a .txt file of stories; a single-file source must be text with "
                            f"stories separated by {EOS_TOKEN} lines (put other data files in a folder, one per split)")
        stories = _read_text_stories(path)
        if len(stories) < 2:
            raise DataError(f"the text file {path} holds only {len(stories)} story; a single file needs at least two "
                            f"(its last 2% become the validation split)")
        n_val = max(1, len(stories) // HELD_OUT_EVERY)
        return stories[:-n_val], stories[-n_val:], "local-text-file:held-out-tail-2%"
    if path.exists():
        raise DataError(f"the data source {source!r} is neither a file nor a folder")
    if _looks_like_path(source):
        raise DataError(f"the data source {source!r} does not exist (no such file or folder). Give the path of a "
                        f"local copy, a hub name such as 'roneneldan/TinyStories', or 'synthetic'.")
    return _load_hub(source)


def text_hash(train: list[str], val: list[str], source_identity: str) -> str:
    """sha256 (first 16 hex) of the source identity and the raw text of both splits, story boundaries included."""
    h = hashlib.sha256(f"harness-text-v1\0{source_identity}\0".encode())
    for name, stories in (("train", train), ("validation", val)):
        h.update(f"{name}\0{len(stories)}\0".encode())
        for start in range(0, len(stories), 4096):
            encoded = [story.encode("utf-8") for story in stories[start:start + 4096]]
            h.update(np.array([len(b) for b in encoded], dtype="<u8").tobytes())
            h.update(b"".join(encoded))
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------------------------------
# Tokenizer


def _check_vocab_size(vocab_size: int) -> None:
    if vocab_size > MAX_VOCAB_SIZE:
        raise DataError(f"vocab_size={vocab_size} does not fit the uint16 token arrays (at most {MAX_VOCAB_SIZE})")
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size={vocab_size} is too small for a byte-level BPE: it needs at least "
                        f"{MIN_VOCAB_SIZE} (256 bytes + {EOS_TOKEN})")


def _byte_prefix(stories: list[str], max_bytes: int) -> list[str]:
    """The longest prefix of whole stories of at most max_bytes UTF-8 bytes (at least one story)."""
    total = 0
    for i, story in enumerate(stories):
        total += len(story.encode("utf-8")) + 1
        if total > max_bytes:
            return stories[:max(i, 1)]
    return stories


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def train_tokenizer(train_stories: list[str], vocab_size: int, train_bytes: int, path: Path) -> None:
    """Train a byte-level BPE (the ``tokenizers`` library) on the TRAIN split only: on its longest prefix of whole
    stories of at most ``train_bytes`` UTF-8 bytes (deterministic). The special token ``<|endoftext|>`` (the EOS) is
    id 0. Written atomically to ``path``: to a temporary file in the same folder, then os.replace."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    _check_vocab_size(vocab_size)
    if train_bytes <= 0:
        raise DataError(f"tokenizer_train_bytes must be positive (got {train_bytes})")
    if not train_stories:
        raise DataError("cannot train a tokenizer on an empty train split")
    prefix = _byte_prefix(train_stories, train_bytes)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(prefix, trainer=trainer, length=len(prefix))
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        tokenizer.save(tmp)
        _fsync(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encode_stories(tokenizer, stories: list[str], eos_id: int) -> np.ndarray:
    """uint16 ids of the stories, each followed by eos_id; encoded in chunks with encode_batch (parallel in Rust),
    so that only one chunk's ids are ever Python ints."""
    encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
    chunks = []
    for start in range(0, len(stories), ENCODE_CHUNK_STORIES):
        ids: list[int] = []
        for encoding in encode(stories[start:start + ENCODE_CHUNK_STORIES], add_special_tokens=False):
            ids.extend(encoding.ids)
            ids.append(eos_id)
        chunks.append(np.array(ids, dtype=np.uint16))
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.uint16)


# --------------------------------------------------------------------------------------------------------------------
# The cache


def _corrupt(entry: Path, file: Path, why: str) -> DataError:
    return DataError(f"the cache file {file} is unreadable or corrupt ({why}); delete the cache folder {entry} "
                     f"and rerun to rebuild it")


def _short_validation(n_tokens: int, n_stories: int, val_tokens: int) -> DataError:
    return DataError(f"the validation split has only {n_tokens} tokens ({n_stories} stories), fewer than "
                     f"2 x val_tokens={val_tokens} (the scored split in its first half, the monitoring split in its "
                     "second); lower val_tokens or use a source with a larger validation split")


def _halves(val_ids: np.ndarray, eos_id: int) -> int:
    """Where the validation split is cut, its first half the scored one: just after the end-of-story token nearest
    the middle, so that no story begins in one half and ends in the other (the middle itself without one)."""
    ends = np.flatnonzero(val_ids[:-1] == eos_id) + 1
    if not len(ends):
        return len(val_ids) // 2
    return int(ends[np.argmin(np.abs(ends - len(val_ids) // 2))])


def _remove_stale_temps(root: Path) -> None:
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        try:
            if now - tmp.stat().st_mtime > STALE_TEMP_AGE_S:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError:
            pass


def _build_entry(entry: Path, train: list[str], val: list[str], source_identity: str, data_hash: str,
                 vocab_size: int, val_tokens: int, tokenizer_train_bytes: int) -> None:
    """Tokenise into temporary folders next to ``entry`` and its scored folder (``_scored_dir``) and publish them by
    renaming, the scored one first: nothing half-written remains, and a published entry has its scored split."""
    from tokenizers import Tokenizer

    root, scored = entry.parent, _scored_dir(entry)
    root.mkdir(parents=True, exist_ok=True)
    scored.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(root)
    _remove_stale_temps(scored.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=root))
    tmp_scored = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=scored.parent))
    try:
        t0 = time.perf_counter()
        train_tokenizer(train, vocab_size, tokenizer_train_bytes, tmp / "tokenizer.json")
        t_tok = time.perf_counter() - t0
        tokenizer = Tokenizer.from_file(str(tmp / "tokenizer.json"))
        eos_id = tokenizer.token_to_id(EOS_TOKEN)
        t1 = time.perf_counter()
        val_ids = encode_stories(tokenizer, val, eos_id)
        if len(val_ids) < 2 * val_tokens:  # fail before the long train tokenisation
            raise _short_validation(len(val_ids), len(val), val_tokens)
        train_ids = encode_stories(tokenizer, train, eos_id)
        t_encode = time.perf_counter() - t1
        n_tokens = len(train_ids) + len(val_ids)
        log.info("tokenised %d tokens in %.1f s (%.0f tokens/s); tokenizer trained in %.1f s",
                 n_tokens, t_encode, n_tokens / max(t_encode, 1e-9), t_tok)
        half = _halves(val_ids, eos_id)
        if min(half, len(val_ids) - half) < val_tokens:
            raise _short_validation(len(val_ids), len(val), val_tokens)
        np.save(tmp / "train.npy", train_ids)
        np.save(tmp_scored / "score.npy", val_ids[:half])
        np.save(tmp / "monitor.npy", val_ids[half:])
        meta = {
            "format_version": CACHE_FORMAT_VERSION,
            "source_identity": source_identity,
            "data_hash": data_hash,
            "vocab_size": vocab_size,
            "tokenizer_vocab_size": tokenizer.get_vocab_size(),
            "tokenizer_train_bytes": tokenizer_train_bytes,
            "tokenizer_trained_on_stories": len(_byte_prefix(train, tokenizer_train_bytes)),
            "tokenizer_hash": hashlib.sha256((tmp / "tokenizer.json").read_bytes()).hexdigest()[:16],
            "eos_token": EOS_TOKEN,
            "eos_id": eos_id,
            "train_stories": len(train),
            "val_stories": len(val),
            "train_tokens": len(train_ids),
            "val_tokens_total": len(val_ids),
            "score_tokens": half,
            "monitor_tokens": len(val_ids) - half,
            "tokenizer_train_s": round(t_tok, 3),
            "tokenise_s": round(t_encode, 3),
            "tokenise_tokens_per_s": round(n_tokens / max(t_encode, 1e-9)),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        for name in ("train.npy", "monitor.npy", "meta.json"):
            _fsync(tmp / name)
        _fsync(tmp_scored / "score.npy")
        try:
            os.rename(tmp_scored, scored)
        except OSError:
            if not (scored / "score.npy").is_file():
                raise
            shutil.rmtree(tmp_scored, ignore_errors=True)  # published by another process first
        _fsync(scored.parent)
        try:
            os.rename(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process published the same entry first: use theirs
        _fsync(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(tmp_scored, ignore_errors=True)
        raise


def _scored_dir(entry: Path) -> Path:
    """``cache_dir/scored/<key>`` of the entry ``cache_dir/tokens/<key>``."""
    return entry.parent.parent / "scored" / entry.name


def _open_entry(entry: Path, vocab_size: int, val_tokens: int, with_score: bool) -> TokenData:
    """TokenData of a published cache entry, every file checked; DataError naming the file if one is corrupt.
    Without ``with_score`` the scored split's file is never opened (``score`` is None)."""
    from tokenizers import Tokenizer

    meta_path, tokenizer_path = entry / "meta.json", entry / "tokenizer.json"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as exc:
        raise _corrupt(entry, meta_path, f"{type(exc).__name__}: {exc}") from exc
    missing = [key for key in ("data_hash", "eos_id", "train_tokens", "score_tokens", "monitor_tokens",
                               "tokenizer_hash")
               if not isinstance(meta, dict) or key not in meta]
    if missing:
        raise _corrupt(entry, meta_path, f"missing {missing}")
    # The entry's name is its key: a folder copied or renamed by hand under another key is not this data.
    try:
        named = cache_key(meta["data_hash"], meta.get("vocab_size"), meta.get("tokenizer_train_bytes"))
    except DataError as exc:
        raise _corrupt(entry, meta_path, str(exc)) from exc
    if meta.get("format_version") != CACHE_FORMAT_VERSION or entry.name != named:
        raise _corrupt(entry, meta_path, f"it describes the entry {named} of format {meta.get('format_version')}, "
                                         f"not {entry.name}")
    try:
        raw = tokenizer_path.read_bytes()
        tokenizer = Tokenizer.from_str(raw.decode("utf-8"))
    except Exception as exc:  # the tokenizers library raises a bare Exception on bad JSON
        raise _corrupt(entry, tokenizer_path, f"{type(exc).__name__}: {exc}") from exc
    tokenizer_hash = hashlib.sha256(raw).hexdigest()[:16]
    if tokenizer_hash != meta["tokenizer_hash"] or tokenizer.token_to_id(EOS_TOKEN) != meta["eos_id"]:
        raise _corrupt(entry, tokenizer_path, "it is not the tokenizer this entry was built with")
    if tokenizer.get_vocab_size() > vocab_size:
        raise _corrupt(entry, tokenizer_path, f"its vocabulary of {tokenizer.get_vocab_size()} exceeds {vocab_size}")
    if min(meta["score_tokens"], meta["monitor_tokens"]) < val_tokens:
        raise _short_validation(meta["score_tokens"] + meta["monitor_tokens"], meta.get("val_stories", -1), val_tokens)
    files = [(entry / "train.npy", meta["train_tokens"]), (entry / "monitor.npy", meta["monitor_tokens"])]
    if with_score:
        files.append((_scored_dir(entry) / "score.npy", meta["score_tokens"]))
    arrays = {}
    for path, expected in files:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise _corrupt(entry, path, f"{type(exc).__name__}: {exc}") from exc
        if array.dtype != np.uint16 or array.ndim != 1 or len(array) != expected:
            raise _corrupt(entry, path, f"{array.dtype} array of shape {array.shape}, expected {expected} "
                                        f"uint16 tokens")
        arrays[path.name] = array
    score = np.array(arrays["score.npy"][:val_tokens]) if with_score else None
    monitor = np.array(arrays["monitor.npy"][:val_tokens])
    for split in (score, monitor):
        if split is not None:
            split.setflags(write=False)
    return TokenData(
        train=arrays["train.npy"], score=score, monitor=monitor, vocab_size=vocab_size, eos_id=int(meta["eos_id"]),
        data_hash=meta["data_hash"], tokenizer_hash=tokenizer_hash, tokenizer_path=tokenizer_path,
    )


def cache_key(data_hash: str, vocab_size: int, tokenizer_train_bytes: int) -> str:
    """The cache entry's folder name: the content hash plus everything else that changes the arrays."""
    if not is_data_hash(data_hash):
        raise DataError(f"{data_hash!r} is not a data hash")
    return f"{data_hash}-v{vocab_size}-tb{tokenizer_train_bytes}-f{CACHE_FORMAT_VERSION}"


def _prepared_pointer(cache_dir: Path, source: str, synthetic_stories_n: int, vocab_size: int,
                      tokenizer_train_bytes: int) -> Path:
    """``cache_dir/tokens/prepared/<digest>.json``: the entry a data source, as a profile names it, was last
    prepared into on this host (:func:`load_token_data` writes it, :func:`open_prepared` reads it)."""
    what = json.dumps([source, synthetic_stories_n, vocab_size, tokenizer_train_bytes, CACHE_FORMAT_VERSION])
    return Path(cache_dir).expanduser() / "tokens" / "prepared" / f"{hashlib.sha256(what.encode()).hexdigest()[:32]}.json"


def _point_to(pointer: Path, entry: Path) -> None:
    try:
        if pointer.is_file() and json.loads(pointer.read_text()).get("entry") == entry.name:
            return
    except (OSError, ValueError, AttributeError):
        pass
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        tmp = pointer.with_name(f".tmp-{os.getpid()}-{pointer.name}")
        tmp.write_text(json.dumps({"entry": entry.name}) + "\n")
        os.replace(tmp, pointer)
    except OSError as exc:  # a read-only cache: open_prepared then says the source was never prepared
        log.warning("could not record which token cache entry %s is: %s", entry.name, exc)


def open_prepared(source: str, vocab_size: int, val_tokens: int, cache_dir: Path, tokenizer_train_bytes: int,
                  synthetic_stories_n: int = 3000) -> TokenData:
    """The train and monitoring splits of a data source that :func:`load_token_data` prepared on this host, found
    without reading its text, and never the scored split. This is how a process that runs a program gets its data:
    it needs neither the raw text nor the datasets cache, from which the scored split could be rebuilt (its file is
    out of reach, its text would not be). DataError when the source was never prepared here (or its entry was
    removed), or an entry is corrupt."""
    _check_vocab_size(vocab_size)
    entry = _prepared_entry(source, vocab_size, cache_dir, tokenizer_train_bytes, synthetic_stories_n)
    return _open_entry(entry, vocab_size, val_tokens, with_score=False)


def is_prepared(source: str, vocab_size: int, cache_dir: Path, tokenizer_train_bytes: int,
                synthetic_stories_n: int = 3000) -> bool:
    """Whether :func:`open_prepared` would find this source's entry on this host (read nothing but two names)."""
    try:
        _prepared_entry(source, vocab_size, cache_dir, tokenizer_train_bytes, synthetic_stories_n)
    except DataError:
        return False
    return True


def _prepared_entry(source: str, vocab_size: int, cache_dir: Path, tokenizer_train_bytes: int,
                    synthetic_stories_n: int) -> Path:
    """The cache entry the record of this source's preparation names; DataError when there is none."""
    pointer = _prepared_pointer(cache_dir, source, synthetic_stories_n, vocab_size, tokenizer_train_bytes)
    try:
        name = json.loads(pointer.read_text())["entry"]
    except FileNotFoundError:
        raise DataError(f"the data source {source!r} was never prepared on this host (no {pointer}): the evaluator "
                        f"prepares it when it starts, and `harness baseline` does too") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"the token cache's record {pointer} is unreadable ({type(exc).__name__}); delete it and "
                        "prepare the data again") from None
    if not isinstance(name, str) or Path(name).name != name or name.startswith("."):
        raise DataError(f"the token cache's record {pointer} names no entry; delete it and prepare the data again")
    entry = pointer.parent.parent / name
    if not entry.is_dir():
        raise DataError(f"the token cache entry {entry} that {pointer} names is gone: prepare the data again")
    return entry


def load_token_data(source: str, vocab_size: int, val_tokens: int, cache_dir: Path,
                    tokenizer_train_bytes: int, synthetic_stories_n: int = 3000, with_score: bool = True) -> TokenData:
    """Load the text (:func:`load_text_splits`), train or reuse the tokenizer, tokenise both splits and cache them.

    The cache entry ``cache_dir/tokens/<data_hash>-v<vocab_size>-tb<tokenizer_train_bytes>-f<format>/`` holds
    tokenizer.json, train.npy (the whole train split), monitor.npy (the validation split's second half) and
    meta.json; ``cache_dir/scored/<the same key>/score.npy`` holds the first half. A second
    call with the same inputs tokenises nothing (``STATS["cache_hits"]`` counts it; ``STATS["builds"]`` counts
    builds); a different val_tokens reuses the entry. An entry is built in a temporary folder and published by
    renaming it, so a crash never leaves a half-written entry; left-over temporary folders are removed after a day.

    Returns TokenData whose ``train`` is a read-only memory map of the cached array (shared between processes),
    ``score`` the first ``val_tokens`` tokens of the first half (None without ``with_score``: the training sandbox
    never opens that file) and ``monitor`` the first ``val_tokens`` of the second half. Raises
    DataError if vocab_size is out of range (257..65535), if a half of the validation split has fewer than val_tokens
    tokens, if a cache file is unreadable or corrupt
    (naming the file and the folder to delete), and for every data problem :func:`load_text_splits` reports."""
    _check_vocab_size(vocab_size)
    if val_tokens <= 0:
        raise DataError(f"val_tokens must be positive (got {val_tokens})")
    train, val, source_identity = load_text_splits(source, synthetic_stories_n)
    data_hash = text_hash(train, val, source_identity)
    entry = Path(cache_dir).expanduser() / "tokens" / cache_key(data_hash, vocab_size, tokenizer_train_bytes)
    if entry.is_dir():
        STATS["cache_hits"] += 1
        log.info("token cache hit: %s", entry)
    else:
        log.info("building the token cache %s from %s (%d train, %d validation stories)",
                 entry, source_identity, len(train), len(val))
        _build_entry(entry, train, val, source_identity, data_hash, vocab_size, val_tokens, tokenizer_train_bytes)
        STATS["builds"] += 1
    data = _open_entry(entry, vocab_size, val_tokens, with_score)
    _point_to(_prepared_pointer(cache_dir, source, synthetic_stories_n, vocab_size, tokenizer_train_bytes), entry)
    return data


def open_cached(cache_dir: Path, data_hash: str, vocab_size: int, val_tokens: int,
                tokenizer_train_bytes: int) -> TokenData:
    """The TokenData of an entry that :func:`load_token_data` built, found by its data hash without reading the
    text again (the trusted scorer's way in). DataError when there is no such entry or a file of it is corrupt."""
    entry = Path(cache_dir).expanduser() / "tokens" / cache_key(data_hash, vocab_size, tokenizer_train_bytes)
    if not entry.is_dir():
        raise DataError(f"no token cache entry {entry}: the data it names was never prepared on this host")
    return _open_entry(entry, vocab_size, val_tokens, with_score=True)


def validation_windows(tokens: np.ndarray, context_len: int) -> np.ndarray:
    """Non-overlapping windows of context_len + 1 tokens (stride context_len) over a validation split, int64: the
    monitoring curve's windows in training, the scored windows in the scorer."""
    n = (len(tokens) - 1) // context_len
    idx = np.arange(n)[:, None] * context_len + np.arange(context_len + 1)[None, :]
    return np.asarray(tokens).astype(np.int64)[idx]


def _main(argv: list[str]) -> dict:
    """``fetch SOURCE`` (:func:`fetch_hub_source`) or ``prepared SOURCE VOCAB TRAIN_BYTES STORIES``
    (:func:`is_prepared`, in the cache of this environment): what the host asks of its data before a sandbox runs."""
    if argv[:1] == ["fetch"] and len(argv) == 2:
        try:
            return {"splits": fetch_hub_source(argv[1])}
        except DataError as exc:
            return {"error": str(exc)}
    if argv[:1] == ["prepared"] and len(argv) == 5:
        return {"prepared": is_prepared(argv[1], int(argv[2]), default_cache_dir(), int(argv[3]), int(argv[4]))}
    raise SystemExit("usage: python -m harness.data fetch SOURCE OUT.json | prepared SOURCE VOCAB TRAIN_BYTES "
                     "STORIES OUT.json")


if __name__ == "__main__":  # the host's questions, each in a process of its own (harness.trusted.executor)
    import sys

    from harness.trusted.process_lifetime import die_with_parent

    die_with_parent()  # a download outliving a lost worker would go on, with the user's login, for nobody
    reply = _main(sys.argv[1:-1])
    Path(sys.argv[-1]).write_text(json.dumps(reply))
