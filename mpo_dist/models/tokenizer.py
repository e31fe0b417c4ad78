"""Load a tokenizer the way its directory declares it.

transformers 5 overrides the declared `tokenizer_class` for some model types (Qwen2 always gets Qwen2Tokenizer), which
turns the sentencepiece tokenizer of our tiny Qwen2 model into a byte-level one that drops non-Latin text. Honouring
`tokenizer_config.json` changes nothing for real checkpoints, whose declared class is the right one.
"""
from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.auto.tokenization_auto import tokenizer_class_from_name


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    config_file = Path(path) / "tokenizer_config.json"
    declared = json.loads(config_file.read_text()).get("tokenizer_class") if config_file.is_file() else None
    tokenizer_class = tokenizer_class_from_name(declared) if declared else None
    return (tokenizer_class or AutoTokenizer).from_pretrained(path, local_files_only=True)
