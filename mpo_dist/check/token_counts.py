"""Token statistics of the encoded examples and how many sequences truncation cuts, counted while encoding once.

`CountingEncoder` is the run's ChatEncoder (same template, same truncation policy, docs/data.md) that also remembers, per
sequence, the tokens before truncation: the tokeniser output it already computes. So `train` and `check` see the same
examples and the count costs no second tokenisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from mpo_dist.data.tokenize import ChatEncoder, EncodedSequence


@dataclass
class TokenCounts:
    kept: list[int] = field(default_factory=list)  # tokens per encoded sequence (prompt + response, after truncation)
    full: list[int] = field(default_factory=list)  # the same before truncation

    @property
    def truncated(self) -> int:
        return sum(kept < full for kept, full in zip(self.kept, self.full))

    def describe(self) -> str:
        if not self.kept:
            return "no sequences"
        return (f"{len(self.kept)} sequences, tokens min {min(self.kept)} / median {median(self.kept):g} / "
                f"max {max(self.kept)}; {self.truncated} truncated ({100 * self.truncated / len(self.kept):.1f} %)")


class CountingEncoder(ChatEncoder):
    """ChatEncoder whose every `encode` adds the kept and untruncated token counts of its sequence to `counts`."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.counts = TokenCounts()
        self._tokenised: list[int] = []

    def _ids(self, text: str) -> list[int]:
        ids = super()._ids(text)
        self._tokenised.append(len(ids))
        return ids

    def encode(self, prompt: str, response: str) -> EncodedSequence:
        self._tokenised = []  # encode tokenises the rendered prompt, then the response: their sum is the full length
        encoded = super().encode(prompt, response)
        self.counts.kept.append(len(encoded.input_ids))
        self.counts.full.append(sum(self._tokenised))
        return encoded
