"""`mpo-dist plan`: will a model train under ZeRO-3 on this hardware? Per-GPU and per-node memory estimates.

Modules: memory (the accounting, PlanSettings, plan_memory, the DeepSpeed cross-check), model_shape (a model's exact
shape from its config), table (the printed plan), choices (the values the settings take). Import from the modules; this
package file stays import-free so the CLI starts without loading torch.
"""
