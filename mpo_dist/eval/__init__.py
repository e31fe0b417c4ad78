"""Evaluation: per-language held-out reward gaps, generations judged safe/unsafe (safety rate, attack-success rate), and
a report (markdown, HTML, JSON, PNG plots, TensorBoard). `mpo-dist eval` (mpo_dist.eval.command) ties them together.

Modules: readers (eval data formats), reward_gaps, generation (sharded batched generation + judging), judge (pluggable
safety judges), report (metrics and files). Import from the modules; this package file stays import-free so the CLI
starts without loading torch.
"""
