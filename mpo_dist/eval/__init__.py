"""Evaluation: per-language held-out reward gaps, generations judged safe/unsafe/invalid (safety rate, attack-success
rate, invalid rate, with binomial errors), and a report (markdown, HTML, JSON, PNG plots, TensorBoard). `mpo-dist eval`
(mpo_dist.eval.command) ties them together.

Modules: readers (eval data formats), reward_gaps, generation (sharded batched generation + judging), verdicts (the
grades and the judge protocol), judge (pluggable safety judges), validity (the invalid-grade rules), binomial (rate
errors), report (metrics and files). Import from the modules; this package file stays import-free so the CLI
starts without loading torch.
"""
