"""What a checkpoint records of its training data, so a resume notices when the data changed under it.

The sampler's position (epoch, samples consumed) means something only for the examples it indexed: with the rows
reordered, chosen and rejected swapped, or one language added, the same position trains other examples, repeats some
and skips others, silently. So a save records a digest of the examples in the sampler's order (their ids and token ids:
what the loss sees) and each training file's content hash (to name the file that changed); a resume with other
examples is refused unless `data.allow_changed` is set. See docs/checkpoints.md, "A resume proves its data".
"""
from __future__ import annotations

import hashlib
from array import array

from mpo_dist.config import Config
from mpo_dist.data.examples import PreferenceExample
from mpo_dist.data.loading import resolve_path
from mpo_dist.data.tokenize import EncodedSequence
from mpo_dist.errors import UserError
from mpo_dist.fingerprint import data_digest


class ChangedDataError(UserError):
    """The training examples differ from the ones the checkpoint was trained on."""


def _update(digest: "hashlib._Hash", sequence: EncodedSequence | None) -> None:
    if sequence is None:
        digest.update(b"-")
        return
    digest.update(f"{sequence.prompt_length}:{len(sequence.input_ids)}:".encode())
    digest.update(array("q", sequence.input_ids).tobytes())


def examples_digest(examples: list[PreferenceExample]) -> str:
    """SHA-256 over every example in order: its id and language, chosen, rejected, anchors and MLC prompts."""
    digest = hashlib.sha256()
    for example in examples:
        digest.update(f"{example.example_id}\0{example.language}\0".encode())
        for sequence in (example.chosen, example.rejected, example.anchor_chosen, example.anchor_rejected):
            _update(digest, sequence)
        for prompt in example.mlc_prompts:
            digest.update(f"{len(prompt)}:".encode() + array("q", prompt).tobytes())
    return digest.hexdigest()


def data_identity(config: Config, examples: list[PreferenceExample]) -> dict:
    """The record a save stores in its client state."""
    return {"examples_sha256": examples_digest(examples), "count": len(examples),
            "files": {f.path: data_digest(resolve_path(f.path)) for f in config.data.train_files}}


def changed_data(stored: dict | None, current: dict) -> str | None:
    """Why the examples differ from the stored record (one sentence naming the files), or None when they are the same
    or the checkpoint predates the record."""
    if stored is None or stored.get("examples_sha256") == current["examples_sha256"]:
        return None
    files = current["files"]
    changed = [path for path, digest in files.items() if stored.get("files", {}).get(path) != digest]
    gone = [path for path in stored.get("files", {}) if path not in files]
    if changed or gone:
        what = "; ".join([f"{path} changed" if path in stored.get("files", {}) else f"{path} is new"
                          for path in changed] + [f"{path} is no longer a training file" for path in gone])
    else:
        what = "the files are the same but they encode to other examples (tokenizer or data.* settings changed)"
    return (f"the training data differs from what the checkpoint was trained on ({what}; {stored.get('count')} "
            f"examples then, {current['count']} now)")
