"""2 processes, gloo, DeepSpeed ZeRO-3 on CPU: real partitioning, an offloaded frozen reference, MPO loss going down,
and an exact resume (same losses, same samples) from a mid-run checkpoint."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpo_dist.data.loading import resolve_path

from conftest import REPO_ROOT, read_jsonl, torchrun, train_cli
from shared_runs import two_rank_mpo_settings

pytestmark = pytest.mark.multiprocess

COMMON = [
    "data.languages=[sw]", "data.max_length=96", "data.max_prompt_length=48", "data.eval_files=[]", "loss.name=mpo",
    "train.micro_batch_size=2", "logging.progress_bar=false", "logging.tensorboard=false",
]


FAMILIES = ("llama", "gemma2")  # the fused-head check: untied head; tied head with Gemma-2's final-logit soft-cap


@pytest.fixture(scope="module")
def worker_runs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One 2-rank launch (tests/workers/in_sequence.py) of tests/workers/zero3_inspect.py, writing ROOT/inspect, then
    tests/workers/head_gradients.py on each of FAMILIES, writing ROOT/<family>."""
    from mpo_dist.models.tiny import init_tiny

    root = tmp_path_factory.mktemp("zero3_workers")
    # a random model with large weights has O(1) reward gaps that differ between languages, so MPO's L1 starts large
    model = init_tiny(root / "model", "llama", seed=1, initializer_range=0.3)
    # 4 records = one global batch (2 ranks x 2), so every step sees the same pairs and the loss must fall
    subset = root / "four.jsonl"
    subset.write_text("".join(resolve_path("sample:train").read_text().splitlines(keepends=True)[:4]))
    inspect = COMMON + [f"model.path={model}", f"train.output_dir={root / 'inspect'}", "train.max_steps=8",
                        f"data.train_files=[{subset}]", "optim.lr=1e-4", "optim.warmup_ratio=0",
                        "optim.min_lr_ratio=1.0"]
    workers = REPO_ROOT / "tests/workers"
    args = [str(workers / "zero3_inspect.py"), *inspect]
    for family in FAMILIES:
        args += ["--", str(workers / "head_gradients.py"), f"model.path={tiny_models[family]}",
                 f"train.output_dir={root / family}", "model.attn_implementation=eager", "loss.name=simpo",
                 "model.logprob_chunk_size=7", "train.micro_batch_size=2", "data.eval_files=[]", "data.max_length=64",
                 "data.max_prompt_length=32", "logging.tensorboard=false", "logging.progress_bar=false"]
    result = torchrun(2, args, REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root


@pytest.mark.canary
def test_partitioned_policy_offloaded_reference_and_loss_goes_down(worker_runs: Path) -> None:
    reports = [json.loads((worker_runs / "inspect" / f"inspect_rank{r}.json").read_text()) for r in range(2)]
    for report in reports:
        assert report["world_size"] == 2 and report["exit_code"] == 0
        for engine in ("policy", "reference"):
            big = [p for p in report[engine] if p["full"] >= 1024]
            assert big, "expected some large parameters"
            assert all(p["local"] < p["full"] for p in big), f"{engine}: a rank holds a full copy"
        assert report["reference_offload_device"].endswith("cpu")
        assert all(p["device"] == "cpu" for p in report["reference"])
        assert not report["reference_requires_grad"]
    # the two shards of each parameter together hold exactly the tensor (plus alignment padding < world size)
    for left, right in zip(reports[0]["policy"], reports[1]["policy"]):
        assert left["name"] == right["name"] and 0 <= left["local"] + right["local"] - left["full"] < 2
    losses = reports[0]["losses"]
    assert losses == reports[1]["losses"] or len(losses) == 8
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 * 0.5, losses


@pytest.mark.canary
def test_exact_resume_same_losses_and_samples(two_rank_mpo_run: Path, tiny_models: dict[str, Path],
                                             tmp_path: Path) -> None:
    base = two_rank_mpo_settings(tiny_models["qwen2"])
    full_dir, resumed_dir = two_rank_mpo_run, tmp_path / "resumed"
    checkpoint = full_dir / "checkpoints" / "step_00000003"
    assert (checkpoint / "COMPLETE").is_file()
    train_cli(2, base + [f"train.output_dir={resumed_dir}", f"checkpoint.resume={checkpoint}"], REPO_ROOT)

    def per_step(run: Path, name: str, key: str) -> dict[int, object]:
        return {row["step"]: row[key] for row in read_jsonl(run / name) if key in row}

    full_losses, resumed_losses = per_step(full_dir, "metrics.jsonl", "train/loss"), per_step(resumed_dir, "metrics.jsonl", "train/loss")
    assert sorted(resumed_losses) == [4, 5, 6]
    for step in (4, 5, 6):
        assert resumed_losses[step] == pytest.approx(full_losses[step], abs=1e-6, rel=0), step
    full_ids, resumed_ids = per_step(full_dir, "samples.jsonl", "ids"), per_step(resumed_dir, "samples.jsonl", "ids")
    assert [resumed_ids[s] for s in (4, 5, 6)] == [full_ids[s] for s in (4, 5, 6)]
    assert len({i for s in full_ids.values() for i in s}) == 6 * 4  # no sample repeated within the epoch
    check_job_tokens(base + [f"train.output_dir={full_dir}"], full_dir)


def check_job_tokens(overrides: list[str], run: Path) -> None:
    """train/tokens is the job's: the real tokens of both ranks' micro-batches of the step (each rank's 2 examples,
    rank-ordered in samples.jsonl, collated on their own), and train/tokens_per_s is that over the step's seconds."""
    from mpo_dist.check.preflight import preflight
    from mpo_dist.config import load_config
    from mpo_dist.data.collate import PreferenceCollator

    inputs = preflight(load_config(None, overrides), world_size=2, on_gpu=False)
    by_id = {example.example_id: example for example in inputs.train_examples}
    collate = PreferenceCollator(inputs.model.tokenizer.pad_token_id)
    metrics = {row["step"]: row for row in read_jsonl(run / "metrics.jsonl") if "train/tokens" in row}
    for row in read_jsonl(run / "samples.jsonl"):
        per_rank = [collate([by_id[i] for i in row["ids"][2 * r: 2 * r + 2]]).num_tokens for r in range(2)]
        logged = metrics[row["step"]]
        assert logged["train/tokens"] == sum(per_rank) and min(per_rank) > 0, (row, per_rank)
        assert logged["train/tokens_per_s"] == pytest.approx(logged["train/tokens"] / logged["train/step_seconds"])


def test_fused_head_under_zero3_matches_plain_model(worker_runs: Path) -> None:
    """Losses and full gradients of one SimPO step: ZeRO-3 (2 ranks) + log-prob head vs the plain HF model in float64."""
    for family in FAMILIES:
        for rank in range(2):
            report = json.loads((worker_runs / family / f"head_rank{rank}.json").read_text())
            assert report["checked"] > 10
            assert report["loss"] == pytest.approx(report["reference_loss"], rel=1e-5), (family, rank)
            assert report["worst_grad_rel_error"] < 1e-4, (family, rank, report)
