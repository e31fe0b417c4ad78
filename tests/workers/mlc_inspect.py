"""torchrun worker: build the real Trainer with MLC, record how ZeRO-3 partitioned the MLC projection and gather it as
initialised, optionally again right after loading the checkpoint named by checkpoint.resume, then train and gather it
once more at the end.

Usage: mlc_inspect.py [--config YAML] key=value ...
Writes <output_dir>/mlc_inspect_rank<r>.json (partition sizes, exit code) on every rank and, on rank 0,
<output_dir>/mlc_projection.pt = {"initial": {name: tensor}, "after_load": {name: tensor} or None, "final": {...}}.
The test process itself never joins the process group."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from mpo_dist.config import load_config
from mpo_dist.train.trainer import Trainer

PROJECTION_PREFIX = "mlc_projection."


def projection_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    """The full projection gathered through the engine API (rank 0; other ranks get {})."""
    state = trainer.policy.gathered_state_dict()
    return {name: tensor for name, tensor in state.items() if name.startswith(PROJECTION_PREFIX)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", type=Path)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    trainer = Trainer(config)
    report = {
        "world_size": trainer.ctx.world_size,
        "projection": [{"name": name, "full": int(p.ds_numel), "local": int(p.ds_tensor.numel())}
                       for name, p in trainer.policy.module.named_parameters() if name.startswith(PROJECTION_PREFIX)],
    }
    initial = projection_weights(trainer)
    after_load = None
    if config.checkpoint.resume not in ("none", "auto"):  # train() loads it again: loading is idempotent
        trainer.checkpoints.load(trainer.policy, Path(config.checkpoint.resume))
        after_load = projection_weights(trainer)
    result = trainer.train()
    final = projection_weights(trainer)
    report["exit_code"] = result.exit_code
    (config.output_dir / f"mlc_inspect_rank{trainer.ctx.rank}.json").write_text(json.dumps(report))
    if trainer.ctx.is_main:
        torch.save({"initial": initial, "after_load": after_load, "final": final}, config.output_dir / "mlc_projection.pt")


if __name__ == "__main__":
    main()
