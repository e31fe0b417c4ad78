"""Reference terms computed once by `mpo-dist precompute-ref` and read back during training, keyed by example id.

MPO's reference terms depend only on the frozen initial model and the dominant-language data (docs/methods/mpo.md), the DPO
family's only on the frozen model and the training pair. One pass before training therefore replaces the reference
forward of every step: training with `engine.reference: cache` builds no second ZeRO-3 engine and moves no offloaded
parameters.

A cache directory holds
    index.json                              a sealed record (mpo_dist/artefact.py): format, fingerprint, cached term
                                            names, each shard's size, CRC-32 and example ids; written last
    reference-RRRRR-of-WWWWW.safetensors    one per rank of the precompute run; float32, row i = the shard's example i

A cache is used only when its fingerprint equals the run's (model files, tokenizer files, training data contents,
tokenisation settings, the loss's cached terms, dtype, attention kernel, library versions and the log-prob code) and it
holds every training example; anything else is refused with what differs and the command that rebuilds it. Opening it
checks the index's checksum and each shard's size and header; `verify_reference_cache` checksums the shards' bytes,
spread over the ranks (`check` and the start of training), so a damaged shard is one line naming it, before any step.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterable

import torch

from mpo_dist.artefact import DamagedArtefactError, FileRecord, payload_problems, read_sealed, write_payload, write_sealed
from mpo_dist.config import Config
from mpo_dist.data.collate import Batch
from mpo_dist.data.loading import resolve_path
from mpo_dist.data.packing import sequence_sums
from mpo_dist.engine.checkpoint_layout import describe, shares_by_bytes
from mpo_dist.engine.engines import broadcast_from_rank0, gather_objects, rank_and_world
from mpo_dist.engine.reference_terms import ReferenceTerms
from mpo_dist.errors import UserError
from mpo_dist.fingerprint import (LOGPROB_CODE, data_digest, fingerprint_differences, model_fingerprint,
                                  software_fingerprint)
from mpo_dist.losses import build_loss
from mpo_dist.losses.base import PreferenceLoss, SequenceLogps

CACHE_FORMAT = 2  # 2: sealed index with shard records, full-content and software fingerprint
INDEX_FILE = "index.json"
LOGPS_FIELDS = tuple(f.name for f in dataclasses.fields(SequenceLogps))
# The code between the data and the cached numbers, beyond the log-prob path: the model wrapper, the reference's terms.
REFERENCE_CODE = LOGPROB_CODE + ("models/alignment_model.py", "engine/reference_terms.py", "train/step.py")
REBUILD_HINT = ("rebuild it with the run's config and overrides (under torchrun / srun, like train): "
                "mpo-dist precompute-ref --config CONFIG [--set KEY=VALUE ...] --out {directory}")


class StaleReferenceCacheError(UserError):
    """The cache does not belong to this run (other model, data, settings or loss) or lacks some of its examples."""


class DamagedReferenceCacheError(UserError):
    """A file of the cache is not what precompute-ref wrote (cut short, damaged, edited)."""


# ---- fingerprint ----------------------------------------------------------------------------------------------------
def cached_term_names(loss: PreferenceLoss) -> list[str]:
    """The ReferenceTerms fields this loss reads, i.e. what the cache must hold."""
    names = (["reference"] if loss.needs_reference else []) + (["anchor_reference"] if loss.needs_anchor else [])
    return names + (["anchor_reference_hidden"] if loss.needs_anchor_hidden else [])


def reference_fingerprint(config: Config, dtype: str) -> dict[str, Any]:
    """Everything the cached values depend on, as readable JSON (so a mismatch can be named, not just detected).

    `dtype` is the resolved model dtype (fp32 / bf16 / fp16). Options applied after the reference (beta, alpha,
    length_normalize) and the log-prob backend option (same values up to rounding) are left out on purpose; the code
    of both backends is in."""
    loss_options = config.loss.options()
    loss = build_loss(config.loss.name, loss_options)
    files = model_fingerprint(Path(config.model.path), Path(config.model.tokenizer or config.model.path))
    data = [{"format": f.format, "source_language": f.source_language, "target_language": f.target_language,
             "digest": data_digest(resolve_path(f.path))} for f in config.data.train_files]
    settings = config.data
    encoding = {"max_length": settings.max_length, "max_prompt_length": settings.max_prompt_length,
                "system_prompt": settings.system_prompt, "dominant_language": settings.dominant_language,
                "languages": list(settings.languages)}
    terms = {"loss": config.loss.name, "terms": cached_term_names(loss), "dtype": dtype,
             "attn_implementation": config.model.attn_implementation}
    if hasattr(loss_options, "gap"):
        terms["gap"] = loss_options.gap
    if loss.needs_anchor_hidden:
        terms["pooling"] = loss.pooling
    return {"format": CACHE_FORMAT, **files, "data": data, "encoding": encoding, "reference": terms,
            "software": software_fingerprint(REFERENCE_CODE)}


# ---- writing (precompute-ref) ---------------------------------------------------------------------------------------
def shard_file_name(rank: int, world_size: int) -> str:
    return f"reference-{rank:05d}-of-{world_size:05d}.safetensors"


def prepare_directory(directory: Path) -> None:
    """Rank 0, before any shard is written: drop the index first (a half-rebuilt cache is then never readable) and
    the shards of an earlier build, which may come from another world size."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / INDEX_FILE).unlink(missing_ok=True)
    for old in directory.glob("reference-*-of-*.safetensors"):
        old.unlink()


def stored_tensor_names(term_names: list[str]) -> list[str]:
    """The shard tensors that hold the terms `term_names` (`term_tensors` names them so)."""
    names: list[str] = []
    for name in term_names:
        names += [name] if name == "anchor_reference_hidden" else [f"{name}.{field}" for field in LOGPS_FIELDS]
    return names


def term_tensors(terms: ReferenceTerms) -> dict[str, torch.Tensor]:
    """A batch's terms as named float32 CPU tensors with one row per pair, the shard's storage layout."""
    tensors: dict[str, torch.Tensor] = {}
    for name in ("reference", "anchor_reference"):
        logps = getattr(terms, name)
        if logps is not None:
            tensors |= {f"{name}.{field}": getattr(logps, field) for field in LOGPS_FIELDS}
    if terms.anchor_reference_hidden is not None:
        tensors["anchor_reference_hidden"] = terms.anchor_reference_hidden
    return {name: tensor.detach().float().cpu() for name, tensor in tensors.items()}


def write_shard(directory: Path, rank: int, world_size: int,
                batches: list[dict[str, torch.Tensor]]) -> tuple[str, FileRecord] | None:
    """Concatenate this rank's per-batch `term_tensors` (in example order) into its shard, durably (on the disk before
    rank 0's index points at it); its name and record, or None when it has none."""
    from safetensors.torch import save

    if not batches:
        return None
    tensors = {name: torch.cat([batch[name] for batch in batches]).contiguous() for name in batches[0]}
    name = shard_file_name(rank, world_size)
    return name, write_payload(directory / name, save(tensors))


def require_unique_ids(example_ids: list[str]) -> None:
    seen: set[str] = set()
    for example_id in example_ids:
        if example_id in seen:
            raise ValueError(f"example id {example_id!r} occurs twice in the training data; the reference cache is "
                             "keyed by example id (<record id>/<language>), so give every record a unique id")
        seen.add(example_id)


def write_index(directory: Path, fingerprint: dict[str, Any], term_names: list[str],
                shards: list[tuple[str, FileRecord, list[str]]]) -> None:
    """Rank 0, after every shard is on disk: the index, sealed with its checksum, makes the cache readable."""
    all_ids = [example_id for _, _, example_ids in shards for example_id in example_ids]
    require_unique_ids(all_ids)
    index = {"format": CACHE_FORMAT, "fingerprint": fingerprint, "terms": term_names, "num_examples": len(all_ids),
             "shards": [{"file": file, **record.to_json(), "example_ids": ids} for file, record, ids in shards]}
    write_sealed(directory / INDEX_FILE, index, indent=1)


# ---- reading (training) ---------------------------------------------------------------------------------------------
class ReferenceCache:
    """Read-only view of a checked cache; `terms(batch)` returns the batch's ReferenceTerms on `device`.

    Shards are memory-mapped and read row by row, so a rank holds only its current micro-batch in memory."""

    def __init__(self, directory: Path, index: dict[str, Any], device: torch.device):
        """Opens every shard and reads its header: one that safetensors cannot parse, or whose tensors are not the
        index's terms with one row per example, is a DamagedReferenceCacheError naming it."""
        self.directory = directory
        self.device = device
        self.term_names: list[str] = index["terms"]
        self.records = {shard["file"]: FileRecord.from_json(shard) for shard in index["shards"]}
        self._shards = [self._open_shard(shard) for shard in index["shards"]]
        self._location = {example_id: (s, row) for s, shard in enumerate(index["shards"])
                          for row, example_id in enumerate(shard["example_ids"])}

    def _open_shard(self, shard: dict[str, Any]) -> Any:
        from safetensors import SafetensorError, safe_open

        try:
            handle = safe_open(str(self.directory / shard["file"]), framework="pt")
        except (SafetensorError, OSError) as error:
            raise _damaged(self.directory, f"{shard['file']} is not a readable safetensors file ({error})") from error
        rows = {name: handle.get_slice(name).get_shape()[0] for name in handle.keys()}
        expected = {name: len(shard["example_ids"]) for name in stored_tensor_names(self.term_names)}
        if rows != expected:
            raise _damaged(self.directory, f"{shard['file']} holds tensors {rows} (name: rows), the index expects "
                                           f"{expected}")
        return handle

    @classmethod
    def open(cls, directory: str | Path, fingerprint: dict[str, Any], device: torch.device) -> "ReferenceCache":
        """Refuse a missing, unfinished, mismatched or damaged cache with what differs and how to rebuild it. Checks the
        index's checksum, each shard's recorded size and its header; the shards' bytes are checksummed by
        `verify_reference_cache`."""
        directory = Path(directory)
        hint = REBUILD_HINT.format(directory=directory)
        index_path = directory / INDEX_FILE
        if not index_path.is_file():
            raise StaleReferenceCacheError(f"no reference cache at {directory} ({INDEX_FILE} is missing: never built, or "
                                           f"precompute-ref did not finish); {hint}")
        try:
            index = read_sealed(index_path)
        except DamagedArtefactError as error:
            raise _damaged(directory, str(error)) from error
        differences = fingerprint_differences(index.get("fingerprint", {}), fingerprint)
        if differences:
            raise StaleReferenceCacheError(f"the reference cache {directory} was built for a different run:\n  "
                                           + "\n  ".join(differences) + f"\n{hint}")
        missing = [shard["file"] for shard in index["shards"] if not (directory / shard["file"]).is_file()]
        if missing:
            raise StaleReferenceCacheError(f"the reference cache {directory} lacks its shard(s) {missing}; {hint}")
        for shard in index["shards"]:
            size = (directory / shard["file"]).stat().st_size
            if size != shard["size"]:
                raise _damaged(directory, f"{shard['file']} is {size} bytes, written with {shard['size']} (cut short or "
                                          "still being copied)")
        return cls(directory, index, device)

    def require_examples(self, example_ids: Iterable[str]) -> None:
        """Checked at start-up so a missing example fails the job before training, not hours into it."""
        missing = [example_id for example_id in example_ids if example_id not in self._location]
        if missing:
            raise StaleReferenceCacheError(
                f"{len(missing)} training example(s) are not in the reference cache {self.directory} (e.g. "
                f"{', '.join(missing[:3])}); {REBUILD_HINT.format(directory=self.directory)}")

    def _stacked(self, name: str, example_ids: list[str]) -> torch.Tensor:
        rows = []
        for example_id in example_ids:
            shard, row = self._location[example_id]
            rows.append(self._shards[shard].get_slice(name)[row : row + 1])
        return torch.cat(rows).to(self.device)

    def _logps(self, name: str, batch: Batch, counts: torch.Tensor, chosen: slice, rejected: slice) -> SequenceLogps:
        """The cached sums and counts of `name`; `counts` (this batch's response tokens per sequence) must match."""
        logps = SequenceLogps(*(self._stacked(f"{name}.{field}", batch.example_ids) for field in LOGPS_FIELDS))
        if not (torch.equal(logps.chosen_tokens, counts[chosen]) and torch.equal(logps.rejected_tokens, counts[rejected])):
            raise StaleReferenceCacheError(
                f"reference cache {self.directory}: the cached response token counts of {name} for {batch.example_ids} "
                "differ from this batch's, so the examples were tokenised differently when the cache was built; "
                + REBUILD_HINT.format(directory=self.directory))
        return logps

    def terms(self, batch: Batch) -> ReferenceTerms:
        self.require_examples(batch.example_ids)
        terms = ReferenceTerms()
        no_values = torch.zeros(batch.labels.shape, device=batch.labels.device)
        counts = sequence_sums(no_values, batch.sequences())[1].to(self.device)  # once per batch, for every term
        if "reference" in self.term_names:
            terms.reference = self._logps("reference", batch, counts, batch.rows("chosen"), batch.rows("rejected"))
        if "anchor_reference" in self.term_names:
            terms.anchor_reference = self._logps("anchor_reference", batch, counts, batch.rows("anchor_chosen"),
                                                 batch.rows("anchor_rejected"))
        if "anchor_reference_hidden" in self.term_names:
            terms.anchor_reference_hidden = self._stacked("anchor_reference_hidden", batch.example_ids)
        return terms


def _damaged(directory: Path, problem: str) -> DamagedReferenceCacheError:
    return DamagedReferenceCacheError(f"the reference cache {directory} cannot be used: {problem}; "
                                      + REBUILD_HINT.format(directory=directory))


def verify_reference_cache(cache: ReferenceCache, readers: int = 1) -> None:
    """Collective: every rank of the job calls it (once the process group exists; `check` calls it in a world of one).
    Rank 0's record of the shards is the one every rank checks against; each rank checksums its share of the recorded
    bytes (`shares_by_bytes`, as checkpoint verification) with `readers` threads, and every rank raises the same one-line
    DamagedReferenceCacheError naming the first damaged shard. Costs one read of the cache, divided by the ranks."""
    rank, world_size = rank_and_world()
    records: dict[str, FileRecord] = broadcast_from_rank0(cache.records if rank == 0 else None)
    share = shares_by_bytes({name: record.size for name, record in records.items()}, world_size)[rank]
    found = gather_objects(payload_problems(cache.directory, {name: records[name] for name in share}, readers))
    problems = sorted(problem for problems in found for problem in problems)
    if problems:
        raise _damaged(cache.directory, describe(problems))
