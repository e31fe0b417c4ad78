"""The values the planner's settings take and the defaults it assumes, in a module that imports nothing heavy: the
`mpo-dist plan` parser offers them in `--help` without loading torch, and PlanSettings validates against the same
tuples (mpo_dist/plan/memory.py)."""
from __future__ import annotations

from pathlib import Path

BUNDLED_MODELS_DIR = Path(__file__).resolve().parent.parent / "configs" / "models"

DEEPSPEED_DEFAULT_SUB_GROUP_SIZE = 1_000_000_000  # zero_optimization.sub_group_size default (elements)
HALF_PRECISION_DTYPES = ("bf16", "fp16")  # both 2 bytes; ZeRO-3 accounting is identical
GRAD_ACCUM_DTYPES = ("fp32", *HALF_PRECISION_DTYPES)  # DeepSpeed's data_types.grad_accum_dtype
REFERENCE_MODES = ("online", "cache", "none")
ATTENTION_KINDS = ("flash", "eager")


def bundled_model_names() -> list[str]:
    """The model shapes shipped in mpo_dist/configs/models/, which `--model NAME` and `--plan-model NAME` accept."""
    return sorted(path.stem for path in BUNDLED_MODELS_DIR.glob("*.json"))
