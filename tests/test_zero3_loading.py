"""A sharded safetensors checkpoint loads straight into ZeRO-3 partitions on 2 ranks (gloo, CPU): every gathered
parameter equals the file, no rank holds a full copy, and filling the partitions takes at most one shard file and one
full tensor of host memory on top of them (never the whole checkpoint)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from conftest import REPO_ROOT, torchrun
from slurm_cluster import LAUNCHER_VARIABLES

pytestmark = pytest.mark.multiprocess

MIB = 2**20
ALLOCATOR_SLACK_BYTES = 16 * MIB


def test_sharded_checkpoint_loads_partitioned_equal_to_the_file_in_bounded_host_memory(tmp_path: Path) -> None:
    # 152 M parameters (580 MiB fp32) of at most 9 MiB each in 40 MB shards: many shards, small tensors, so
    # the bound below sits far under what holding every shard (or a full copy) would take
    config = LlamaConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=16, num_attention_heads=12,
                         num_key_value_heads=12, vocab_size=1024, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir, safe_serialization=True, max_shard_size="40MB")
    shards = sorted(model_dir.glob("model-*.safetensors"))
    assert len(shards) > 3 and (model_dir / "model.safetensors.index.json").is_file()
    checkpoint_bytes = sum(p.numel() * 4 for p in model.parameters())
    largest_tensor_bytes = max(p.numel() * 4 for p in model.parameters())
    del model

    result = torchrun(2, [str(REPO_ROOT / "tests/workers/zero3_load_inspect.py"), str(model_dir), str(tmp_path)],
                      REPO_ROOT, env={"DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    reports = [json.loads((tmp_path / f"load_rank{rank}.json").read_text()) for rank in range(2)]
    for report in reports:
        assert all(p["equal"] for p in report["parameters"]), [p["name"] for p in report["parameters"] if not p["equal"]]
        assert all(p["local"] < p["full"] for p in report["parameters"] if p["full"] >= 1024)
        bound = max(s.stat().st_size for s in shards) + largest_tensor_bytes + ALLOCATOR_SLACK_BYTES
        assert report["load_transient_bytes"] <= bound, (report["load_transient_bytes"] / MIB, bound / MIB)
        assert bound < checkpoint_bytes / 8  # holding every shard, or a full copy, would exceed it many times


@pytest.mark.canary
def test_a_second_model_built_under_zero_init_runs_like_the_first(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    # The policy, then the reference: with transformers >= 5.25 and `kernels` installed, the second build lost the
    # per-instance state of kernels' __init__ wrapper when the modeling module was first imported inside zero.Init, and
    # its forward raised AttributeError (engine/zero3_loading.py import_architecture_outside_zero_init).
    out_file = tmp_path / "logits.pt"
    # A world of its own: not the RANK/MASTER_PORT that an in-process trainer test left in this process's environment
    fresh_env = {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}
    result = subprocess.run([sys.executable, str(REPO_ROOT / "tests/workers/zero3_two_builds.py"),
                             str(tiny_models["llama"]), str(out_file)],
                            cwd=REPO_ROOT, env=fresh_env | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    logits = torch.load(out_file)
    for built in logits["zero3"]:
        torch.testing.assert_close(built, logits["plain"], rtol=1e-5, atol=1e-5)
