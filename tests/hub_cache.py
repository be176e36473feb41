"""A hub dataset as the Hugging Face datasets cache holds it once ``datasets.load_dataset(name)`` has run online:
what a preparation sandbox, which has no network, then loads offline. Built from text the project generates."""

import shutil
from pathlib import Path


def cache_hub_dataset(datasets_cache: Path, name: str, splits: dict[str, list[str]], build: Path) -> Path:
    """Write ``splits`` ({split: stories}, column ``text``) where ``datasets`` looks for the cached copy of the hub
    dataset ``name`` (owner/name) under ``datasets_cache``; ``build`` is a scratch folder. Returns the copy's folder."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets.naming import camelcase_to_snakecase

    build.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, stories in splits.items():
        files[split] = str(build / f"{split}.parquet")
        pq.write_table(pa.table({"text": stories}), files[split])
    datasets.load_dataset("parquet", data_files=files, cache_dir=str(build / "built"))
    [built] = [p for p in (build / "built" / "parquet").glob("*/*/*") if p.is_dir()]
    owner, dataset = name.split("/")
    snake = camelcase_to_snakecase(dataset)
    # <cache>/<owner>___<name>/<config>/<version>/<hash>/<name>-<split>.arrow, as a download leaves it
    copy = Path(datasets_cache) / f"{owner}___{snake}" / "default" / built.parent.name / built.name
    copy.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(built), copy)
    for arrow in copy.glob("parquet-*"):
        arrow.rename(copy / arrow.name.replace("parquet-", f"{snake}-", 1))
    return copy
