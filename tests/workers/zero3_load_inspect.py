"""torchrun worker: load a sharded safetensors checkpoint into ZeRO-3 partitions and report, per rank, the host memory
that filling the partitions took on top of them and, for every parameter, its local partition size and whether the
gathered tensor equals the file.

argv: MODEL_DIR OUT_DIR. Writes OUT_DIR/load_rank<r>.json (the test process itself never joins the group)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import deepspeed
import torch
from safetensors.torch import load_file

from mpo_dist.engine.engines import init_distributed
from mpo_dist.engine.zero3_loading import load_weights_into_zero3, partitioned_causal_lm


def status_bytes(field: str) -> int:
    """VmRSS (resident now) or VmHWM (its high-water mark) of this process, from /proc/self/status."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def main() -> None:
    model_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
    ctx = init_distributed()
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    model = partitioned_causal_lm(model_dir, ds_config, torch.float32, "eager")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current VmRSS (Linux)
    before = status_bytes("VmRSS")
    load_weights_into_zero3(model, model_dir)
    peak = status_bytes("VmHWM")
    local_bytes = sum(p.ds_tensor.numel() * p.ds_tensor.element_size() for p in model.parameters())

    expected = {}
    for shard in sorted(model_dir.glob("model-*.safetensors")):
        expected.update(load_file(shard))
    parameters = []
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param]):
            equal = bool(torch.equal(param.data, expected[name]))
        parameters.append({"name": name, "full": int(param.ds_numel), "local": int(param.ds_tensor.numel()),
                           "equal": equal})
    report = {"rank": ctx.rank, "load_transient_bytes": peak - before, "local_partition_bytes": local_bytes,
              "parameters": parameters}
    (out_dir / f"load_rank{ctx.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
