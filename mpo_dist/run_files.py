"""Names of what a training run writes that other commands read back (the eval report reads a run's evaluations).

A module of its own, below both the train and the eval layer, so the writer and the reader share one spelling without
eval importing the trainer.
"""
from __future__ import annotations

EVAL_FILE = "eval.jsonl"  # one line per evaluation: {"step": N, "reward_gap": {language: gap}}
EVAL_TENSORBOARD_PREFIX = "eval/reward_gap/"  # TensorBoard tag prefix of the same numbers: eval/reward_gap/<language>
CONFIG_FILE = "config.json"  # the resolved config of the run's latest launch
METRICS_FILE = "metrics.jsonl"  # every logged scalar, one JSON line per step and prefix (rank 0)
SAMPLES_FILE = "samples.jsonl"  # the example ids of every step
COMPLETED_FILE = "COMPLETED"  # training finished: the steps and the SHA-256 of the config.json they were trained with
