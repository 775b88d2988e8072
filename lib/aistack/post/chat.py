"""Chat records -> token ids and a loss mask on the assistant's tokens.

A record is `{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}`, or
one of NeMo's SFT formats (nemo/collections/llm/gpt/data/core.py, NeMo 2.7), read as messages:

    {"input": str, "output": str}                         one user turn, one assistant turn
    {"system": str, "conversations": [{"from": "User"|"Assistant", "value": str}, ...]}

It is rendered with a Jinja chat template, the Hugging Face convention: the tokenizer's own
(`chat_template` in the tokenizer_config.json next to its tokenizer.json) when it has one,
else DEFAULT_TEMPLATE:

    <|system|>\\n{content}<|end|><|user|>\\n{content}<|end|><|assistant|>\\n{content}<|end|>

(`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>` must be special tokens of the tokenizer.)

Masking works for any template: each assistant turn's character span is the text between
the rendering of the conversation before it (with the generation prompt) and the rendering
up to and including it; a token is trained on when it overlaps such a span (a BPE token may
straddle the boundary, e.g. the space closing a generation prompt merged with the answer's
first letter: the model must produce it). So the model learns the answer and the end-of-turn
token that stops generation, never a token that lies wholly in the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROLES = ("system", "user", "assistant")
DEFAULT_SPECIAL_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|end|>")
END_OF_TURN = "<|end|>"
DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


class ChatFormatError(ValueError):
    pass


@dataclass
class ChatTokenizer:
    """A tokenizers.Tokenizer plus the chat template that goes with it."""

    tokenizer: Any  # tokenizers.Tokenizer
    template_source: str
    template_name: str  # "tokenizer" or "default"
    path: str
    eos_token: str | None = None
    bos_token: str | None = None

    def __post_init__(self) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # A sandbox, as transformers uses: a template from a tokenizer file is data, not code.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
        env.globals["raise_exception"] = _raise
        self._template = env.from_string(self.template_source)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def token_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    @property
    def end_of_turn_id(self) -> int:
        """The token that ends an assistant turn: generation stops on it."""
        for token in (END_OF_TURN, self.eos_token, "<|eot_id|>", "<|im_end|>", "</s>", "<|endoftext|>"):
            if token and self.token_id(token) is not None:
                return self.token_id(token)
        raise ChatFormatError(f"{self.path}: no end-of-turn token ({END_OF_TURN} or an eos token) in the vocabulary")

    @property
    def pad_id(self) -> int:
        for token in ("<|pad|>", "<pad>", self.eos_token, "<|endoftext|>", END_OF_TURN):
            if token and self.token_id(token) is not None:
                return self.token_id(token)
        return 0

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                     bos_token=self.bos_token or "", eos_token=self.eos_token or "")

    def encode_prompt(self, messages: list[dict]) -> list[int]:
        """Token ids of a conversation so far plus the assistant's generation prompt."""
        return self.tokenizer.encode(self.render(messages, add_generation_prompt=True), add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_chat(self, messages: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """(ids int32, mask bool): mask[i] is True where token i belongs to an assistant turn."""
        validate_messages(messages)
        full = self.render(messages)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True) if i else self.render([], add_generation_prompt=True)
            upto = self.render(messages[: i + 1])
            if not (full.startswith(upto) and upto.startswith(before)):
                raise ChatFormatError(
                    f"chat template ({self.template_name}) of {self.path} does not render conversations prefix by prefix: "
                    "cannot find the assistant turns to train on"
                )
            spans.append((len(before), len(upto)))
        encoding = self.tokenizer.encode(full, add_special_tokens=False)
        ids = np.asarray(encoding.ids, dtype=np.int32)
        starts = np.asarray([o[0] for o in encoding.offsets], dtype=np.int64)
        ends = np.asarray([o[1] for o in encoding.offsets], dtype=np.int64)
        mask = np.zeros(len(ids), dtype=bool)
        for lo, hi in spans:
            mask |= (ends > lo) & (starts < hi)
        return ids, mask


def _raise(message: str):
    raise ChatFormatError(message)


# NeMo's speaker names (and ShareGPT's, which NeMo chat data often comes from) -> roles.
_SPEAKERS = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}


def record_messages(record: dict, where: str = "record") -> list[dict]:
    """The conversation of one record, in whichever format it comes (see the module doc)."""
    if "messages" in record:
        messages = record["messages"]
    elif "conversations" in record:
        turns = record["conversations"]
        if not isinstance(turns, list) or not turns:
            raise ChatFormatError(f"{where}: 'conversations' must be a non-empty list of {{from, value}}")
        messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
        for i, turn in enumerate(turns):
            speaker = turn.get("from") if isinstance(turn, dict) else None
            role = _SPEAKERS.get(speaker.lower()) if isinstance(speaker, str) else None
            if role is None or not isinstance(turn.get("value"), str):
                raise ChatFormatError(f"{where}: conversations[{i}] = {turn!r}: expected {{'from': User or Assistant "
                                      f"(or {', '.join(sorted(_SPEAKERS))}), 'value': str}}")
            messages.append({"role": role, "content": turn["value"]})
    elif "input" in record and "output" in record:
        messages = [{"role": "user", "content": record["input"]}, {"role": "assistant", "content": record["output"]}]
    else:
        keys = sorted(k for k in record if not k.startswith("_"))
        raise ChatFormatError(f"{where}: no conversation: expected 'messages', NeMo's 'conversations', or 'input' and "
                              f"'output' (keys: {keys})")
    validate_messages(messages, where)
    return messages


def validate_messages(messages: Any, where: str = "record") -> None:
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ChatFormatError(f"{where}: messages[{i}] = {m!r}: expected {{'role': one of {ROLES}, 'content': str}}")


def load_chat_tokenizer(path: str | Path, template: str = "auto") -> ChatTokenizer:
    """`path`: a tokenizer.json or a folder holding one (and maybe tokenizer_config.json).
    template: auto (the tokenizer's own if it has one, else the default), tokenizer, default."""
    from tokenizers import Tokenizer

    path = Path(path)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"tokenizer: {file} not found (give a tokenizer.json or a folder holding one)")
    config_file = file.parent / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    own = config.get("chat_template")
    if isinstance(own, list):  # transformers' named templates: [{"name": "default", "template": ...}]
        own = next((t["template"] for t in own if t.get("name") == "default"), None)
    tok = Tokenizer.from_file(str(file))
    if template == "tokenizer" and not own:
        raise ChatFormatError(f"{config_file}: no chat_template (data.chat_template=tokenizer)")
    use_own = bool(own) and template in ("auto", "tokenizer")
    chat = ChatTokenizer(tok, own if use_own else DEFAULT_TEMPLATE, "tokenizer" if use_own else "default", str(file),
                         eos_token=_token_str(config.get("eos_token")), bos_token=_token_str(config.get("bos_token")))
    if not use_own:
        missing = [t for t in DEFAULT_SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:
            raise ChatFormatError(
                f"{file}: the default chat template needs the special tokens {missing}; add them to the tokenizer "
                "(tokenizers: add_special_tokens) or give a tokenizer with its own chat_template"
            )
    return chat


def _token_str(value: Any) -> str | None:
    if isinstance(value, dict):  # transformers' AddedToken serialisation
        return value.get("content")
    return value
