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

from conftest import REPO_ROOT, read_jsonl, torchrun, train_cli

STEPS = 5
COMPARED = ("train/loss", "train/mpo/l1", "train/mpo/l2", "train/mpo/anchor_ref_gap")


@pytest.fixture(scope="module")
def precomputed(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One 2-process precompute-ref run; returns the overrides of the run it belongs to and the cache directory."""
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
    args = ["-m", "mpo_dist.cli", "precompute-ref", "--out", str(cache)]
    for override in overrides:
        args += ["--set", override]
    result = torchrun(2, args, REPO_ROOT)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return {"root": root, "overrides": overrides, "cache": cache}


@pytest.mark.multiprocess
def test_cached_reference_gives_the_online_losses(precomputed: dict) -> None:
    root, overrides = precomputed["root"], precomputed["overrides"]
    train_cli(2, overrides + [f"train.output_dir={root / 'online'}"], REPO_ROOT)
    cached_run = train_cli(2, overrides + [f"train.output_dir={root / 'cached'}", "engine.reference=cache",
                                           f"engine.reference_cache={precomputed['cache']}"], REPO_ROOT)
    assert "no reference engine" in cached_run.stdout
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
    content[-1] ^= 0xFF  # one flipped bit in the last weight
    weights.write_bytes(bytes(content))
    data.write_text(data.read_text().replace("I can't", "I cannot", 1))
    changed = [line.split(":")[0] for line in fingerprint_differences(before, reference_fingerprint(load_config(None, base), "fp32"))]
    assert changed == ["data[0].sha256", "model.model.safetensors"]


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
    shard = write_shard(tmp_path, 0, 1, [term_tensors(written)])
    write_index(tmp_path, {"format": 1}, ["reference"], [(shard, ["r0/sw", "r1/sw", "r2/sw"])])
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
