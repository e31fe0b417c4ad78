"""The precomputed reference cache: MPO training from the cache reproduces training with the online ZeRO-3 reference
engine (2 processes, fp32), and a cache that does not belong to the run is refused with what differs."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mpo_dist.config import ConfigError, load_config
from mpo_dist.data.loading import resolve_path
from mpo_dist.engine.reference_cache import INDEX_FILE, ReferenceCache, StaleReferenceCacheError, reference_fingerprint
from mpo_dist.fingerprint import fingerprint_differences

from conftest import REPO_ROOT, read_jsonl, torchrun

STEPS = 5
COMPARED = ("train/loss", "train/mpo/l1", "train/mpo/l2", "train/mpo/anchor_ref_gap")


def cli_args(command: str, *options: str, overrides: list[str]) -> list[str]:
    return ["-m", "mpo_dist.cli", command, *options, *(part for override in overrides for part in ("--set", override))]


@pytest.fixture(scope="module")
def precomputed(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 2-process launch (tests/workers/in_sequence.py): precompute-ref, then the run it belongs to trained with
    the online reference engine (ROOT/online) and from the cache (ROOT/cached). Returns the overrides of that run, the
    cache directory and the launch's output."""
    root = tmp_path_factory.mktemp("reference_cache")
    subset = root / "eight.jsonl"
    subset.write_text("".join(resolve_path("sample:train").read_text().splitlines(keepends=True)[:8]))
    # micro-batch 1 (the released setting): the cached forward then sees exactly the rows, padding width included,
    # that the online reference sees, so both paths compute bit-identical terms; a constant lr lets the policy drift
    # from the reference within a few steps so that L2 (the cached hidden states) is exercised, not just zero
    overrides = [f"model.path={tiny_models['llama']}", f"data.train_files=[{subset}]", "data.languages=[sw,zh]",
                 "data.max_length=96", "data.max_prompt_length=48", "data.eval_files=[]", "loss.name=mpo",
                 "train.micro_batch_size=1", f"train.max_steps={STEPS}", "optim.lr=1e-3", "optim.warmup_ratio=0",
                 "optim.min_lr_ratio=1.0", "logging.progress_bar=false", "logging.tensorboard=false"]
    cache = root / "cache"
    online = overrides + [f"train.output_dir={root / 'online'}"]
    cached = overrides + [f"train.output_dir={root / 'cached'}", "engine.reference=cache",
                          f"engine.reference_cache={cache}"]
    result = torchrun(2, [*cli_args("precompute-ref", "--out", str(cache), overrides=overrides), "--",
                          *cli_args("train", overrides=online), "--", *cli_args("train", overrides=cached)], REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return {"root": root, "overrides": overrides, "cache": cache, "output": result.stdout + result.stderr}


@pytest.mark.multiprocess
def test_cached_reference_gives_the_online_losses(precomputed: dict) -> None:
    root = precomputed["root"]
    assert f"reference terms from the cache {precomputed['cache']}: no reference engine" in precomputed["output"]
    online, cached = (read_jsonl(root / run / "metrics.jsonl") for run in ("online", "cached"))
    online, cached = ([row for row in rows if "train/loss" in row] for rows in (online, cached))
    assert [row["step"] for row in online] == [row["step"] for row in cached] == list(range(1, STEPS + 1))
    for online_row, cached_row in zip(online, cached):
        for name in COMPARED:
            assert cached_row[name] == pytest.approx(online_row[name], abs=1e-6, rel=0), (online_row["step"], name)
    assert max(row["train/mpo/l2"] for row in online) > 1e-3, "the policy never left the reference: L2 was not tested"


@pytest.mark.multiprocess
def test_cache_of_another_max_length_is_refused(precomputed: dict) -> None:
    config = load_config(None, precomputed["overrides"] + ["data.max_length=80"])
    with pytest.raises(StaleReferenceCacheError) as raised:
        ReferenceCache.open(precomputed["cache"], reference_fingerprint(config, "fp32"), torch.device("cpu"))
    message = str(raised.value)
    assert "encoding.max_length: cached 96, now 80" in message
    assert "precompute-ref" in message and str(precomputed["cache"]) in message


@pytest.mark.multiprocess
def test_cache_without_an_example_is_refused(precomputed: dict) -> None:
    config = load_config(None, precomputed["overrides"])
    cache = ReferenceCache.open(precomputed["cache"], reference_fingerprint(config, "fp32"), torch.device("cpu"))
    cache.require_examples(["p001/sw", "p008/zh"])
    with pytest.raises(StaleReferenceCacheError, match="p009/sw"):
        cache.require_examples(["p001/sw", "p009/sw"])


def test_unfinished_cache_is_refused(tmp_path: Path) -> None:
    (tmp_path / "reference-00000-of-00001.safetensors").write_bytes(b"")
    with pytest.raises(StaleReferenceCacheError, match=f"{INDEX_FILE} is missing"):
        ReferenceCache.open(tmp_path, {}, torch.device("cpu"))


def test_fingerprint_differences_name_each_changed_leaf() -> None:
    cached = {"model": {"config.json": "a", "model.safetensors": "1:b"}, "data": [{"sha256": "c"}], "encoding": {"max_length": 96}}
    current = {"model": {"config.json": "a", "model-00001.safetensors": "1:b"}, "data": [{"sha256": "d"}],
               "encoding": {"max_length": 96}}
    assert fingerprint_differences(cached, current) == [
        'data[0].sha256: cached "c", now "d"',
        'model.model-00001.safetensors: absent in the cache, now "1:b"',
        "model.model.safetensors: in the cache, absent now",
    ]
    assert fingerprint_differences(cached, cached) == []


def test_fingerprint_follows_weights_data_and_cached_options(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_models["qwen2"], model)
    data = tmp_path / "data.jsonl"
    data.write_text(resolve_path("sample:train").read_text())
    base = [f"model.path={model}", f"data.train_files=[{data}]", "loss.name=mpo"]

    def differing(extra: list[str]) -> list[str]:
        before = reference_fingerprint(load_config(None, base), "fp32")
        return [line.split(":")[0] for line in fingerprint_differences(before, reference_fingerprint(load_config(None, base + extra), "fp32"))]

    assert differing(["loss.mpo.beta=2.0", "loss.mpo.length_normalize=false"]) == []  # applied after the reference
    assert differing(["loss.mpo.pooling=all_positions"]) == ["reference.pooling"]
    assert differing(["loss.mpo.gap=dpo"]) == ["reference.gap", "reference.terms"]
    assert differing(["data.system_prompt=Be safe."]) == ["encoding.system_prompt"]
    before = reference_fingerprint(load_config(None, base), "fp32")
    weights = model / "model.safetensors"
    content = bytearray(weights.read_bytes())
    content[len(content) // 2] ^= 0x01  # one flipped bit in a weight in the middle of the file
    weights.write_bytes(bytes(content))
    data.write_text(data.read_text().replace("I can't", "I cannot", 1))
    changed = [line.split(":")[0] for line in fingerprint_differences(before, reference_fingerprint(load_config(None, base), "fp32"))]
    assert changed == ["data[0].digest", "model.model.safetensors"]


def test_fingerprint_follows_the_log_prob_code_and_library_versions(tiny_models: dict[str, Path], tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The numbers in a cache come from mpo-dist's log-prob code: a copy of the package whose torch kernel computes
    something else (here: one more line of code) is another fingerprint, named by file; so is another torch."""
    import shutil
    from importlib import metadata

    import mpo_dist.fingerprint as fingerprint

    config = load_config(None, [f"model.path={tiny_models['qwen2']}", "loss.name=mpo"])
    before = reference_fingerprint(config, "fp32")
    copy = Path(shutil.copytree(fingerprint.PACKAGE_ROOT, tmp_path / "mpo_dist",
                                ignore=shutil.ignore_patterns("__pycache__", "sample")))
    kernel = copy / "kernels" / "logprob_torch.py"
    kernel.write_text(kernel.read_text() + "\nCHUNK_FLOOR = 2\n")
    monkeypatch.setattr(fingerprint, "PACKAGE_ROOT", copy)
    real_version = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "9.9" if name == "torch" else real_version(name))
    changed = [line.split(":")[0] for line in fingerprint_differences(before, reference_fingerprint(config, "fp32"))]
    assert changed == ["software.code.kernels/logprob_torch.py", "software.versions.torch"]


def test_cache_settings_are_validated() -> None:
    base = ["model.path=/models/placeholder", "loss.name=mpo", "engine.reference=cache"]
    with pytest.raises(ConfigError, match="engine.reference_cache"):
        load_config(None, base)
    with pytest.raises(ConfigError, match="all_positions"):
        load_config(None, base + ["engine.reference_cache=/tmp/cache", "loss.mpo.pooling=all_positions"])
    load_config(None, base + ["engine.reference_cache=/tmp/cache", "loss.mpo.pooling=all_positions", "loss.mpo.alpha=0"])


def _example(index: int):
    from mpo_dist.data.examples import PreferenceExample
    from mpo_dist.data.tokenize import EncodedSequence

    def sequence(length: int) -> EncodedSequence:
        return EncodedSequence(tuple(range(5, 5 + length)), 3)  # 3 prompt tokens: length - 3 response tokens

    return PreferenceExample(f"r{index}/sw", "sw", sequence(8 + index), sequence(5 + 2 * index))


def test_terms_come_back_by_example_id_and_token_counts_are_checked(tmp_path: Path) -> None:
    """DPO-family terms (the training pair) written for r0, r1, r2 and read back for a batch [r2, r0]."""
    from mpo_dist.data.collate import PreferenceCollator
    from mpo_dist.engine.reference_cache import term_tensors, write_index, write_shard
    from mpo_dist.losses.base import SequenceLogps
    from mpo_dist.engine.reference_terms import ReferenceTerms

    chosen_tokens, rejected_tokens = [5.0, 6.0, 7.0], [2.0, 4.0, 6.0]  # len - 3 of the sequences above
    written = ReferenceTerms(reference=SequenceLogps(torch.tensor([-1.0, -2.0, -3.0]), torch.tensor([-4.0, -5.0, -6.0]),
                                                     torch.tensor(chosen_tokens), torch.tensor(rejected_tokens)))
    shard, record = write_shard(tmp_path, 0, 1, [term_tensors(written)])
    write_index(tmp_path, {"format": 1}, ["reference"], [(shard, record, ["r0/sw", "r1/sw", "r2/sw"])])
    cache = ReferenceCache.open(tmp_path, {"format": 1}, torch.device("cpu"))
    batch = PreferenceCollator(pad_token_id=0)([_example(2), _example(0)])
    terms = cache.terms(batch)
    assert terms.anchor_reference is None and terms.anchor_reference_hidden is None
    assert terms.reference.chosen_sum.tolist() == [-3.0, -1.0] and terms.reference.rejected_sum.tolist() == [-6.0, -4.0]
    assert terms.reference.chosen_tokens.tolist() == [7.0, 5.0] and terms.reference.rejected_tokens.tolist() == [6.0, 2.0]

    longer = _example(1)
    longer = type(longer)(longer.example_id, "sw", _example(2).chosen, longer.rejected)  # 7 response tokens, not 6
    with pytest.raises(StaleReferenceCacheError, match="tokenised differently"):
        cache.terms(PreferenceCollator(pad_token_id=0)([longer]))


# ---- a cache that proves it is unedited -----------------------------------------------------------------------------
SHARDS = ("reference-00000-of-00002.safetensors", "reference-00001-of-00002.safetensors")


def _cache_settings(model: Path, root: Path) -> list[str]:
    subset = root / "eight.jsonl"
    subset.write_text("".join(resolve_path("sample:train").read_text().splitlines(keepends=True)[:8]))
    return [f"model.path={model}", f"data.train_files=[{subset}]", "data.languages=[sw,zh]", "data.max_length=96",
            "data.max_prompt_length=48", "data.eval_files=[]", "loss.name=mpo", "train.micro_batch_size=1",
            "train.max_steps=2", "engine.reference=cache", f"engine.reference_cache={root / 'cache'}",
            f"train.output_dir={root / 'run'}", "logging.progress_bar=false", "logging.tensorboard=false"]


def _write_cache(overrides: list[str]) -> Path:
    """The cache precompute-ref would write for `overrides` on 2 ranks, every other example in each shard as
    rank_batches deals them, with made-up log-prob sums and hidden states (what is checked here is the files, not the
    numbers) and the true response-token counts, which training checks."""
    from mpo_dist.check.preflight import preflight
    from mpo_dist.engine.reference_cache import cached_term_names, term_tensors, write_index, write_shard
    from mpo_dist.engine.reference_terms import ReferenceTerms
    from mpo_dist.losses import build_loss
    from mpo_dist.losses.base import SequenceLogps

    config = load_config(None, overrides)
    inputs = preflight(config, world_size=1, on_gpu=False, open_reference_cache=False)
    assert not inputs.report.errors, inputs.report.errors
    directory = Path(config.engine.reference_cache)
    directory.mkdir()
    shards = []
    for rank in range(2):
        examples = inputs.train_examples[rank::2]
        rows = len(examples)
        counts = [torch.tensor([float(len(s.input_ids) - s.prompt_length) for s in sequences])
                  for sequences in ([e.anchor_chosen for e in examples], [e.anchor_rejected for e in examples])]
        terms = ReferenceTerms(anchor_reference=SequenceLogps(-counts[0], -counts[1], *counts),
                               anchor_reference_hidden=torch.ones(rows, 2, inputs.model.hf_config.hidden_size))
        name, record = write_shard(directory, rank, 2, [term_tensors(terms)])
        shards.append((name, record, [example.example_id for example in examples]))
    loss = build_loss(config.loss.name, config.loss.options())
    write_index(directory, reference_fingerprint(config, inputs.dtype_name), cached_term_names(loss), shards)
    assert [name for name, _, _ in shards] == list(SHARDS)
    return directory


def _flip(path: Path, offset: int) -> None:
    content = bytearray(path.read_bytes())
    content[offset] ^= 0x01
    path.write_bytes(bytes(content))


def _header_length(path: Path) -> int:
    return int.from_bytes(path.read_bytes()[:8], "little")


def _open_and_verify(overrides: list[str]) -> None:
    from mpo_dist.engine.reference_cache import verify_reference_cache

    config = load_config(None, overrides)
    cache = ReferenceCache.open(config.engine.reference_cache, reference_fingerprint(config, "fp32"), torch.device("cpu"))
    verify_reference_cache(cache, readers=2)


def test_a_byte_flipped_in_a_shard_is_named_before_any_step(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from mpo_dist.engine.reference_cache import DamagedReferenceCacheError

    overrides = _cache_settings(tiny_models["llama"], tmp_path)
    directory = _write_cache(overrides)
    _open_and_verify(overrides)  # intact
    shard = directory / SHARDS[1]
    assert shard.stat().st_size > 2 * (8 + _header_length(shard))  # the middle byte is a stored number
    _flip(shard, shard.stat().st_size // 2)
    with pytest.raises(DamagedReferenceCacheError) as raised:
        _open_and_verify(overrides)
    message = str(raised.value)
    assert "\n" not in message and f"the reference cache {directory} cannot be used: {SHARDS[1]} has crc32 " in message
    assert "(damaged or edited); rebuild it" in message and "precompute-ref" in message


@pytest.mark.parametrize("where", [0, 0.25, 0.5, 0.75, 1.0])
def test_a_byte_flipped_in_a_shard_header_is_named_when_the_cache_opens(tiny_models: dict[str, Path], tmp_path: Path,
                                                                       where: float) -> None:
    """Anywhere in the JSON header (names, dtypes, shapes, offsets, padding) a flip is caught on opening, before the
    checksum pass: the header is what safetensors and the index are read by."""
    from mpo_dist.engine.reference_cache import DamagedReferenceCacheError

    overrides = _cache_settings(tiny_models["llama"], tmp_path)
    shard = _write_cache(overrides) / SHARDS[0]
    _flip(shard, 8 + int(where * (_header_length(shard) - 1)))
    config = load_config(None, overrides)
    with pytest.raises(DamagedReferenceCacheError) as raised:
        ReferenceCache.open(config.engine.reference_cache, reference_fingerprint(config, "fp32"), torch.device("cpu"))
    assert "\n" not in str(raised.value) and f"cannot be used: {SHARDS[0]} " in str(raised.value)


def test_an_edited_index_is_named(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    """The index maps example ids to rows: one swapped pair would feed every step another example's terms."""
    import json

    from mpo_dist.engine.reference_cache import DamagedReferenceCacheError

    overrides = _cache_settings(tiny_models["llama"], tmp_path)
    index = _write_cache(overrides) / INDEX_FILE
    record = json.loads(index.read_text())
    ids = record["content"]["shards"][0]["example_ids"]
    ids[0], ids[1] = ids[1], ids[0]
    index.write_text(json.dumps(record))
    with pytest.raises(DamagedReferenceCacheError, match=f"{INDEX_FILE} has crc32 .* edited or damaged since it was written"):
        _open_and_verify(overrides)


def test_check_and_train_stop_on_a_damaged_cache_with_one_line(tiny_models: dict[str, Path], tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    from mpo_dist.cli import main

    overrides = _cache_settings(tiny_models["llama"], tmp_path)
    directory = _write_cache(overrides)
    args = [arg for override in overrides for arg in ("--set", override)]
    assert main(["check", "--cpu", *args]) == 0
    assert f"cache      {directory}: 2 shard(s)" in capsys.readouterr().out

    _flip(directory / SHARDS[1], (directory / SHARDS[1]).stat().st_size // 2)
    assert main(["check", "--cpu", *args]) == 2
    errors = [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{SHARDS[1]} has crc32" in errors[0], errors

    _flip(directory / SHARDS[1], (directory / SHARDS[1]).stat().st_size // 2)  # repaired
    _flip(directory / SHARDS[0], 8 + _header_length(directory / SHARDS[0]) // 2)
    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"mpo-dist train: error: engine.reference_cache: the reference cache {directory} cannot be " \
                              f"used: {SHARDS[0]} " in err[0], err
    assert not (tmp_path / "run").exists()  # stopped before the process group, the engines and the output directory


def test_training_stops_on_a_byte_flipped_in_a_shard_before_any_step(tiny_models: dict[str, Path], tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from mpo_dist.cli import main

    overrides = _cache_settings(tiny_models["llama"], tmp_path)
    directory = _write_cache(overrides)
    _flip(directory / SHARDS[1], (directory / SHARDS[1]).stat().st_size // 2)
    assert main(["train", *[arg for override in overrides for arg in ("--set", override)]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot be used: {SHARDS[1]} has crc32" in err[0], err
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or "train/loss" not in (tmp_path / "run" / "metrics.jsonl").read_text()


@pytest.mark.multiprocess
def test_verification_is_shared_by_bytes_and_every_rank_names_the_damage(tmp_path: Path) -> None:
    """Two ranks: the largest shard is one rank's share, the two small ones the other's (shares_by_bytes), and a flip
    in a shard only the second rank reads stops both with the same line."""
    import json

    from mpo_dist.engine.reference_cache import shard_file_name, term_tensors, write_index, write_shard
    from mpo_dist.engine.reference_terms import ReferenceTerms

    cache = tmp_path / "cache"
    cache.mkdir()
    shards = []
    for rank, rows in enumerate((64, 8, 8)):
        terms = ReferenceTerms(anchor_reference_hidden=torch.randn(rows, 2, 32))
        name, record = write_shard(cache, rank, 3, [term_tensors(terms)])
        shards.append((name, record, [f"r{rank}-{row}/sw" for row in range(rows)]))
    write_index(cache, {"format": 1}, ["anchor_reference_hidden"], shards)
    big, *small = (shard_file_name(rank, 3) for rank in range(3))
    _flip(cache / small[1], (cache / small[1]).stat().st_size - 5)

    result = torchrun(2, [str(REPO_ROOT / "tests/workers/verify_reference_cache.py"), str(cache), str(tmp_path)], REPO_ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    reports = [json.loads((tmp_path / f"verify_rank{rank}.json").read_text()) for rank in range(2)]
    assert [report["read"] for report in reports] == [[big], small]
    assert reports[0]["error"] == reports[1]["error"]
    assert f"cannot be used: {small[1]} has crc32" in reports[0]["error"] and "\n" not in reports[0]["error"]
