"""`mpo-dist config-keys`: every config key with its type, default and meaning (mpo_dist.config_keys)."""
from __future__ import annotations


def register(subparsers) -> None:
    parser = subparsers.add_parser("config-keys", help="list every config key with its type, default and meaning",
                                   description="Every key `--config` YAML and `--set KEY=VALUE` accept "
                                               "(docs/configuration.md).")
    parser.set_defaults(func=_run)


def _run(args) -> int:
    from mpo_dist.config_keys import render_config_keys

    print(render_config_keys())
    return 0
