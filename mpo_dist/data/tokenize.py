"""Chat-template tokenisation with a prompt/response split, so labels can mask the prompt exactly.

Truncation policy (documented in docs/data.md): the prompt keeps its LAST `max_prompt_length` tokens (the end of the
question and the assistant header matter most for the response), then the response keeps its FIRST
`max_length - prompt_tokens` tokens. Since max_prompt_length < max_length, every response keeps at least one token.
"""
from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


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

    def _messages(self, prompt: str) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return messages + [{"role": "user", "content": prompt}]

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt rendered with the generation header, truncated from the left."""
        text = self.tokenizer.apply_chat_template(self._messages(prompt), tokenize=False, add_generation_prompt=True)
        return self._ids(text)[-self.max_prompt_length:]

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
