"""The options that name a run, shared by `train`, `check` and `precompute-ref` so all three read a config the same way."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_run_options(parser: argparse.ArgumentParser, *, resume: bool) -> None:
    parser.add_argument("--config", type=Path, help="YAML config (see docs/configuration.md)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config key, e.g. --set optim.lr=1e-6 (all keys: mpo-dist config-keys)")
    if resume:
        parser.add_argument("--resume", help="none | auto | PATH (shortcut for --set checkpoint.resume=...)")


def run_overrides(args: argparse.Namespace, *extra: str) -> list[str]:
    """--set values, then --resume as checkpoint.resume, then `extra` (what the command itself requires)."""
    resume = getattr(args, "resume", None)
    return list(args.set or []) + ([f"checkpoint.resume={resume}"] if resume else []) + list(extra)
