"""Evaluation: per-language held-out reward gaps, generations judged safe/unsafe/invalid (safety rate, attack-success
rate, invalid rate, with binomial errors), over-refusal and utility on benign prompts, and a report (markdown, HTML,
JSON, PNG plots, TensorBoard). `mpo-dist eval` (mpo_dist.eval.pipeline, its options in mpo_dist.cli.evaluate) ties them together.

Modules: readers (eval data formats), benign (benign prompts + reference answers), reward_gaps, utility (reference-answer
log-likelihood), generation (sharded batched generation + grading), verdicts (the grades and the judge protocols), judge
(pluggable judges), validity (the invalid-grade rules), binomial (rate errors), sample_mean (errors of means and paired
changes), errors (EvalError), report (metrics and files). Import from the modules; this package file stays import-free
so the CLI starts without loading torch.
"""
