"""MLC inside the real trainer.

1 process (padded and packed batches): the logged mlc/loss of step 1 equals an independent float64 computation (HF
hidden states of layer mlc.layer at the last prompt token of each language's prompt, each prompt run on its own; the
initial projection read back from a step-0 checkpoint through zero_to_fp32; unit norm, SVD, cross-entropy towards the
top singular value), and `mlc.every` adds λ·MLC on optimiser steps 0, 2, ... only.

2 processes (ZeRO-3 over gloo): DPO+MLC and MPO+MLC from the example configs on a one-batch subset of the sample data
lose loss, the projection is partitioned across the ranks, and a resumed run restores the projection exactly and then
trains exactly like the uninterrupted run.
"""
from __future__ import annotations

import json
from pathlib import Path
from statistics import fmean

import pytest
import torch
from transformers import AutoModelForCausalLM

from mpo_dist.models.tokenizer import load_tokenizer
from mpo_dist.config import load_config
from mpo_dist.data.data_file import DataFile
from mpo_dist.data.loading import load_all, resolve_path
from mpo_dist.data.tokenize import ChatEncoder
from mpo_dist.losses.mlc import MLCProjection
from mpo_dist.models.alignment_model import AlignmentModel
from mpo_dist.engine.checkpoint_layout import tag_for
from mpo_dist.train.logger import METRICS_FILE
from mpo_dist.train.trainer import SAMPLES_FILE, Trainer

from conftest import REPO_ROOT, read_jsonl, torchrun
from test_baselines_train import checkpoint_weights, float64_model

LANGUAGES = ["en", "zh", "ja"]
PROJECTION = ("mlc_projection.linear.weight", "mlc_projection.linear.bias")


def float64_mlc_loss(vectors: torch.Tensor, tau: float) -> float:
    """L_MLC of one prompt from its projected vectors [L, D] (docs/methods/mlc.md), in float64."""
    unit = vectors / vectors.norm(dim=-1, keepdim=True)
    sigma = torch.linalg.svdvals(unit)
    return float(-torch.log_softmax(sigma / sigma[0] / tau, dim=0)[0])


@pytest.mark.parametrize(("layer", "packing"), [(-1, False), (1, True)])
def test_mlc_loss_and_every_match_float64(layer: int, packing: bool, tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model_dir = tiny_models["llama"]
    tau, weight = 0.3, 0.5
    config = load_config(None, [
        f"model.path={model_dir}", "model.attn_implementation=eager", f"train.output_dir={tmp_path}", "train.max_steps=3",
        "train.micro_batch_size=2", "data.max_length=128", "data.max_prompt_length=64", "data.eval_files=[]",
        "loss.name=cpo", "mlc.enabled=true", f"mlc.languages=[{','.join(LANGUAGES)}]", "mlc.dim=32", f"mlc.tau={tau}",
        f"mlc.weight={weight}", "mlc.every=2", f"mlc.layer={layer}", f"data.packing={packing}", "logging.progress_bar=false",
        "logging.tensorboard=false",
    ])
    trainer = Trainer(config)
    trainer.save(0)  # the freshly initialised projection, as every rank holds it before the first step
    initial = checkpoint_weights(tmp_path, 0)
    projection_weight, projection_bias = (initial[name].double() for name in PROJECTION)
    result = trainer.train()
    assert result.exit_code == 0 and result.steps_done == 3

    (step_ids,) = [row["ids"] for row in read_jsonl(tmp_path / SAMPLES_FILE) if row["step"] == 1]
    records = {r.id: r for r in load_all([DataFile("sample:train")], "en")}
    encoder = ChatEncoder(load_tokenizer(model_dir), 128, 64)
    model = float64_model(model_dir)
    losses = []
    with torch.no_grad():
        for example_id in step_ids:
            record = records[example_id.split("/")[0]]
            states = []
            for language in LANGUAGES:
                prompt = torch.tensor([encoder.prompt_ids(record.prompt[language])])
                states.append(model(input_ids=prompt, output_hidden_states=True).hidden_states[layer][0, -1])
            losses.append(float64_mlc_loss(torch.stack(states) @ projection_weight.T + projection_bias, tau))
    metrics = {row["step"]: row for row in read_jsonl(tmp_path / METRICS_FILE)}
    assert metrics[1]["train/mlc/loss"] == pytest.approx(fmean(losses), rel=1e-4, abs=1e-7)

    for step, mlc_applied in ((1, True), (2, False), (3, True)):  # optimiser steps 0, 1, 2 with every=2
        logged = metrics[step]
        base = logged["train/cpo/preference"] + logged["train/cpo/nll"]  # CPO with nll_weight 1
        mlc_term = weight * logged["train/mlc/loss"]
        assert mlc_term > 1e-3, "the MLC term must be large enough to tell the two cases apart"
        assert logged["train/loss"] == pytest.approx(base + (mlc_term if mlc_applied else 0.0), rel=1e-6, abs=1e-7), step


def test_out_of_range_mlc_layer_is_a_clear_error(tiny_models: dict[str, Path]) -> None:
    causal_lm = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])  # 2 layers: hidden_states indices -3..2
    projection = MLCProjection(causal_lm.config.hidden_size, 8)
    with pytest.raises(ValueError, match=r"mlc.layer=3 is out of range for a 2-layer model"):
        AlignmentModel(causal_lm, "torch", 1024, projection, mlc_layer=3)


# ---- 2 processes -----------------------------------------------------------------------------------------------------
STEPS, RESUME_STEP = 8, 4


@pytest.fixture(scope="module")
def mlc_setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random model with large weights (sizeable reward gaps and MLC loss, so both have room to fall) and a 4-record
    subset: with data.languages=[sw] that is exactly one global batch (2 ranks x 2), so every step sees the same pairs."""
    from mpo_dist.models.tiny import init_tiny

    root = tmp_path_factory.mktemp("mlc_setup")
    model = init_tiny(root / "model", "llama", seed=1, initializer_range=0.3)
    subset = root / "four.jsonl"
    subset.write_text("".join(resolve_path("sample:train").read_text().splitlines(keepends=True)[:4]))
    return model, subset


def run_worker(*runs: tuple[Path, list[str]]) -> None:
    """tests/workers/mlc_inspect.py on each run (config file, overrides), one after the other in one 2-rank launch."""
    args: list[str] = []
    for i, (config, overrides) in enumerate(runs):
        args += (["--"] if i else []) + [str(REPO_ROOT / "tests/workers/mlc_inspect.py"), "--config", str(config),
                                         *overrides]
    result = torchrun(2, args, REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]


def small_run(model: Path, subset: Path, output_dir: Path) -> list[str]:
    return [
        f"model.path={model}", f"train.output_dir={output_dir}", f"data.train_files=[{subset}]", "data.languages=[sw]",
        "data.max_length=96", "data.max_prompt_length=48", "data.eval_files=[]", f"mlc.languages=[{','.join(LANGUAGES)}]",
        "mlc.dim=32", f"train.max_steps={STEPS}", "train.micro_batch_size=2", "optim.lr=1e-4", "optim.warmup_ratio=0",
        "optim.min_lr_ratio=1.0", f"checkpoint.every_steps={RESUME_STEP}", "checkpoint.keep_last=5",
        "logging.progress_bar=false", "logging.tensorboard=false",
    ]


def check_partitioned_and_learning(run_dir: Path) -> dict[int, dict]:
    for rank in range(2):
        report = json.loads((run_dir / f"mlc_inspect_rank{rank}.json").read_text())
        assert report["world_size"] == 2 and report["exit_code"] == 0
        assert {p["name"] for p in report["projection"]} == set(PROJECTION)
        assert all(p["local"] < p["full"] for p in report["projection"]), f"rank {rank} holds a full projection"
    metrics = {row["step"]: row for row in read_jsonl(run_dir / METRICS_FILE)}
    losses = {step: row["train/loss"] for step, row in metrics.items()}
    # mlc.every=2: odd logged steps (optimiser steps 0, 2, ...) carry λ·MLC, so compare like with like
    assert losses[STEPS - 1] < 0.75 * losses[1] and losses[STEPS] < 0.75 * losses[2], losses
    assert metrics[STEPS]["train/mlc/loss"] < 0.9 * metrics[1]["train/mlc/loss"]
    return metrics


@pytest.fixture(scope="module")
def full_runs(mlc_setup: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The uninterrupted DPO+MLC and MPO+MLC runs from the example configs, in one launch (each a run directory)."""
    model, subset = mlc_setup
    root = tmp_path_factory.mktemp("mlc_runs")
    # an intermediate layer for DPO (the MPO run reads the final one), so both ways of taking the states run under ZeRO-3
    run_worker((REPO_ROOT / "configs/sample_dpo_mlc.yaml", small_run(model, subset, root / "dpo") + ["mlc.layer=1"]),
               (REPO_ROOT / "configs/sample_mpo_mlc.yaml", small_run(model, subset, root / "mpo")))
    return {"dpo": root / "dpo", "mpo": root / "mpo"}


@pytest.mark.multiprocess
def test_dpo_mlc_two_processes(full_runs: dict[str, Path]) -> None:
    metrics = check_partitioned_and_learning(full_runs["dpo"])
    assert metrics[STEPS]["train/rewards/margin"] > metrics[1]["train/rewards/margin"] + 1.0


@pytest.mark.multiprocess
def test_mpo_mlc_two_processes_and_exact_resume(mlc_setup: tuple[Path, Path], full_runs: dict[str, Path],
                                                tmp_path: Path) -> None:
    model, subset = mlc_setup
    full_dir, resumed_dir = full_runs["mpo"], tmp_path / "resumed"
    config = REPO_ROOT / "configs/sample_mpo_mlc.yaml"
    full_metrics = check_partitioned_and_learning(full_dir)
    assert full_metrics[STEPS]["train/mpo/l1"] < 0.5 * full_metrics[1]["train/mpo/l1"]

    checkpoint = full_dir / "checkpoints" / tag_for(RESUME_STEP)
    run_worker((config, small_run(model, subset, resumed_dir) + [f"checkpoint.resume={checkpoint}"]))
    saved = checkpoint_weights(full_dir, RESUME_STEP)
    full, resumed = (torch.load(run / "mlc_projection.pt") for run in (full_dir, resumed_dir))
    for name in PROJECTION:
        assert not torch.equal(saved[name], resumed["initial"][name]), f"{name} still untrained: nothing to restore"
        assert torch.equal(resumed["after_load"][name], saved[name]), f"{name} not restored exactly"
        assert torch.equal(resumed["final"][name], full["final"][name]), f"{name} diverged after the resume"
    resumed_losses = {row["step"]: row["train/loss"] for row in read_jsonl(resumed_dir / METRICS_FILE)}
    assert sorted(resumed_losses) == list(range(RESUME_STEP + 1, STEPS + 1))
    for step, loss in resumed_losses.items():
        assert loss == pytest.approx(full_metrics[step]["train/loss"], abs=1e-6, rel=0), step
