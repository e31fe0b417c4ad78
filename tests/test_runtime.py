"""One dtype vocabulary for every command and config, and seeding (mpo_dist/runtime.py)."""
import argparse
import random

import numpy as np
import pytest
import torch

from mpo_dist.cli import build_parser
from mpo_dist.config import ConfigError, load_config
from mpo_dist.runtime import canonical_dtype, resolve_dtype, seed_everything, torch_dtype

SPELLINGS = [("fp32", torch.float32), ("float32", torch.float32), ("bf16", torch.bfloat16),
             ("bfloat16", torch.bfloat16), ("fp16", torch.float16), ("float16", torch.float16)]


@pytest.mark.parametrize("name, expected", SPELLINGS)
def test_both_spellings_name_the_same_torch_dtype(name, expected):
    assert torch_dtype(name) is expected
    assert torch_dtype(canonical_dtype(name)) is expected


def test_auto_is_bf16_on_gpu_and_fp32_on_cpu_and_names_come_back_canonical():
    assert (resolve_dtype("auto", on_gpu=True), resolve_dtype("auto", on_gpu=False)) == ("bf16", "fp32")
    assert resolve_dtype("bfloat16", on_gpu=False) == "bf16"  # DeepSpeed's config keys and the cache fingerprint use it


def test_unknown_dtype_names_the_choices():
    with pytest.raises(ValueError, match="'float64'.*fp32, bf16, fp16, float32, bfloat16, float16"):
        canonical_dtype("float64")


def _dtype_choices(command: str) -> set[str]:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    option = next(a for a in subparsers.choices[command]._actions if "--dtype" in a.option_strings)
    return set(option.choices) - {"auto"}


def test_eval_export_and_model_dtype_accept_the_same_names(tmp_path):
    names = {name for name, _ in SPELLINGS}
    assert _dtype_choices("eval") == _dtype_choices("export") == names
    for name in names:
        assert load_config(None, ["model.path=/models/placeholder", f"model.dtype={name}"]).model.dtype == name
    with pytest.raises(ConfigError, match="model.dtype"):
        load_config(None, ["model.path=/models/placeholder", "model.dtype=float64"])


def test_seed_everything_repeats_python_numpy_and_torch():
    def draw() -> tuple:
        return random.random(), float(np.random.rand()), float(torch.rand(()))

    seed_everything(123)
    first = draw()
    seed_everything(123)
    assert draw() == first
