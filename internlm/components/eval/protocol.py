"""The only thing evaluators know about a model: score strings, generate strings, render chats.

Implemented over our Transformer and over Hugging Face models by `internlm.inference.scoring`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, Sequence


class Loglikelihood(NamedTuple):
    logprob: float  # summed log-probability of the continuation's tokens
    is_greedy: bool  # every continuation token was the argmax
    tokens: int  # how many tokens were scored


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    max_new_tokens: int = 256
    stop: tuple[str, ...] = ()  # the text is cut before the first of these
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0  # sampling seed (sample i of a problem uses seed + i)


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


class LanguageModel(Protocol):
    name: str

    def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[Loglikelihood]:
        """log p(continuation | context) for each (context, continuation); an empty context
        scores the continuation from the start of a document."""
        ...

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[Loglikelihood]:
        """Every token of each text, however long (scored in windows)."""
        ...

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]: ...

    @property
    def has_chat_template(self) -> bool: ...

    def render_chat(self, messages: Sequence[dict[str, str]]) -> str:
        """The conversation as prompt text, ending where the assistant's answer begins."""
        ...


@dataclass
class Prompted:
    """What an evaluator asks of the model for one item (kept in the predictions file)."""

    prompt: str
    continuations: list[str] = field(default_factory=list)  # choice datasets: one per option
