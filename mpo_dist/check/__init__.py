"""The pre-flight checks `train`, `precompute-ref` and `mpo-dist check` run before any process group or DeepSpeed starts.

Everything a run needs is checked in seconds, on a login node too (docs/quickstart.md, "Check a run first"): the
config, the model directory, every data file, row and field, the languages, the reference cache, the DeepSpeed
templates, the step arithmetic, the memory plan, the resume checkpoint (resume.py), the library versions (versions.py)
and, on request, MPO's reference reward gap (reference_gap.py). This package sits below mpo_dist.train (the trainer
imports it); `mpo-dist check` runs them in order through run_check.py, its options being mpo_dist/cli/check.py.
"""
