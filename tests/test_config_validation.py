"""Config loading: YAML + overrides, and errors that name the offending key before any process starts."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from mpo_dist.config import ConfigError, load_config
from mpo_dist.data.data_file import DataFile
from mpo_dist.engine.ds_config import DeepSpeedConfigError, render_policy_config, render_reference_config

REQUIRED = ["model.path=/models/x"]


def test_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("model: {path: /m}\nloss: {name: dpo, dpo: {beta: 0.2}}\n"
                    "data:\n  train_files: [a.jsonl, {path: b.json, format: mpo, target_language: bn}]\n")
    config = load_config(path, ["optim.lr=1e-6", "data.languages=[bn, sw]", "mlc.enabled=true", "train.epochs=3"])
    assert config.loss.name == "dpo" and config.loss.options().beta == 0.2
    assert config.data.train_files == [DataFile("a.jsonl"), DataFile("b.json", "mpo", "", "bn")]
    assert config.optim.lr == 1e-6 and config.data.languages == ["bn", "sw"] and config.mlc.enabled and config.train.epochs == 3


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["optim.lrr=1"], "unknown config key optim.lrr"),
        (["loss.mpo.betta=1"], "loss.mpo"),
        (["train.epochs=two"], "train.epochs: expected an integer"),
        (["loss.name=kto"], "loss.name: 'kto' is not one of"),
        (["loss.mpo.pooling=max"], "pooling"),
        (["data.max_prompt_length=2048"], "data.max_prompt_length (2048) must be smaller"),
        (["train.micro_batch_size=0"], "train.micro_batch_size: must be > 0"),
        (["model.checkpointed_layers=-2"], "model.checkpointed_layers: must be -1"),
        (["model.checkpointed_layers=4"], "only applies with model.gradient_checkpointing=true"),
        (["logging.tensorboard=maybe"], "logging.tensorboard: expected true/false"),
        (["data.train_files=[{path: x, format: csv}]"], "data.train_files[0].format"),
        (["engine.reference=none"], "engine.reference"),  # MPO needs the reference
        (["optim"], "expected key=value"),
        (["optim.lr=0"], "optim.lr: must be a finite number > 0, got 0.0"),
        (["optim.lr=-1e-6"], "optim.lr: must be a finite number > 0, got -1e-06"),
        (["optim.lr=.inf"], "optim.lr: must be a finite number > 0, got inf"),
        (["optim.lr=.nan"], "optim.lr: must be a finite number > 0, got nan"),
        (["optim.weight_decay=-0.01"], "optim.weight_decay: must be a finite number >= 0, got -0.01"),
        (["optim.max_grad_norm=0"], "optim.max_grad_norm: must be a finite number > 0, got 0.0"),
        (["optim.max_grad_norm=-1"], "optim.max_grad_norm: must be a finite number > 0, got -1.0"),
        (["optim.min_lr_ratio=-0.1"], "optim.min_lr_ratio: must be in [0, 1], got -0.1"),
        (["optim.min_lr_ratio=1.5"], "optim.min_lr_ratio: must be in [0, 1], got 1.5"),
        (["optim.betas=[0.9, 1.0]"], "optim.betas: expected two numbers in [0, 1)"),
        (["train.max_steps=-5"], "train.max_steps: must be >= 0 (0 = off / derived), got -5"),
        (["checkpoint.every_minutes=-1"], "checkpoint.every_minutes: must be a finite number >= 0"),
        (["data.languages=[zh,jp]"], "data.languages: unknown language code(s) 'jp'; known codes: am, ar,"),
        (["data.languages=[xx]"], "data.languages: unknown language code(s) 'xx'"),
        (["data.languages=[zh,zh]"], "data.languages: zh listed more than once"),
        (["data.dominant_language=english"], "data.dominant_language: unknown language code(s) 'english'"),
        (["mlc.languages=[en,zh,jp]"], "mlc.languages: unknown language code(s) 'jp'"),
        (["data.train_files=[{path: a.json, format: mpo, target_language: jp}]"],
         "data.train_files[0].target_language: unknown language code(s) 'jp'"),
        (["optim.betas=[0.9, 0.95"], "--set optim.betas: the value '[0.9, 0.95' is not valid YAML: expected ',' or ']'"),
        (["data.train_files=[{format: mpo}]"], "data.train_files[0]: "),  # a data file needs its path
    ],
)
def test_bad_values_name_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, REQUIRED + overrides)
    assert message in str(caught.value)


def test_errors_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  path: /m\n optim: {lr: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "\n" not in str(caught.value) and str(caught.value).startswith(f"config file {path}: invalid YAML: ")
    with pytest.raises(ConfigError) as caught:
        load_config(None, REQUIRED + ["data.languages=[zh, {a: b]"])
    assert "\n" not in str(caught.value) and "--set data.languages" in str(caught.value)


def test_config_keys_lists_every_key_with_type_default_and_meaning() -> None:
    import dataclasses

    from mpo_dist.config import Config
    from mpo_dist.config_keys import config_keys

    rows = {key: (type_name, default, meaning) for key, type_name, default, meaning in config_keys(Config)}
    assert rows["optim.lr"] == ("float", "6e-07", "peak learning rate (AdamW), > 0")
    assert rows["loss.mpo.gap"][0] == "length_normalized | dpo"
    assert rows["data.train_files"][1] == "['sample:train']"

    def leaves(cls: type, prefix: str = "") -> list[str]:  # independent walk: every init field of every section
        keys = []
        for item in dataclasses.fields(cls):
            section = item.default_factory() if item.default_factory is not dataclasses.MISSING else None
            if dataclasses.is_dataclass(section):
                keys += leaves(type(section), f"{prefix}{item.name}.")
            else:
                keys.append(f"{prefix}{item.name}")
        return keys

    assert sorted(k for k, (t, _, _) in rows.items() if t != "section") == sorted(leaves(Config))
    assert [key for key, (t, _, meaning) in rows.items() if t != "section" and not meaning] == []  # loss.* and mlc.* too
    assert rows["loss.simpo.gamma"] == ("float", "0.5", "γ: target margin between the β-scaled chosen and rejected rewards")


def test_config_keys_columns_never_run_together() -> None:
    from mpo_dist.config_keys import render_config_keys

    lines = {line.split()[0]: line for line in render_config_keys().splitlines() if line.startswith("  ")}
    # a long type, a long default: each cell still ends two spaces before the next one starts
    assert "length_normalized | dpo  'length_normalized'  " in lines["loss.mpo.gap"]
    assert "'deepspeed_configs/zero3_policy.json'  DeepSpeed template" in lines["engine.policy_config"]


def test_setting_one_item_of_a_list_says_how_to_set_the_list() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, REQUIRED + ["data.train_files.0=x.jsonl"])
    assert str(caught.value) == ("--set data.train_files.0: data.train_files is a list, set as a whole: "
                                 "--set data.train_files=[a,b] (YAML flow syntax; the items cannot be set one by one)")
    with pytest.raises(ConfigError, match=r"--set model.path.x: path is not a section"):
        load_config(None, REQUIRED + ["model.path.x=1"])


def test_model_path_required_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.path"):
        load_config(None, [])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_deepspeed_templates_have_every_auto_filled(tmp_path: Path) -> None:
    config = load_config(None, REQUIRED + ["train.micro_batch_size=2", "train.gradient_accumulation=4", "optim.lr=3e-4",
                                           "optim.max_grad_norm=0.5", "optim.warmup_ratio=0.1"])
    policy = render_policy_config(config, world_size=8, dtype="bf16", hidden_size=4096, on_gpu=True)
    assert policy["train_batch_size"] == 2 * 4 * 8 and policy["gradient_clipping"] == 0.5
    assert policy["bf16"]["enabled"] is True and policy["fp16"]["enabled"] is False
    assert policy["optimizer"]["params"]["lr"] == 3e-4
    assert policy["zero_optimization"]["reduce_bucket_size"] == 500_000_000  # set in the template, not "auto"
    reference = render_reference_config(config, world_size=8, dtype="fp32", hidden_size=64, on_gpu=False)
    assert reference["zero_optimization"]["offload_param"] == {"device": "cpu", "pin_memory": False}
    assert reference["zero_optimization"]["stage3_prefetch_bucket_size"] == int(0.9 * 64 * 64)
    assert "optimizer" not in reference and '"auto"' not in str(reference) + str(policy)

    buckets = tmp_path / "buckets.json"  # a user template leaving the bucket sizes to mpo-dist
    buckets.write_text('{"zero_optimization": {"stage": 3, "reduce_bucket_size": "auto", '
                       '"stage3_param_persistence_threshold": "auto"}}')
    config.engine.policy_config = str(buckets)
    zero = render_policy_config(config, world_size=8, dtype="bf16", hidden_size=4096, on_gpu=True)["zero_optimization"]
    assert zero["reduce_bucket_size"] == 4096 * 4096 and zero["stage3_param_persistence_threshold"] == 10 * 4096

    broken = tmp_path / "ds.json"
    broken.write_text('{"train_micro_batch_size_per_gpu": "auto", "zero_optimization": {"stage": 3, "sub_group_size": "auto"}}')
    config.engine.policy_config = str(broken)
    with pytest.raises(DeepSpeedConfigError, match="zero_optimization.sub_group_size"):
        render_policy_config(config, world_size=1, dtype="fp32", hidden_size=8, on_gpu=False)


# ---- config files: a key given twice, a directory, a file that is not text ----------------------------------------
def test_a_yaml_key_given_twice_names_both_lines_but_a_merge_may_override(tmp_path: Path) -> None:
    merged = tmp_path / "merged.yaml"
    merged.write_text("model: {path: /m}\nloss:\n  name: ipo\n  dpo: &shared {beta: 0.2}\n  ipo:\n    <<: *shared\n"
                      "    beta: 0.3\n")
    config = load_config(merged)
    assert (config.loss.dpo.beta, config.loss.ipo.beta) == (0.2, 0.3)  # the merged key overridden, as YAML means it

    nested = tmp_path / "nested.yaml"
    nested.write_text("model: {path: /m}\nloss:\n  name: dpo\n  dpo:\n    beta: 0.2\n    label_smoothing: 0.1\n"
                      "    beta: 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(nested)
    assert str(caught.value) == (f"config file {nested}: invalid YAML: key 'beta' given twice, first at line 5 "
                                 "(line 7, column 5)")
    with pytest.raises(ConfigError) as caught:
        load_config(None, REQUIRED + ["data.train_files=[{path: a.jsonl, format: mpo, path: b.jsonl}]"])
    assert str(caught.value) == ("--set data.train_files: the value '[{path: a.jsonl, format: mpo, path: b.jsonl}]' is "
                                 "not valid YAML: key 'path' given twice, first at line 1 (line 1, column 31)")


def test_config_file_that_is_a_directory_or_not_text(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path)
    assert str(caught.value) == f"config file {tmp_path} is a directory; expected a file"
    binary = tmp_path / "run.yaml"
    binary.write_bytes(b"model:\n  path: /m\xff\n")
    with pytest.raises(ConfigError) as caught:
        load_config(binary)
    assert str(caught.value) == f"config file {binary} is not UTF-8 text (byte 17)"


@pytest.mark.parametrize(("text", "lines"), [
    ('{"a": 1, "b": {"a": 2}, "c": [{"a": 3}, {"a": 4}]}', None),  # one key in different objects: fine
    ('{"a": "x\\": {\\"a\\": 1", "b": "\\"a\\": 2"}', None),  # key-like text inside strings is not a key
    ('{\n  "a": {\n    "k": 1,\n    "k": [1, {"k": 2}]\n  }\n}', (3, 4)),
    ('{"zero_optimization": {"stage": 3},\n "bf16": {"enabled": true},\n "zero_optimization": {}}', (1, 3)),
])
def test_a_json_template_key_given_twice_in_one_object_names_both_lines(tmp_path: Path, text: str,
                                                                          lines: tuple[int, int] | None) -> None:
    from mpo_dist.config_files import load_json_config

    path = tmp_path / "template.json"
    path.write_text(text)
    if lines is None:
        assert load_json_config(path, "DeepSpeed config template") == json.loads(text)
        return
    with pytest.raises(ConfigError) as caught:
        load_json_config(path, "DeepSpeed config template")
    key = "k" if "k" in text else "zero_optimization"
    assert str(caught.value) == (f"DeepSpeed config template {path}: key {key!r} given twice in one object, at lines "
                                 f"{lines[0]} and {lines[1]} (a JSON parser keeps only the last)")
