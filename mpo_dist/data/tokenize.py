"""Chat-template tokenisation with a prompt/response split, so labels can mask the prompt exactly.

Truncation policy (documented in docs/data.md): a rendered prompt longer than `max_prompt_length` tokens keeps the
template's frame whole (BOS, system message, the user header, the end of the user turn and the assistant header: what
the model was trained to see around every question) and keeps the LAST tokens of the user's text that fit between (the
question usually ends a long jailbreak prompt). Then the response keeps its FIRST `max_length - prompt_tokens` tokens.
Since max_prompt_length < max_length, every response keeps at least one token.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from mpo_dist.errors import UserError

# Stands in for the user's text when the template is rendered once to find the frame around it: plain letters, so no
# template filter (trim, escaping) changes it, and no real prompt contains it.
USER_TEXT_MARKER = "MPODISTUSERTEXTMARKER"


@dataclass(frozen=True)
class EncodedSequence:
    """Token ids of prompt + response; tokens before `prompt_length` belong to the prompt and never get a label."""

    input_ids: tuple[int, ...]
    prompt_length: int

    @property
    def response_length(self) -> int:
        return len(self.input_ids) - self.prompt_length


class ChatEncoder:
    """Renders (prompt, response) with the tokenizer's chat template and tokenises it with the split position known."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int, max_prompt_length: int, system_prompt: str = ""):
        if tokenizer.chat_template is None:
            raise ValueError("the tokenizer has no chat template; set one in its tokenizer_config.json / chat_template.jinja")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_prompt_length = max_prompt_length
        self.system_prompt = system_prompt
        self._frame: tuple[list[int], list[int]] | None = None  # token ids before and after the user's text

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _piece_ids(self, text: str) -> list[int]:
        """Token ids of a piece of a prompt. Kept apart from `_ids`, which sees each whole rendered prompt and response
        once (mpo_dist.check.token_counts counts untruncated lengths through it)."""
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def frame_ids(self) -> tuple[list[int], list[int]]:
        """Token ids the template puts before and after the user's text (with the system prompt and generation header)."""
        if self._frame is None:
            text = self.tokenizer.apply_chat_template(self._messages(USER_TEXT_MARKER), tokenize=False,
                                                      add_generation_prompt=True)
            parts = text.split(USER_TEXT_MARKER)
            if len(parts) != 2:
                raise UserError("the tokenizer's chat template does not place the user message in the prompt verbatim "
                                f"(it appears {len(parts) - 1} times), so a prompt over max_prompt_length tokens cannot "
                                "be shortened inside its frame; use a template that renders the message content as is")
            self._frame = self._piece_ids(parts[0]), self._piece_ids(parts[1])
        return self._frame

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt rendered with the generation header; over max_prompt_length tokens, the frame stays whole and the
        user's text loses its start (see the module docstring)."""
        text = self.tokenizer.apply_chat_template(self._messages(prompt), tokenize=False, add_generation_prompt=True)
        ids = self._ids(text)
        if len(ids) <= self.max_prompt_length:
            return ids
        head, tail = self.frame_ids()
        room = self.max_prompt_length - len(head) - len(tail)
        if room < 1:
            raise UserError(f"max_prompt_length {self.max_prompt_length} (data.max_prompt_length; eval: --max-prompt-length) "
                            f"leaves no room for the user's text: the chat template's frame (BOS, system prompt, headers) "
                            f"alone takes {len(head) + len(tail)} tokens; raise it or shorten data.system_prompt")
        return head + self._piece_ids(prompt)[-room:] + tail

    def response_text(self, prompt: str, response: str) -> str:
        """What the template appends after the generation header for this response (end-of-turn tokens included)."""
        messages = self._messages(prompt)
        prompt_text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full_text = self.tokenizer.apply_chat_template(
            messages + [{"role": "assistant", "content": response}], tokenize=False, add_generation_prompt=False
        )
        if full_text.startswith(prompt_text):
            return full_text[len(prompt_text):]
        return response + (self.tokenizer.eos_token or "")

    def encode(self, prompt: str, response: str) -> EncodedSequence:
        prompt_ids = self.prompt_ids(prompt)
        response_ids = self._ids(self.response_text(prompt, response))[: self.max_length - len(prompt_ids)]
        if not response_ids:
            raise ValueError(f"response tokenised to nothing: {response!r}")
        return EncodedSequence(tuple(prompt_ids + response_ids), len(prompt_ids))
