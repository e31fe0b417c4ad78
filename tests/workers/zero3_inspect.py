"""torchrun worker: build the real Trainer, record how ZeRO-3 partitioned the policy and the reference, then train.

Writes <output_dir>/inspect_rank<r>.json for the test to assert on (the test process itself never joins the group)."""
from __future__ import annotations

import json
import sys

from mpo_dist.config import load_config
from mpo_dist.train.trainer import Trainer


def partition_report(module) -> list[dict]:
    return [{"name": name, "full": int(p.ds_numel), "local": int(p.ds_tensor.numel()), "device": p.ds_tensor.device.type}
            for name, p in module.named_parameters()]


def main() -> None:
    config = load_config(None, sys.argv[1:])
    trainer = Trainer(config)
    report = {
        "world_size": trainer.ctx.world_size,
        "policy": partition_report(trainer.policy.module),
        "reference": partition_report(trainer.reference.module),
        "reference_offload_device": str(trainer.reference.engine.zero_offload_param().device),
        "reference_requires_grad": any(p.requires_grad for p in trainer.reference.module.parameters()),
    }
    result = trainer.train()
    report["losses"] = result.losses
    report["exit_code"] = result.exit_code
    (config.output_dir / f"inspect_rank{trainer.ctx.rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    main()
