"""`mpo-dist check` and the pre-flight checks `train` runs before any process group or DeepSpeed starts.

Everything a run needs is checked on the login node in seconds (docs/quickstart.md, "Check a run first"): the config,
the model directory, every data file, row and field, the languages, the reference cache, the resume path, the
DeepSpeed templates and the step arithmetic; `check` adds the memory plan and, on request, the reference model's
dominant-language reward gap (MPO's precondition).
"""
