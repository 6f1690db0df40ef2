"""task=chat in a real terminal (tmux): streamed replies, history, /clear and /exit."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from internlm.components.tokenizer.chat_template import stop_ids
from internlm.components.tokenizer.chat_template import encode_chat_prompt
from internlm.inference import load_engine
from internlm.inference.chat_api import history_messages

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (apt-get install -y tmux)")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """An hf: export of a small random model (its replies vary from turn to turn, unlike a model
    trained for a few steps), so the screen shows whether history was kept or cleared."""
    import torch

    from internlm import paths
    from internlm.components.model.attention import AttentionConfig
    from internlm.components.model.mlp import MLPConfig
    from internlm.components.model.rotary import RotaryConfig
    from internlm.components.model.transformer import Transformer, TransformerConfig
    from internlm.interop import export_hf

    torch.manual_seed(0)
    config = TransformerConfig(vocab_size=4096, hidden_size=64, num_layers=2, init_std=0.2,
                               attention=AttentionConfig(num_heads=4, rotary=RotaryConfig(max_position=512)),
                               mlp=MLPConfig(intermediate_size=96))
    out = tmp_path_factory.mktemp("chat") / "random-chat-hf"
    return export_hf(Transformer(config).state_dict(), config, out, tokenizer_model=paths.BUNDLED_TOKENIZER,
                     dtype=torch.float32)


class Terminal:
    def __init__(self, name: str, command: list[str], cwd: Path):
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "200", "-y", "50", "-c", str(cwd),
                        " ".join(command)], check=True)

    def screen(self) -> str:
        out = subprocess.run(["tmux", "capture-pane", "-p", "-J", "-S", "-200", "-t", self.name],
                             capture_output=True, text=True)
        return out.stdout

    def type(self, line: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, "-l", line], check=True)
        subprocess.run(["tmux", "send-keys", "-t", self.name, "Enter"], check=True)

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if predicate(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"terminal never showed what was expected:\n{self.screen()}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name], capture_output=True).returncode == 0

    def kill(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def expected_reply(model, tokenizer, query, history, max_new_tokens):
    """The greedy reply, from the model's plain forward (no cache)."""
    import torch

    ids = encode_chat_prompt(tokenizer, history_messages(query, history))
    stops = set(stop_ids(tokenizer))
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(torch.tensor([ids + new]))[0, -1].argmax())
            if token in stops:
                break
            new.append(token)
    return tokenizer.decode(new)


def test_terminal_chat_streams_keeps_history_clears_and_exits(exported, tmp_path):
    log = tmp_path / "screen.log"
    command = [sys.executable, "-m", "internlm", "task=chat", f"checkpoint=hf:{exported}", "task.max_new_tokens=6",
               "task.temperature=0", "task.dtype=float64", f"hydra.run.dir={tmp_path}/run", f"| tee {log}; sleep 30"]
    terminal = Terminal(f"chat-{tmp_path.name}", command, Path.cwd())
    try:
        terminal.wait_for(lambda s: "/exit quits." in s and s.rstrip().endswith("User:"), timeout=120)
        with load_engine(f"hf:{exported}", device="cpu", dtype="float64") as engine:
            model, tokenizer = engine.model, engine.tokenizer
            first = expected_reply(model, tokenizer, "hello", [], 6)
            second = expected_reply(model, tokenizer, "again", [("hello", first)], 6)
            fresh = expected_reply(model, tokenizer, "again", [], 6)
        assert second != fresh  # the history changes the reply, so the screen shows whether it was kept

        for count, line in enumerate(["hello", "again", "/clear", "again"], start=2):
            terminal.type(line)
            terminal.wait_for(lambda s: log.is_file() and log.read_text().count("User: ") >= count)
        terminal.type("/exit")
        terminal.wait_for(lambda s: not _running(terminal), timeout=30)
        chunks = log.read_text().split("User: ")[1:]
        # stdout only (the typed lines are the terminal's echo): "Bot: <reply>\n" per turn.
        assert chunks == [f"Bot: {first}\n", f"Bot: {second}\n", "(history cleared)\n", f"Bot: {fresh}\n", ""], terminal.screen()
    finally:
        terminal.kill()


def _running(terminal: Terminal) -> bool:
    """True while the chat process runs (the pane's command is python, not the trailing sleep)."""
    out = subprocess.run(["tmux", "display-message", "-p", "-t", terminal.name, "#{pane_current_command}"],
                         capture_output=True, text=True).stdout
    return "python" in out
