"""`mpo-dist export`: a Hugging Face directory consolidated offline from the ZeRO-3 shards of a real 2-rank MPO + MLC run.

The reference for the exported weights is the live policy the same run gathered parameter by parameter through
ZeRO-3 (train.save_hf_at_end), a path that never reads the checkpoint files; a second reference loads the consolidated
fp32 state into a plain Hugging Face model with the test's own name mapping.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM

from mpo_dist.models.tokenizer import load_tokenizer
from mpo_dist.cli import main as cli_main

from conftest import REPO_ROOT, train_cli

pytestmark = pytest.mark.multiprocess

MLC_DIM = 16


@pytest.fixture(scope="module")
def trained(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """2 ranks, 3 optimiser steps of MPO + MLC at a large constant learning rate (step 1 is warm-up at lr 0), so the
    weights move visibly."""
    run = tmp_path_factory.mktemp("export_run")
    train_cli(2, [
        f"model.path={tiny_models['llama']}", f"train.output_dir={run}", "train.max_steps=3", "train.micro_batch_size=2",
        "data.languages=[sw]", "data.max_length=96", "data.max_prompt_length=48", "data.eval_files=[]", "loss.name=mpo",
        "optim.lr=5e-3", "optim.warmup_ratio=0", "optim.min_lr_ratio=1.0", "train.save_hf_at_end=true",
        "mlc.enabled=true", "mlc.languages=[en,zh]", f"mlc.dim={MLC_DIM}", "mlc.every=1",
        "logging.progress_bar=false", "logging.tensorboard=false",
    ], REPO_ROOT)
    return {"run": run, "checkpoint": run / "checkpoints" / "step_00000003", "live_hf": run / "hf", "source": tiny_models["llama"]}


def logits_of(model_dir: Path | None, token_ids: torch.Tensor, model: torch.nn.Module | None = None) -> torch.Tensor:
    model = model or AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model.eval()(input_ids=token_ids).logits


def sample_ids(model_dir: Path) -> torch.Tensor:
    tokenizer = load_tokenizer(model_dir)
    return torch.tensor([tokenizer("How do I stay safe when hiking alone in the mountains?")["input_ids"]])


@pytest.mark.canary
def test_export_equals_trained_weights_and_writes_mlc_projection(trained: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "exported"
    assert cli_main(["export", str(trained["checkpoint"]), str(out), "--dtype", "fp32"]) == 0
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "mlc_projection.safetensors"):
        assert (out / name).is_file(), name
    assert not list(tmp_path.glob(".*partial*"))  # the staging directory was renamed into place

    token_ids = sample_ids(out)  # the exported tokenizer loads and tokenises
    exported = logits_of(out, token_ids)
    live = logits_of(trained["live_hf"], token_ids)
    torch.testing.assert_close(exported, live, atol=1e-5, rtol=0)

    # reference 2: the consolidated fp32 shards, renamed by hand, in a fresh model built from the source config
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    shards = get_fp32_state_dict_from_zero_checkpoint(str(trained["checkpoint"].parent), tag=trained["checkpoint"].name)
    fresh = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(trained["source"]), dtype=torch.float32)
    fresh.load_state_dict({name.removeprefix("causal_lm."): t for name, t in shards.items() if name.startswith("causal_lm.")})
    torch.testing.assert_close(exported, logits_of(None, token_ids, fresh), atol=1e-5, rtol=0)

    # training really happened: neither the weights nor the logits are the source model's
    initial = load_file(trained["source"] / "model.safetensors")
    trained_weights = load_file(out / "model.safetensors")
    assert max(float((trained_weights[n] - initial[n]).abs().max()) for n in initial) > 1e-3
    assert float((exported - logits_of(trained["source"], token_ids)).abs().max()) > 1e-3

    mlc = load_file(out / "mlc_projection.safetensors")
    hidden = AutoConfig.from_pretrained(trained["source"]).hidden_size
    assert {n: tuple(t.shape) for n, t in mlc.items()} == {"linear.weight": (MLC_DIM, hidden), "linear.bias": (MLC_DIM,)}
    torch.testing.assert_close(mlc["linear.weight"], shards["mlc_projection.linear.weight"], atol=0, rtol=0)
    assert not any("mlc" in n for n in trained_weights)  # not part of the HF model


def test_export_bf16_in_shards_is_the_fp32_export_rounded(trained: dict[str, Path], tmp_path: Path) -> None:
    full_dir, half_dir = tmp_path / "fp32", tmp_path / "bf16"
    assert cli_main(["export", str(trained["checkpoint"]), str(full_dir), "--dtype", "fp32"]) == 0
    assert cli_main(["export", str(trained["checkpoint"]), str(half_dir), "--dtype", "bf16", "--max-shard-size", "300KB"]) == 0
    assert len(list(half_dir.glob("model-*-of-*.safetensors"))) > 1 and (half_dir / "model.safetensors.index.json").is_file()
    assert AutoConfig.from_pretrained(half_dir).dtype == torch.bfloat16
    full = load_file(full_dir / "model.safetensors")
    half = AutoModelForCausalLM.from_pretrained(half_dir, dtype=torch.bfloat16).state_dict()
    assert set(full) <= set(half)
    for name in full:
        assert half[name].dtype == torch.bfloat16
        assert torch.equal(half[name], full[name].to(torch.bfloat16)), name
    assert load_file(half_dir / "mlc_projection.safetensors")["linear.bias"].dtype == torch.bfloat16


def copy_checkpoint(trained: dict[str, Path], tmp_path: Path) -> Path:
    copy = tmp_path / "checkpoints" / trained["checkpoint"].name
    shutil.copytree(trained["checkpoint"], copy)
    return copy


def export_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli_main(["export", *args]) == 2
    return capsys.readouterr().err


def test_export_errors_are_clear(trained: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "out")
    assert "is not a directory" in export_error([str(tmp_path / "nowhere"), out], capsys)
    (tmp_path / "empty").mkdir()
    assert "holds no DeepSpeed zero_pp_rank_0_mp_rank_00_model_states.pt" in export_error([str(tmp_path / "empty"), out], capsys)

    incomplete = copy_checkpoint(trained, tmp_path)
    (incomplete / "COMPLETE").unlink()
    assert "no COMPLETE marker" in export_error([str(incomplete), out], capsys)

    # the source model recorded in the checkpoint is gone (e.g. the checkpoint moved to another cluster)
    (incomplete / "COMPLETE").write_text("3\n")
    rank0 = next(incomplete.glob("zero_pp_rank_0_*model_states.pt"))
    state = torch.load(rank0, weights_only=False)
    state["config"]["model"]["path"] = str(tmp_path / "moved_away")
    torch.save(state, rank0)
    assert "--model-dir" in export_error([str(incomplete), out], capsys)
    assert cli_main(["export", str(incomplete), out, "--model-dir", str(trained["source"])]) == 0

    assert "already exists" in export_error([str(trained["checkpoint"]), out], capsys)
    assert "source model" in export_error([str(trained["checkpoint"]), str(trained["source"]), "--overwrite"], capsys)
