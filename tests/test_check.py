"""`mpo-dist check` and the pre-flight `train` runs: every input defect is reported with the key, path, file or row
it concerns, the summary's figures agree with counts made independently of the code under test, and a run that would
fail stops before any process group, DeepSpeed or output directory exists."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mpo_dist.check.preflight import preflight
from mpo_dist.check.reference_gap import GapThresholds, check_reference_gap, pair_gaps
from mpo_dist.check.report import CheckReport
from mpo_dist.cli import main
from mpo_dist.config import load_config
from mpo_dist.data.loading import resolve_path
from mpo_dist.data.tokenize import ChatEncoder

from conftest import REPO_ROOT

TARGETS = ["zh", "ja", "ko", "ar", "bn", "sw"]
CPU = torch.device("cpu")


def sample_rows(name: str = "train") -> list[dict]:
    return [json.loads(line) for line in resolve_path(f"sample:{name}").read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path


def run_check(capsys: pytest.CaptureFixture, args: list[str]) -> tuple[int, str]:
    code = main(["check", *args])
    return code, capsys.readouterr().out


def sets(*overrides: str) -> list[str]:
    return [part for override in overrides for part in ("--set", override)]


@pytest.fixture()
def mpo(tiny_models: dict[str, Path], tmp_path: Path) -> list[str]:
    """Overrides of a small valid MPO run on the bundled sample."""
    return [f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path / 'run'}", "data.max_length=96",
            "data.max_prompt_length=48", f"data.languages=[{','.join(TARGETS)}]", "train.micro_batch_size=4"]


def checked(overrides: list[str], world_size: int = 1) -> CheckReport:
    return preflight(load_config(None, overrides), world_size=world_size, on_gpu=False, device=CPU).report


# ---- the summary's figures, against independent counts -------------------------------------------------------------
def test_summary_counts_examples_truncation_and_steps(capsys: pytest.CaptureFixture, mpo: list[str],
                                                     tiny_models: dict[str, Path], tmp_path: Path) -> None:
    code, out = run_check(capsys, sets(*mpo, "train.epochs=3", "train.gradient_accumulation=2")
                          + ["--nodes", "2", "--gpus-per-node", "3", "--cpu"])
    assert code == 0, out
    rows = sample_rows()
    per_language = {lang: sum(lang in row["chosen"] and lang in row["rejected"] for row in rows) for lang in TARGETS}
    examples = sum(per_language.values())
    assert "examples   " + f"{examples} training (" + ", ".join(f"{lang} {per_language[lang]}"
                                                                  for lang in sorted(TARGETS)) in out
    per_epoch = math.ceil(math.ceil(examples / (4 * 6)) / 2)  # micro-batch 4 x world 6, accumulation 2
    assert f"steps      {3 * per_epoch} optimiser steps ({per_epoch} per epoch); global batch 48" in out

    # truncation: lengths without any cut, from an encoder whose limits nothing reaches
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["llama"])
    uncut = ChatEncoder(tokenizer, max_length=10**6, max_prompt_length=10**6 - 1)
    lengths = []
    for row in rows:
        trained = [lang for lang in TARGETS if lang in row["chosen"]]
        pairs = (["en"] if trained else []) + trained  # MPO encodes the en anchor once per record, then each target
        for lang in pairs:
            for side in ("chosen", "rejected"):
                sequence = uncut.encode(row["prompt"][lang], row[side][lang])
                lengths.append((sequence.prompt_length, len(sequence.input_ids) - sequence.prompt_length))
    truncated = sum(prompt > 48 or prompt + response > 96 for prompt, response in lengths)
    assert 0 < truncated < len(lengths)  # the limits above really cut some and not all
    assert f"tokens     {len(lengths)} sequences" in out and f"; {truncated} truncated" in out
    assert out.rstrip().endswith("OK (0 warning(s))")


@pytest.mark.parametrize("config", ["demo_warmup.yaml", "demo_mpo.yaml", "sample_dpo_mlc.yaml", "sample_mpo_mlc.yaml"])
def test_shipped_sample_configs_print_their_summary(capsys: pytest.CaptureFixture, config: str,
                                                   tiny_models: dict[str, Path], tmp_path: Path) -> None:
    code, out = run_check(capsys, ["--config", str(REPO_ROOT / "configs" / config)]
                          + sets(f"model.path={tiny_models['llama']}", f"train.output_dir={tmp_path}"))
    assert code == 0, out
    for heading in ("run ", "data ", "model ", "examples ", "tokens ", "steps ", "memory "):
        assert f"\n{heading}" in f"\n{out}", (heading, out)


@pytest.mark.parametrize("config", ["llama-3.1-8b-mpo.yaml", "llama-3.1-70b-mpo.yaml"])
def test_cluster_configs_name_their_placeholder_paths_and_plan_a_bundled_shape(
        capsys: pytest.CaptureFixture, config: str) -> None:
    model = config.removesuffix("-mpo.yaml")
    code, out = run_check(capsys, ["--config", str(REPO_ROOT / "configs" / config), "--nodes", "4", "--gpus-per-node",
                                   "8", "--plan-model", model, "--gpu-mem", "79", "--cpu-mem", "512"])
    assert code == 2
    placeholder = {"llama-3.1-8b": "Llama-3.1-8B", "llama-3.1-70b": "Llama-3.1-70B"}[model]
    assert f"error: model.path: /path/to/{placeholder}-Instruct does not exist" in out
    assert f"/path/to/mpo-data/{model}/zh.json: file does not exist" in out
    assert f"memory     {model} on 4 x 8 GPUs" in out


def test_memory_line_agrees_with_mpo_dist_plan(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """The same settings through `plan` (flags spelled out by hand) and through `check` (read from the config and its
    template, deepspeed_configs/zero3_8b_1node.json, whose reduce bucket is 2e8 elements)."""
    code, out = run_check(capsys, ["--config", str(REPO_ROOT / "configs" / "llama-3.1-8b-mpo.yaml"), "--nodes", "1",
                                   "--gpus-per-node", "8", "--plan-model", "llama-3.1-8b"])
    line = next(line for line in out.splitlines() if line.startswith("memory"))
    assert main(["plan", "--model", "llama-3.1-8b", "--nodes", "1", "--gpus-per-node", "8", "--gpu-mem", "79",
                 "--cpu-mem", "512", "--seq-len", "1024", "--reference", "cache", "--head-chunk", "0",
                 "--reduce-bucket-size", "200000000", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert f"{plan['gpu_per_gpu']['peak_gib']:.1f} GiB peak per GPU" in line
    assert f"{plan['cpu_per_node']['total_gib']:.1f} GiB host memory per node" in line


# ---- defects: each names what is wrong and where -------------------------------------------------------------------
def test_model_path_missing_or_not_a_model_names_the_path(mpo: list[str], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    report = checked(mpo + [f"model.path={missing}"])
    assert report.errors == [f"model.path: {missing} does not exist; expected a local Hugging Face model directory "
                             "(make a tiny one with `mpo-dist init-tiny DIR`, or see docs/models.md)"]
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "readme.txt").write_text("not a model")
    assert checked(mpo + [f"model.path={not_a_model}"]).errors[0].startswith(
        f"model.path: {not_a_model} is not a Hugging Face model directory (no config.json")


def test_model_directory_without_tokenizer_or_weights(mpo: list[str], tiny_models: dict[str, Path], tmp_path: Path) -> None:
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_models["llama"] / "config.json").read_text())
    errors = checked(mpo + [f"model.path={bare}"]).errors
    assert any(e.startswith(f"model.path: {bare} has no weights") for e in errors), errors
    assert any(e.startswith(f"model.path: no tokenizer loads from {bare}") for e in errors), errors


def test_tokenizer_without_chat_template(mpo: list[str], tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_models["llama"], model)
    settings = json.loads((model / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (model / "tokenizer_config.json").write_text(json.dumps(settings))
    for template in model.glob("chat_template.*"):
        template.unlink()
    errors = checked(mpo + [f"model.path={model}"]).errors
    assert errors and errors[0].startswith(f"model.path: the tokenizer in {model} has no chat template"), errors


def test_configured_language_absent_from_the_data(mpo: list[str], tmp_path: Path) -> None:
    rows = [dict(row, chosen={k: v for k, v in row["chosen"].items() if k != "sw"},
                 rejected={k: v for k, v in row["rejected"].items() if k != "sw"}) for row in sample_rows()]
    data = write_jsonl(tmp_path / "no-sw.jsonl", rows)
    errors = checked(mpo + [f"data.train_files=[{data}]"]).errors
    assert errors and errors[0].startswith("data.languages: sw has no preference pair in data.train_files"), errors


def test_records_without_the_dominant_pair(mpo: list[str], tmp_path: Path) -> None:
    rows = sample_rows()[:5]
    rows[2] = dict(rows[2], chosen={k: v for k, v in rows[2]["chosen"].items() if k != "en"},
                   rejected={k: v for k, v in rows[2]["rejected"].items() if k != "en"})
    data = write_jsonl(tmp_path / "no-en.jsonl", rows)
    errors = checked(mpo + [f"data.train_files=[{data}]"]).errors
    assert errors == [f"data.dominant_language: MPO anchors every pair on the same record's en pair, but 1 of 5 records "
                      f"have none (first: {data}, row 3); is 'en' the data's dominant language?"]


def test_identical_pairs_are_a_warning_and_train_goes_on(mpo: list[str], tmp_path: Path) -> None:
    rows = sample_rows()[:6]
    rows[4] = dict(rows[4], rejected=dict(rows[4]["rejected"], ja=rows[4]["chosen"]["ja"] + "  "))
    data = write_jsonl(tmp_path / "same.jsonl", rows)
    report = checked(mpo + [f"data.train_files=[{data}]"])
    assert report.errors == []
    assert report.warnings == [f"1 pair(s) have chosen identical to rejected (first: {data}, row 5, language ja); they "
                               "train nothing but take their share of every batch (docs/data.md)"]


def test_a_language_whose_every_pair_is_identical_is_an_error_only_if_the_run_uses_it(mpo: list[str],
                                                                                     tmp_path: Path) -> None:
    rows = sample_rows()
    rows = [dict(row, rejected=dict(row["rejected"], ja=row["chosen"]["ja"])) if "ja" in row["chosen"] else row
            for row in rows]
    rows[3] = dict(rows[3], rejected=dict(rows[3]["rejected"], zh=rows[3]["chosen"]["zh"]))
    data = write_jsonl(tmp_path / "ja-same.jsonl", rows)
    ja_pairs = sum("ja" in row["chosen"] and "ja" in row["rejected"] for row in rows)
    report = checked(mpo + [f"data.train_files=[{data}]"])
    assert report.errors == [f"data.train_files: all {ja_pairs} ja pairs have chosen identical to rejected ({data}): ja "
                             "has no preference to learn (docs/data.md)"]
    assert report.warnings == [f"1 pair(s) have chosen identical to rejected (first: {data}, row 4, language zh); they "
                               "train nothing but take their share of every batch (docs/data.md)"]
    without_ja = checked(mpo + [f"data.train_files=[{data}]", "data.languages=[zh,ko]"])
    assert without_ja.errors == [] and len(without_ja.warnings) == 1


def test_an_output_dir_that_can_be_made_passes_and_nothing_is_left(mpo: list[str], tmp_path: Path) -> None:
    existing = tmp_path / "existing"
    existing.mkdir()
    for output_dir in (existing, tmp_path / "new" / "deeper" / "run"):
        assert checked(mpo + [f"train.output_dir={output_dir}"]).errors == []
    assert sorted(path.name for path in tmp_path.rglob("*")) == ["existing"]  # no probe left, nothing created


def test_example_id_in_two_files(mpo: list[str], tmp_path: Path) -> None:
    rows = sample_rows()[:4]
    first, second = write_jsonl(tmp_path / "a.jsonl", rows), write_jsonl(tmp_path / "b.jsonl", rows[:1])
    report = checked(mpo + [f"data.train_files=[{first},{second}]"])
    assert report.errors == [] and report.warnings[0].startswith("6 example id(s) occur in more than one training file")
    cached = checked(mpo + [f"data.train_files=[{first},{second}]", "engine.reference=cache",
                            f"engine.reference_cache={tmp_path / 'cache'}"])
    assert cached.errors[0].startswith("6 example id(s) occur in more than one training file"), cached.errors
    assert "engine.reference=cache keys the cache by example id" in cached.errors[0]


def test_every_bad_file_is_named_at_once(mpo: list[str], tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", sample_rows()[:3])
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(sample_rows()[0]) + "\n{oops\n")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n\n")
    errors = checked(mpo + [f"data.train_files=[{good},{broken},{empty},{tmp_path / 'gone.jsonl'}]"]).errors
    assert errors == [f"data.train_files: {broken}, row 2: invalid JSON (column 2): Expecting property name enclosed in "
                      "double quotes",
                      f"data.train_files: {empty}: empty file; expected a JSON list of records",
                      f"data.train_files: {tmp_path / 'gone.jsonl'}: file does not exist"]


def test_stale_reference_cache_and_bad_template(mpo: list[str], tmp_path: Path) -> None:
    errors = checked(mpo + ["engine.reference=cache", f"engine.reference_cache={tmp_path / 'cache'}"]).errors
    assert len(errors) == 1 and errors[0].startswith(f"engine.reference_cache: no reference cache at {tmp_path / 'cache'}")
    template = tmp_path / "ds.json"
    template.write_text('{"zero_optimization": {"stage": 3, "sub_group_size": "auto"}}')
    errors = checked(mpo + [f"engine.policy_config={template}"]).errors
    assert errors == [f'{template}: zero_optimization.sub_group_size is "auto" but mpo-dist has no value for it; set it '
                      "explicitly"]


def test_resume_path_is_resolved(capsys: pytest.CaptureFixture, mpo: list[str], tmp_path: Path) -> None:
    code, out = run_check(capsys, sets(*mpo) + ["--resume", str(tmp_path / "nowhere")])
    assert code == 2 and f"error: checkpoint.resume: {tmp_path / 'nowhere'} is not a directory" in out


def test_bad_config_is_one_error_line(capsys: pytest.CaptureFixture, mpo: list[str]) -> None:
    code, out = run_check(capsys, sets(*mpo, "optim.lr=-1"))
    assert (code, out) == (2, "error: optim.lr: must be a finite number > 0, got -1.0\n"
                              "1 error(s), 0 warning(s): the run would fail\n")


# ---- MPO's precondition: the reference's dominant-language gap -----------------------------------------------------
def test_reference_gap_matches_float64_torch_and_warns_for_an_unaligned_model(tiny_models: dict[str, Path],
                                                                           mpo: list[str]) -> None:
    from transformers import AutoModelForCausalLM

    config = load_config(None, mpo)
    inputs = preflight(config, world_size=1, on_gpu=False, device=CPU)
    english = [e for e in inputs.eval_examples if e.language == "en"][:5]
    pad = inputs.model.tokenizer.pad_token_id
    gaps = pair_gaps(tiny_models["llama"], english, pad, dtype="fp32", device=CPU, batch_size=2)

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float64).requires_grad_(False)
    expected = []
    for example in english:  # plain float64 logits, one unpadded sequence at a time
        means = []
        for sequence in (example.chosen, example.rejected):
            ids = torch.tensor([sequence.input_ids])
            logprobs = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
            means.append(logprobs[sequence.prompt_length - 1:].mean())
        expected.append(float(means[0] - means[1]))
    torch.testing.assert_close(gaps, torch.tensor(expected, dtype=torch.float64), atol=1e-4, rtol=0)

    report = CheckReport()
    check_reference_gap(report, str(tiny_models["llama"]), inputs.eval_examples, dominant_language="en", pairs=5,
                        pad_token_id=pad, dtype="fp32", device=CPU)
    mean, accuracy = float(gaps.mean()), float((gaps > 0).double().mean())
    assert f"mean {mean:+.3f}, chosen preferred in {100 * accuracy:.0f} %" in report.summary[0]
    assert len(report.warnings) == 1 and "configs/demo_warmup.yaml" in report.warnings[0]  # a random model is unaligned
    lenient = CheckReport()
    check_reference_gap(lenient, str(tiny_models["llama"]), inputs.eval_examples, dominant_language="en", pairs=5,
                        pad_token_id=pad, dtype="fp32", device=CPU, thresholds=GapThresholds(-math.inf, 0.0))
    assert lenient.warnings == []


# ---- train: a bad run stops before the process group ----------------------------------------------------------------
# The cases run `mpo-dist train` one after the other in one fresh interpreter (one for all: its start-up, torch's import
# included, costs more than the cases). After each case it reports the exit code and whether DeepSpeed or a process
# group exists by then; a case that started either leaves it for the later ones too, so it cannot hide. A marker line on
# stderr before each case splits the stderr of the cases.
PROBE = """
import json, sys, torch.distributed as dist
from mpo_dist.cli import main
for argv in json.loads(sys.stdin.read()):
    print("=== case", file=sys.stderr, flush=True)
    code = main(argv)
    sys.stderr.flush()
    print(json.dumps({"code": code, "deepspeed imported": "deepspeed" in sys.modules,
                      "process group": dist.is_initialized()}), flush=True)
"""
# config; pre-flight: model directory, layer of the model, data file
BAD_CONFIGS = [["loss.name=mop"], ["model.path=/no/such/model"], ["mlc.enabled=true", "mlc.layer=99"],
               ["data.train_files=[EMPTY_PARQUET]"]]


def empty_parquet(directory: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = directory / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())}), path)
    return path


@pytest.fixture(scope="module")
def bad_train_runs(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """Per BAD_CONFIGS case: its output directory, exit code, stderr and what existed after it."""
    root = tmp_path_factory.mktemp("bad_train")
    parquet = str(empty_parquet(root))
    runs = [{"output_dir": root / f"run{i}"} for i in range(len(BAD_CONFIGS))]
    argv = [["train", "--set", f"model.path={tiny_models['llama']}", "--set", f"train.output_dir={run['output_dir']}",
             *sets(*(override.replace("EMPTY_PARQUET", parquet) for override in overrides))]
            for run, overrides in zip(runs, BAD_CONFIGS)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "MPO_DIST_DEBUG")}
    result = subprocess.run([sys.executable, "-c", PROBE], input=json.dumps(argv), capture_output=True, text=True,
                            cwd=root, env=env, timeout=300)
    reports = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    stderrs = result.stderr.split("=== case\n")[1:]
    assert result.returncode == 0 and len(reports) == len(stderrs) == len(runs), result.stdout + result.stderr
    return [run | report | {"stderr": stderr} for run, report, stderr in zip(runs, reports, stderrs)]


@pytest.mark.parametrize("case", range(len(BAD_CONFIGS)), ids=[" ".join(overrides) for overrides in BAD_CONFIGS])
def test_train_with_a_bad_config_exits_2_before_deepspeed_and_creates_nothing(bad_train_runs: list[dict],
                                                                             case: int) -> None:
    run = bad_train_runs[case]
    assert run["code"] == 2, run["stderr"]
    assert "Traceback" not in run["stderr"] and len(run["stderr"].strip().splitlines()) == 1, run["stderr"]
    assert run["stderr"].startswith("mpo-dist train: error: ")
    assert not run["deepspeed imported"] and not run["process group"]
    assert not run["output_dir"].exists()


def test_mlc_prompts_are_needed_only_for_records_that_train(mpo: list[str], tmp_path: Path) -> None:
    rows = sample_rows()[:5]
    rows[2] = {key: ({"en": value["en"]} if isinstance(value, dict) else value) for key, value in rows[2].items()}
    data = write_jsonl(tmp_path / "en-only-row.jsonl", rows)  # row 3: only the dominant pair, so MPO does not train it
    assert checked(mpo + [f"data.train_files=[{data}]", "mlc.enabled=true", "mlc.languages=[en,zh]"]).errors == []


def test_a_template_frame_longer_than_the_prompt_limit_is_a_reported_error(mpo: list[str]) -> None:
    errors = checked(mpo + ["data.system_prompt=" + "be careful " * 40]).errors
    assert len(errors) == 1 and "max_prompt_length" in errors[0] and "row" not in errors[0], errors


# ---- the front door's last holes: check reports each in one line, as train would refuse it ---------------------------
def test_check_refuses_an_mlc_layer_the_model_does_not_have(capsys: pytest.CaptureFixture, mpo: list[str]) -> None:
    # the tiny Llama has 2 layers: hidden_states indices run from -3 to 2
    code, out = run_check(capsys, sets(*mpo, "mlc.enabled=true", "mlc.layer=99"))
    assert code == 2
    assert ("error: mlc.layer=99 is out of range for a 2-layer model: expected -3 to 2 (the HF hidden_states index: "
            "0 the embeddings, 2 or -1 the final, after the norm)") in out.splitlines()
    for layer in ("2", "-3"):
        assert run_check(capsys, sets(*mpo, "mlc.enabled=true", f"mlc.layer={layer}"))[0] == 0
    assert run_check(capsys, sets(*mpo, "mlc.enabled=true", "mlc.layer=-4"))[0] == 2


def test_check_reports_an_empty_parquet_file_in_one_line(capsys: pytest.CaptureFixture, mpo: list[str],
                                                         tmp_path: Path) -> None:
    path = empty_parquet(tmp_path)
    code, out = run_check(capsys, sets(*mpo, f"data.train_files=[{path}]"))
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and errors[0].endswith(f"{path}: no records: the Parquet file has no rows")
    assert "Traceback" not in out
