"""`mpo-dist plan`: will a model train under ZeRO-3 on this hardware? Per-GPU and per-node memory estimates."""
from mpo_dist.plan.memory import (
    DeepSpeedCrossCheck,
    MemoryPlan,
    PlanSettings,
    compare_with_deepspeed,
    deepspeed_model_state_estimate,
    plan_memory,
)
from mpo_dist.plan.model_shape import ModelShape, ModelSpecError, bundled_model_names, load_model_shape

__all__ = [
    "DeepSpeedCrossCheck", "MemoryPlan", "ModelShape", "ModelSpecError", "PlanSettings", "bundled_model_names",
    "compare_with_deepspeed", "deepspeed_model_state_estimate", "load_model_shape", "plan_memory",
]
