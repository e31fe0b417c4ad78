"""Runs that several test modules start from, each built once per session: tests/conftest.py imports the fixtures
once (a fixture imported into two modules would be two fixtures, built twice). A test reads these runs as they are or
changes a copy, never the run itself.

- `finished`: a one-rank run of the real Trainer on a tiny model (tests/test_checkpoint_lifecycle.py,
  tests/test_run_directory.py), with the settings those modules vary; `run` is a fresh copy of it for each test.
- `two_rank_mpo_run`: an uninterrupted 2-rank ZeRO-3 MPO run on tiny Qwen2 that saves a tag on the way, the reference
  of the exact resume (tests/test_zero3_multiprocess.py) and of the resume at another world size
  (tests/test_checkpoint_universal.py).
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

# ---- the one-rank lifecycle run --------------------------------------------------------------------------------------
STEPS = 6
# The first 4 records of sample:heldout (every language): an evaluation is still a real one, in a second instead of
# the ~10 s the 50 bundled records take on CPU; these tests count evaluations, they do not read their numbers.
HELDOUT_HEAD = Path(__file__).parent / "data" / "heldout_head.jsonl"


def settings(model: Path, run: Path, *, steps: int = STEPS, resume: str = "none", keep_last: int = 5,
             every: int = 2) -> list[str]:
    return [f"model.path={model}", f"train.output_dir={run}", f"train.max_steps={steps}",
            f"checkpoint.every_steps={every}", f"checkpoint.keep_last={keep_last}", f"checkpoint.resume={resume}",
            "loss.name=simpo", "data.languages=[en]", f"data.eval_files=[{HELDOUT_HEAD}]", "data.max_length=64",
            "data.max_prompt_length=32", "logging.tensorboard=false", "logging.progress_bar=false"]


def train_overrides(overrides: list[str]) -> int:
    """The real trainer on one rank, in this process (as `mpo-dist train` without a launcher runs it): its exit code."""
    from mpo_dist.config import load_config
    from mpo_dist.train.trainer import Trainer  # here, not at the top: conftest imports this module for every test

    return Trainer(load_config(None, overrides)).train().exit_code


def train(model: Path, run: Path, **options) -> int:
    return train_overrides(settings(model, run, **options))


def tags(run: Path, under: str = "checkpoints") -> list[str]:
    return sorted(p.name for p in (run / under).iterdir() if p.name.startswith("step_"))


def tag(run: Path, step: int) -> Path:
    return run / "checkpoints" / f"step_{step:08d}"


@pytest.fixture(scope="session")
def finished(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted one-rank run: tags at steps 2, 4 and 6, evaluations at steps 0 and 6, COMPLETED."""
    run = tmp_path_factory.mktemp("lifecycle") / "run"
    assert train(tiny_models["llama"], run) == 0
    assert tags(run) == ["step_00000002", "step_00000004", "step_00000006"]
    return run


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


# ---- the 2-rank MPO run ----------------------------------------------------------------------------------------------
TWO_RANK_STEPS, TWO_RANK_SAVED_STEP = 6, 3


def two_rank_mpo_settings(model: Path) -> list[str]:
    """Everything but train.output_dir: the run, and a resumed run that must continue it exactly."""
    return [f"model.path={model}", f"train.max_steps={TWO_RANK_STEPS}", "train.micro_batch_size=2", "optim.lr=5e-3",
            f"checkpoint.every_steps={TWO_RANK_SAVED_STEP}", "checkpoint.keep_last=5", "data.languages=[sw]",
            "data.max_length=96", "data.max_prompt_length=48", "data.eval_files=[]", "loss.name=mpo",
            "logging.progress_bar=false", "logging.tensorboard=false"]


@pytest.fixture(scope="session")
def two_rank_mpo_run(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 ranks, TWO_RANK_STEPS steps, a tag at TWO_RANK_SAVED_STEP; Qwen2 ties its embeddings, so the shared weight must
    survive a resume and a conversion too."""
    from conftest import REPO_ROOT, train_cli  # here: conftest imports this module

    run = tmp_path_factory.mktemp("two_rank_mpo") / "full"
    train_cli(2, two_rank_mpo_settings(tiny_models["qwen2"]) + [f"train.output_dir={run}"], REPO_ROOT)
    return run
