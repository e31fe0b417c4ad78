"""Load a local Hugging Face causal LM straight into ZeRO-3 partitions.

The model is built inside `deepspeed.zero.Init`, so every parameter is partitioned as it is created; then each rank
reads the safetensors files one tensor at a time (memory-mapped) and copies only ITS slice of the flattened tensor into
its partition. No rank ever holds more than one full tensor, and no collective is needed to load.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel
from transformers.initialization import no_init_weights
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING


def safetensors_index(model_dir: Path) -> dict[str, Path]:
    """Tensor name -> shard file, from model.safetensors.index.json or the single model.safetensors."""
    index_file = model_dir / "model.safetensors.index.json"
    if index_file.is_file():
        weight_map = json.loads(index_file.read_text())["weight_map"]
        return {name: model_dir / shard for name, shard in weight_map.items()}
    single = model_dir / "model.safetensors"
    if not single.is_file():
        raise FileNotFoundError(f"{model_dir}: no model.safetensors or model.safetensors.index.json (only safetensors checkpoints are supported)")
    with safe_open(str(single), framework="pt") as handle:
        return {name: single for name in handle.keys()}


def _copy_into_partition(param: torch.nn.Parameter, full: torch.Tensor) -> None:
    """Write this rank's slice of `full` into a ZeRO-3 parameter's local partition (`ds_tensor`)."""
    if tuple(full.shape) != tuple(param.ds_shape):
        raise ValueError(f"shape mismatch: file has {tuple(full.shape)}, model expects {tuple(param.ds_shape)}")
    partition = param.ds_tensor
    size = partition.ds_numel
    start = size * dist.get_rank(group=param.ds_process_group)
    flat = full.reshape(-1)
    piece = flat[start : min(start + size, flat.numel())]
    with torch.no_grad():
        partition.zero_()
        partition.narrow(0, 0, piece.numel()).copy_(piece.to(partition.dtype))


def load_weights_into_zero3(model: PreTrainedModel, model_dir: Path) -> None:
    """Fill every parameter from the checkpoint, one shard file open at a time: a rank's host memory holds its
    partitions, one full tensor and the pages of one memory-mapped shard, never the whole checkpoint."""
    index = safetensors_index(model_dir)
    params = dict(model.named_parameters())
    names_by_shard: dict[Path, list[str]] = {}
    for name in params:
        if name not in index:
            raise KeyError(f"{model_dir}: the checkpoint has no tensor {name!r} that the model needs")
        names_by_shard.setdefault(index[name], []).append(name)
    for shard, names in names_by_shard.items():
        with safe_open(str(shard), framework="pt") as handle:
            for name in names:
                full = handle.get_tensor(name)
                if hasattr(params[name], "ds_tensor"):
                    _copy_into_partition(params[name], full)
                else:
                    with torch.no_grad():
                        params[name].copy_(full.to(params[name].dtype))
                del full  # no reference into this shard may outlive its handle


def import_architecture_outside_zero_init(config: PretrainedConfig) -> type[PreTrainedModel]:
    """Import `config`'s modeling module (looking its class up does), to be called before zero.Init opens.

    DeepSpeed's zero.Init records the __init__ of every class first defined inside it (its __init_subclass__ hook) and
    puts that back when the context closes, silently undoing class decorators applied after definition. transformers
    >= 5.25 wraps attention's __init__ and forward with the `kernels` package's use_kernelized_func, so when the modeling
    module was first imported inside zero.Init, the first model kept its per-instance `_kernel_funcs` and every later
    one (the reference) failed in forward (docs/quickstart.md, "Versions and the lock").
    """
    return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]


def partitioned_causal_lm(model_dir: Path, ds_config: dict, dtype: torch.dtype,
                          attn_implementation: str) -> PreTrainedModel:
    """`model_dir`'s architecture created under ZeRO-3 (per `ds_config`): partitioned, its weights not yet loaded."""
    import deepspeed

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(model_dir)
    import_architecture_outside_zero_init(config)
    # Random init is skipped: every weight comes from the files, and HF's init cannot index ZeRO-3's empty placeholders.
    # No `dtype=` for zero.Init: DeepSpeed 0.19 turns an explicit dtype into bf16 on the CPU accelerator (an operator
    # precedence slip in Init._set_dtype); without it the dtype follows the config's bf16/fp16 flags, which we rendered.
    with deepspeed.zero.Init(config_dict_or_path=ds_config), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation=attn_implementation)
    model.tie_weights()  # tied checkpoints store the embedding once; after tying, named_parameters lists it once too
    return model


def load_causal_lm(model_dir: str | Path, ds_config: dict, dtype: torch.dtype, attn_implementation: str) -> PreTrainedModel:
    """Build `model_dir`'s architecture partitioned under ZeRO-3 (per `ds_config`) and fill it from its safetensors."""
    model = partitioned_causal_lm(Path(model_dir), ds_config, dtype, attn_implementation)
    load_weights_into_zero3(model, Path(model_dir))
    return model
