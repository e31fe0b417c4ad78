"""Which file to read and how: one entry of `data.train_files` / `data.eval_files`.

Here, not in config.py, so the data layer needs nothing from the config layer above it (README.md, "Layout").
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from mpo_dist.option import option


@dataclass
class DataFile:
    path: str = option(dataclasses.MISSING, "a .jsonl / .json / .parquet file, a `datasets` directory, or sample:train / sample:heldout")
    format: str = option("auto", "auto | unified | mpo | mlc")
    source_language: str = option("", "released MPO format only: language of source_* fields "
                                      "(default: data.dominant_language)")
    target_language: str = option("", "released MPO format only: language of target_* fields (required there)")
