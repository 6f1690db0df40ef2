"""A terminal chat: `python -m internlm task=chat checkpoint=<run, checkpoint or hf:dir>`.

Replies stream as they are generated; the conversation is kept as history until `/clear`;
`/exit` (or end of input) quits. Ctrl-C during a reply stops that reply only.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from internlm.components.tokenizer.chat_template import stop_ids
from internlm.errors import ConfigError
from internlm.inference import SamplingParams
from internlm.inference.chat_api import history_messages
from internlm.registry import register
from internlm.tasks.base import RunContext, Task
from internlm.tasks.generate import open_engine

BANNER = "Chat with {model}. /clear forgets the conversation, /exit quits."
USER_PROMPT = "User: "
BOT_PREFIX = "Bot: "


@dataclass
class ChatConfig:
    max_new_tokens: int = 1024  # longest reply (InternLM's default)
    temperature: float = 0.8  # 0 = greedy (InternLM's default 0.8)
    top_p: float = 0.8  # nucleus mass (InternLM's default 0.8)
    top_k: int = 0  # keep the k likeliest tokens (0 = off)
    repetition_penalty: float = 1.0  # > 1 discourages repeats (1 = off)
    seed: int | None = None  # sampling seed (null = different each run)
    system: str | None = None  # a system message put before the conversation
    device: str = "auto"  # auto (cuda if present) | cpu | cuda:N
    dtype: str = "auto"  # auto (bf16 on cuda, fp32 on cpu) | bf16 | fp16 | fp32


@register("task", "chat", ChatConfig)
class Chat(Task):
    """Read a line, stream the reply, keep the history."""

    needs_tokenizer = False  # the checkpoint's own tokenizer is used

    def run(self, ctx: RunContext, stdin: TextIO | None = None, stdout: TextIO | None = None) -> list[tuple[str, str]]:
        cfg = self.config
        base = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                              top_k=cfg.top_k, repetition_penalty=cfg.repetition_penalty, seed=cfg.seed).validate("task")
        with open_engine(ctx, "chat", cfg.device, cfg.dtype) as engine:
            params = SamplingParams(**{**base.__dict__, "stop_ids": tuple(stop_ids(engine.tokenizer))})
            return ChatSession(engine, params, cfg.system, stdin or sys.stdin, stdout or sys.stdout).loop()


class ChatSession:
    def __init__(self, engine, params: SamplingParams, system: str | None, stdin: TextIO, stdout: TextIO):
        self.engine, self.params, self.system = engine, params, system
        self.stdin, self.stdout = stdin, stdout
        self.history: list[tuple[str, str]] = []

    def say(self, text: str, end: str = "\n") -> None:
        self.stdout.write(text + end)
        self.stdout.flush()

    def loop(self) -> list[tuple[str, str]]:
        self.say(BANNER.format(model=self.engine.model_id))
        while True:
            self.say(USER_PROMPT, end="")
            line = self.stdin.readline()
            if not line:  # end of input
                self.say("")
                return self.history
            query = line.rstrip("\n")
            if query.strip() == "/exit":
                return self.history
            if query.strip() == "/clear":
                self.history = []
                self.say("(history cleared)")
                continue
            if not query.strip():
                continue
            self.reply(query)

    def reply(self, query: str) -> None:
        try:
            prompt = self.engine.render_chat(history_messages(query, self.history, self.system))
        except ConfigError as err:
            self.say(err.render())
            return
        if len(prompt) >= self.engine.max_context:
            self.say(f"(the conversation has {len(prompt)} tokens, over the {self.engine.max_context}-token context: /clear it)")
            return
        self.say(BOT_PREFIX, end="")
        response = ""
        try:
            for delta in self.engine.stream(prompt, self.params):
                response += delta.text
                self.stdout.write(delta.text)
                self.stdout.flush()
        except KeyboardInterrupt:
            self.say(" (stopped)", end="")
        self.say("")
        self.history.append((query, response))
