"""`check` catches what `train` would hit minutes later, and `train` refuses it the same way before any process group:
an output directory that cannot be created or written, model files or a config the running user cannot read, a key
given twice in the YAML config or a DeepSpeed JSON template, data whose every pair (or every pair of one language) has
chosen identical to rejected, and `--config DIR`.

Every case goes through the real front door in a child process: `mpo-dist check --cpu` and `mpo-dist train` with the
same arguments, each exit 2 with exactly one error line naming the file or key, no traceback, no process group, and the
case's directory byte-for-byte as before (no output directory, no probe left behind). File permissions do not bind
root, so under root the child runs without CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH (dropped from its bounding set before
exec): it keeps uid 0 but the kernel then checks mode bits for it as for anyone else.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from mpo_dist.data.loading import resolve_path

TARGETS = ["zh", "ja", "ko", "ar", "bn", "sw"]
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH = 24, 1, 2  # <linux/prctl.h>, <linux/capability.h>

# Runs every case given as JSON on stdin through check and train; prints what each returned and wrote, as JSON. An
# exception escaping main() is that case's traceback, and the next case still runs.
FRONT_DOOR = """
import contextlib, io, json, sys, traceback
import torch.distributed as dist
from mpo_dist.cli import main
results = {}
for name, args in json.load(sys.stdin).items():
    results[name] = {}
    for command, extra in (("check", ["--cpu"]), ("train", [])):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([command, *extra, *args])
            except BaseException:
                code = None
                err.write(traceback.format_exc())
        results[name][command] = {"code": code, "out": out.getvalue(), "err": err.getvalue()}
    results[name]["process_group"] = dist.is_initialized()
    if dist.is_initialized():
        dist.destroy_process_group()
print(json.dumps(results))
"""


def _drop_file_permission_override() -> None:
    """preexec_fn: under root, take the capabilities that bypass file modes out of the child's bounding set."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@dataclass
class Case:
    root: Path
    args: list[str]
    error: str  # the one error message, without the "error: " / "mpo-dist train: error: " prefix


def _rows() -> list[dict]:
    return [json.loads(line) for line in resolve_path("sample:train").read_text().splitlines() if line.strip()]


def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def _build_cases(base: Path, model: Path) -> dict[str, Case]:
    """One directory per case under `base`, each holding what its arguments point at."""
    uid = os.geteuid()
    cases: dict[str, Case] = {}

    def case(name: str) -> tuple[Path, list[str]]:
        root = base / name
        root.mkdir()
        overrides = [f"model.path={model}", f"train.output_dir={root / 'run'}", "data.max_length=96",
                     "data.max_prompt_length=48", f"data.languages=[{','.join(TARGETS)}]", "train.micro_batch_size=4",
                     "train.max_steps=1"]
        return root, [part for override in overrides for part in ("--set", override)]

    root, args = case("output_dir_is_a_file")
    (root / "out").write_text("notes\n")
    cases[root.name] = Case(root, args + ["--set", f"train.output_dir={root / 'out'}"],
                            f"train.output_dir: {root / 'out'} exists and is not a directory")

    root, args = case("output_dir_below_a_file")
    (root / "out").write_text("notes\n")
    cases[root.name] = Case(root, args + ["--set", f"train.output_dir={root / 'out' / 'a' / 'run'}"],
                            f"train.output_dir: {root / 'out' / 'a' / 'run'} cannot be created: {root / 'out'} is not "
                            "a directory")

    root, args = case("output_dir_not_writable")
    (root / "locked").mkdir(mode=0o555)
    cases[root.name] = Case(root, args + ["--set", f"train.output_dir={root / 'locked'}"],
                            f"train.output_dir: {root / 'locked'} is not writable by this user (uid {uid})")

    root, args = case("output_dir_in_an_unwritable_directory")
    (root / "locked").mkdir(mode=0o555)
    cases[root.name] = Case(root, args + ["--set", f"train.output_dir={root / 'locked' / 'runs' / 'a'}"],
                            f"train.output_dir: {root / 'locked' / 'runs' / 'a'} cannot be created: {root / 'locked'} "
                            f"is not writable by this user (uid {uid})")

    for name, unreadable in (("weights_unreadable", "model.safetensors"), ("tokenizer_unreadable", "tokenizer.json")):
        root, args = case(name)
        shutil.copytree(model, root / "model")
        (root / "model" / unreadable).chmod(0)
        cases[name] = Case(root, args + ["--set", f"model.path={root / 'model'}"],
                           f"model.path: {root / 'model' / unreadable} is not readable by this user (uid {uid})")

    root, args = case("model_directory_not_enterable")  # listable (r) but not enterable (no x): no file inside opens
    shutil.copytree(model, root / "model")
    (root / "model").chmod(0o600)
    cases[root.name] = Case(root, args + ["--set", f"model.path={root / 'model'}"],
                            f"model.path: {root / 'model'} is not readable by this user (uid {uid})")

    root, args = case("config_unreadable")
    (root / "run.yaml").write_text("train: {epochs: 1}\n")
    (root / "run.yaml").chmod(0)
    cases[root.name] = Case(root, ["--config", str(root / "run.yaml"), *args],
                            f"config file {root / 'run.yaml'} is not readable by this user (uid {uid})")

    root, args = case("config_is_a_directory")
    cases[root.name] = Case(root, ["--config", str(root), *args], f"config file {root} is a directory; expected a file")

    root, args = case("yaml_section_given_twice")
    (root / "run.yaml").write_text("train:\n  epochs: 3\nloss: {name: mpo}\ntrain:\n  seed: 7\n")
    cases[root.name] = Case(root, ["--config", str(root / "run.yaml"), *args],
                            f"config file {root / 'run.yaml'}: invalid YAML: key 'train' given twice, first at line 1 "
                            "(line 4, column 1)")

    root, args = case("yaml_key_given_twice_in_a_section")
    (root / "run.yaml").write_text("optim:\n  lr: 1.0e-6\n  warmup_ratio: 0.1\n  lr: 2.0e-6\n")
    cases[root.name] = Case(root, ["--config", str(root / "run.yaml"), *args],
                            f"config file {root / 'run.yaml'}: invalid YAML: key 'lr' given twice, first at line 2 "
                            "(line 4, column 3)")

    root, args = case("json_template_key_given_twice")
    template = root / "policy.json"
    template.write_text('{\n  "train_micro_batch_size_per_gpu": "auto",\n  "gradient_accumulation_steps": "auto",\n'
                        '  "zero_optimization": {"stage": 3},\n  "train_batch_size": "auto",\n'
                        '  "zero_optimization": {"stage": 2}\n}\n')
    cases[root.name] = Case(root, args + ["--set", f"engine.policy_config={template}"],
                            f"DeepSpeed config template {template}: key 'zero_optimization' given twice in one object, "
                            "at lines 4 and 6 (a JSON parser keeps only the last)")

    rows = _rows()
    used = TARGETS + ["en"]  # MPO: the targets and the dominant-language anchor
    pairs = sum(lang in row["chosen"] and lang in row["rejected"] for row in rows for lang in used)
    root, args = case("every_pair_identical")
    data = _write_rows(root / "same.jsonl", [dict(row, rejected=dict(row["chosen"])) for row in rows])
    cases[root.name] = Case(root, args + ["--set", f"data.train_files=[{data}]"],
                            f"data.train_files: all {pairs} pairs have chosen identical to rejected ({data}): there is "
                            "no preference to learn (docs/data.md)")

    root, args = case("every_ja_pair_identical")
    ja_pairs = sum("ja" in row["chosen"] and "ja" in row["rejected"] for row in rows)
    data = _write_rows(root / "ja-same.jsonl", [dict(row, rejected=dict(row["rejected"], ja=row["chosen"]["ja"]))
                                                if "ja" in row["chosen"] else row for row in rows])
    cases[root.name] = Case(root, args + ["--set", f"data.train_files=[{data}]"],
                            f"data.train_files: all {ja_pairs} ja pairs have chosen identical to rejected ({data}): ja "
                            "has no preference to learn (docs/data.md)")
    return cases


def _tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under `root` with its mode, size and modification time: what "nothing written" compares."""
    return {str(path.relative_to(root)): (path.lstat().st_mode, path.lstat().st_size, path.lstat().st_mtime_ns)
            for path in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def front_door(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Case, dict]]:
    """Case name -> (the case, what check and train did with it), all cases run by one child process."""
    preexec = None
    if os.geteuid() == 0:
        try:
            subprocess.run([sys.executable, "-c", ""], preexec_fn=_drop_file_permission_override, check=True)
        except (OSError, subprocess.SubprocessError) as error:
            pytest.skip(f"cannot run a child that file permissions bind (root without CAP_SETPCAP?): {error}")
        preexec = _drop_file_permission_override
    base = tmp_path_factory.mktemp("front_door")
    cases = _build_cases(base, tiny_models["llama"])
    before = {name: _tree(case.root) for name, case in cases.items()}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MPO_DIST_DEBUG", "MPO_DIST_ERROR_FILE")}
    child = subprocess.run([sys.executable, "-c", FRONT_DOOR], input=json.dumps({n: c.args for n, c in cases.items()}),
                           capture_output=True, text=True, cwd=base, env=env, timeout=600, preexec_fn=preexec)
    assert child.returncode == 0 and "Traceback" not in child.stderr, child.stderr[-6000:]
    results = json.loads(child.stdout.splitlines()[-1])
    for name, case in cases.items():
        results[name]["unchanged"] = _tree(case.root) == before[name]
    return {name: (case, results[name]) for name, case in cases.items()}


@pytest.mark.parametrize("name", [
    "output_dir_is_a_file", "output_dir_below_a_file", "output_dir_not_writable", "output_dir_in_an_unwritable_directory",
    "weights_unreadable", "tokenizer_unreadable", "model_directory_not_enterable", "config_unreadable",
    "config_is_a_directory",
    "yaml_section_given_twice", "yaml_key_given_twice_in_a_section", "json_template_key_given_twice",
    "every_pair_identical", "every_ja_pair_identical",
])
def test_check_and_train_refuse_in_one_line_and_write_nothing(front_door: dict[str, tuple[Case, dict]],
                                                              name: str) -> None:
    case, result = front_door[name]
    check, train = result["check"], result["train"]
    assert check["code"] == 2, check
    errors = [line for line in check["out"].splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {case.error}"], check["out"]
    assert train["code"] == 2, train
    assert train["err"] == f"mpo-dist train: error: {case.error}\n"
    assert "Traceback" not in check["out"] + check["err"] + train["out"] + train["err"]
    assert not result["process_group"]
    assert result["unchanged"], f"{case.root} changed"
    assert not (case.root / "run").exists()
