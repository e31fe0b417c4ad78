"""What a checkpoint tag directory holds, and how to tell an intact one from a damaged one.

A tag (`<output_dir>/checkpoints/step_XXXXXXXX`) counts once its COMPLETE marker exists. The marker is a JSON record
of every file of the tag with its size and CRC-32 (the file record of mpo_dist/artefact.py, which every stored
artefact uses), written last (atomically) by the save; `verify` compares the files with it, so a shard truncated or corrupted after the save (a half-copied directory, a failing disk, a parallel file
system that lost a stripe) is found before DeepSpeed reads it. Markers of checkpoints written before the record
existed hold only the step; such tags get a structural check (every rank's model states beside its optimizer shard,
every .pt file ends in a readable zip directory, which a truncation removes).

This is the engine layer's module so that the trainer (train/checkpoint.py) and the offline tools (export,
convert-universal) share it without an engine -> train import. See docs/checkpoints.md.
"""
from __future__ import annotations

import json
import logging
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path

from mpo_dist.artefact import CHECKSUM, FileRecord, file_crc32, payload_problems
from mpo_dist.atomic_write import atomic_write_text
from mpo_dist.errors import UserError

log = logging.getLogger("mpo_dist")

COMPLETE_MARKER = "COMPLETE"
LATEST_FILE = "latest"
TAG_PREFIX = "step_"
UNIVERSAL_OPTIMIZER_STATE = Path("zero") / "optimizer_state.pt"
MARKER_FORMAT = 1
# DeepSpeed names a rank's files zero_pp_rank_<r>_mp_rank_00_{model,optim}_states.pt (optionally bf16_-prefixed);
# the trainer adds rng_rank<r>.pt.
RANK_IN_NAME = re.compile(r"(?:pp_rank_|rng_rank)(\d+)")
MODEL_STATES = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_model_states\.pt$")
OPTIM_STATES = re.compile(r"zero_pp_rank_(\d+)_mp_rank_\d+_optim_states\.pt$")


class CheckpointError(UserError):
    """A path is not a usable mpo-dist checkpoint; the message says what is wrong and what was expected."""


@dataclass(frozen=True)
class Marker:
    step: int
    files: dict[str, FileRecord] | None  # None: written before integrity records existed


@dataclass(frozen=True)
class TagCheck:
    problems: list[str]  # empty when the tag is intact
    recorded: bool  # False: a marker without a file record, so only the structure could be checked


def tag_for(step: int) -> str:
    return f"{TAG_PREFIX}{step:08d}"


def step_of(tag: str) -> int:
    return int(tag.split("_")[-1])


def tag_dirs(root: Path) -> list[Path]:
    """The step_XXXXXXXX directories under root, oldest first (complete or not)."""
    if not root.is_dir():
        return []
    tags = [d for d in root.iterdir() if d.is_dir() and re.fullmatch(rf"{TAG_PREFIX}\d+", d.name)]
    return sorted(tags, key=lambda d: step_of(d.name))


def is_complete(tag_dir: Path) -> bool:
    return (tag_dir / COMPLETE_MARKER).is_file()


def is_universal(tag_dir: Path) -> bool:
    return (tag_dir / UNIVERSAL_OPTIMIZER_STATE).is_file()


def looks_like_tag(tag_dir: Path) -> bool:
    """Holds what a save writes (DeepSpeed model states or a universal optimizer state), complete or not."""
    return is_universal(tag_dir) or any(MODEL_STATES.search(p.name) for p in tag_dir.glob("*_model_states.pt"))


def tag_files(tag_dir: Path) -> list[str]:
    """Every file of the tag relative to it (posix), sorted, except the marker and atomic-write temporaries."""
    names = []
    for path in tag_dir.rglob("*"):
        if path.is_file() and path.name != COMPLETE_MARKER and not path.name.startswith("."):
            names.append(path.relative_to(tag_dir).as_posix())
    return sorted(names)


def owner_rank(name: str) -> int:
    """The data-parallel rank that wrote a file (from its name); files of no rank belong to rank 0."""
    match = RANK_IN_NAME.search(Path(name).name)
    return int(match.group(1)) if match else 0


def record_files(tag_dir: Path, names: list[str]) -> dict[str, FileRecord]:
    """Size and CRC-32 of each file a save wrote, each fsynced as it is read: once recorded, a file is on the disk."""
    records = {}
    for name in names:
        path = tag_dir / name
        records[name] = FileRecord(path.stat().st_size, file_crc32(path, fsync=True))
    return records


def write_marker(tag_dir: Path, step: int, files: dict[str, FileRecord]) -> None:
    """Written last, atomically and durably (after every rank fsynced its files): a marker that exists is whole, and
    so is what it records."""
    payload = {"format": MARKER_FORMAT, "step": step, "checksum": CHECKSUM,
               "files": {name: record.to_json() for name, record in sorted(files.items())}}
    atomic_write_text(tag_dir / COMPLETE_MARKER, json.dumps(payload, indent=1) + "\n")


def shares_by_bytes(sizes: dict[str, int], world_size: int) -> list[list[str]]:
    """The files split among `world_size` readers so that each reads about as many bytes: largest file first, each to
    the reader with the fewest bytes so far (ties: the lower rank). Every rank computes the same split from the same
    record. Splitting by name instead gave some ranks twice the bytes of others (fp32 runs: rank 0 also holds the
    small files)."""
    shares: list[list[str]] = [[] for _ in range(world_size)]
    loads = [0] * world_size
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        reader = min(range(world_size), key=lambda r: (loads[r], r))
        shares[reader].append(name)
        loads[reader] += sizes[name]
    return [sorted(share) for share in shares]


def saved_world_size(marker: Marker, tag_dir: Path) -> int | None:
    """How many data-parallel ranks wrote a sharded tag (its optimizer shards); None for a universal one, which loads
    at any world size."""
    names = list(marker.files) if marker.files is not None else tag_files(tag_dir)
    if UNIVERSAL_OPTIMIZER_STATE.as_posix() in names:
        return None
    return len({int(m.group(1)) for n in names if (m := OPTIM_STATES.search(n))}) or None


def read_marker(tag_dir: Path) -> Marker:
    try:
        text = (tag_dir / COMPLETE_MARKER).read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{tag_dir / COMPLETE_MARKER} cannot be read ({error}); the tag cannot be verified") from error
    if re.fullmatch(r"\d+\s*", text):  # the marker of checkpoints written before the file record
        return Marker(int(text), None)
    try:
        payload = json.loads(text)
        files = {name: FileRecord.from_json(entry) for name, entry in payload["files"].items()}
        return Marker(int(payload["step"]), files)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(f"{tag_dir / COMPLETE_MARKER} is not a valid marker ({error}); the tag cannot be "
                              "verified") from error


def marker_or_problem(tag_dir: Path) -> Marker | str:
    """The tag's marker, or the one-line reason there is no usable one (not fully written, unreadable, invalid)."""
    if not is_complete(tag_dir):
        return f"no {COMPLETE_MARKER} marker: it was not fully written (crash or preemption during the save)"
    try:
        return read_marker(tag_dir)
    except CheckpointError as error:
        return str(error)


def verify(tag_dir: Path, *, rank: int = 0, world_size: int = 1, readers: int = 1,
           marker: Marker | None = None) -> TagCheck:
    """Compare this rank's share of the tag's files (`shares_by_bytes` of the recorded sizes) with the marker's record,
    reading with `readers` threads (zlib releases the GIL while it checksums). `marker`: the record as rank 0 read it,
    so that every rank checks against the same one. Problems are one-line sentences naming the file, in name order.
    A tag without a marker is reported as not fully written."""
    if marker is None:
        marker = marker_or_problem(tag_dir)
        if isinstance(marker, str):
            return TagCheck([marker], recorded=False)
    if marker.files is None:
        names = tag_files(tag_dir)
        problems = structure_problems(names) if rank == 0 else []
        return TagCheck(problems + _unreadable_zips(tag_dir, names[rank::world_size]), recorded=False)
    share = shares_by_bytes({name: record.size for name, record in marker.files.items()}, world_size)[rank]
    return TagCheck(payload_problems(tag_dir, {name: marker.files[name] for name in share}, readers), recorded=True)


def warn_unrecorded(tag_dir: Path) -> None:
    """A marker from before file records: its sizes and checksums are unknown, so only the tag's structure was checked."""
    log.warning("checkpoint %s was written before checkpoints recorded their files: only its structure was checked",
                tag_dir)


def structure_problems(names: list[str]) -> list[str]:
    """A sharded tag needs, for every rank, its model states and its optimizer shard (a universal one needs neither)."""
    if UNIVERSAL_OPTIMIZER_STATE.as_posix() in names:
        return []
    model_ranks = {int(m.group(1)) for n in names if (m := MODEL_STATES.search(n))}
    optim_ranks = {int(m.group(1)) for n in names if (m := OPTIM_STATES.search(n))}
    if not model_ranks:
        return ["no DeepSpeed zero_pp_rank_<r>_mp_rank_00_model_states.pt files"]
    problems = [f"zero_pp_rank_{r}_mp_rank_00_optim_states.pt (the optimizer shard of rank {r}) is missing"
                for r in sorted(model_ranks - optim_ranks)]
    problems += [f"zero_pp_rank_{r}_mp_rank_00_model_states.pt (the model states of rank {r}) is missing"
                 for r in sorted(optim_ranks - model_ranks)]
    return problems


def _unreadable_zips(tag_dir: Path, names: list[str]) -> list[str]:
    """torch.save writes zip archives whose directory sits at the end of the file: a truncated one has none."""
    return [f"{name} is not a readable torch file (truncated or corrupted)"
            for name in names if name.endswith(".pt") and not zipfile.is_zipfile(tag_dir / name)]


def describe(problems: list[str]) -> str:
    """The first problem, and how many more there are: one line for a log or an error."""
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return problems[0] + more
