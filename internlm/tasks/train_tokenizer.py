"""Train a sentencepiece tokenizer with InternLM's settings from text or JSONL files."""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path

from internlm.components.tokenizer.train import train_sentencepiece
from internlm.errors import ConfigError
from internlm.paths import CORPUS_DIR
from internlm.registry import register
from internlm.tasks.base import RunContext, Task


@dataclass
class TrainTokenizerConfig:
    input: list[str] = field(default_factory=lambda: [str(CORPUS_DIR / "*.jsonl")])  # globs of .txt / .jsonl files
    output: str = "tokenizer.model"  # where the model goes; relative paths land in the run folder
    vocab_size: int = 4096  # pieces, including the byte fallbacks and the chat markers
    character_coverage: float = 0.9995  # share of the characters kept as pieces (rarer ones become bytes); in (0, 1]


@register("task", "train_tokenizer", TrainTokenizerConfig)
class TrainTokenizer(Task):
    """`python -m internlm task=train_tokenizer task.input='[data/*.jsonl]' task.vocab_size=32000`."""

    needs_tokenizer = False

    def files(self) -> list[Path]:
        found = sorted({Path(p) for pattern in self.config.input for p in glob.glob(str(Path(pattern).expanduser()))})
        if not found:
            raise ConfigError(
                f"no files match {list(self.config.input)}", where="task.input", fix="give globs of existing .txt/.jsonl files"
            )
        return found

    def run(self, ctx: RunContext) -> Path:
        coverage = self.config.character_coverage
        if not 0 < coverage <= 1:
            raise ConfigError(f"character_coverage={coverage} must be in (0, 1]", where="task.character_coverage", fix="e.g. 0.9995")
        output = Path(self.config.output)
        output = output if output.is_absolute() else ctx.run_dir / output
        try:
            train_sentencepiece(self.files(), output, self.config.vocab_size, character_coverage=coverage)
        except ConfigError as exc:  # the trainer's advice, in the fields of this task
            if exc.fix and "vocab_size" in exc.fix:
                exc.where = "task.vocab_size"
                exc.fix = exc.fix.replace("set vocab_size", "set task.vocab_size").replace(
                    "lower character_coverage", "lower task.character_coverage"
                )
                exc.args = (exc.render(),)
            raise
        print(f"tokenizer written to {output} (use it with tokenizer.path={output})")
        return output
