"""SFT: loss on exactly the assistant tokens, whole chats per row; preference pairs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from internlm import registry
from internlm.batch import IGNORE_INDEX
from internlm.components.data.preference import read_preference_pairs
from internlm.components.data.sft import SFTData, SFTDataConfig
from internlm.errors import ConfigError

CHATS = [
    [{"role": "user", "content": "the king"}, {"role": "assistant", "content": "love 春 花"}],
    [
        {"role": "system", "content": "moon"},
        {"role": "user", "content": "night day"},
        {"role": "assistant", "content": "sword crown"},
        {"role": "user", "content": "river"},
        {"role": "assistant", "content": "月 夜 heart"},
    ],
    [{"role": "user", "content": "blood"}, {"role": "assistant", "content": "the queen"}],
]


def write_chats(path, chats):
    path.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in chats), encoding="utf-8")
    return path


def make(tokenizer, paths, **fields) -> SFTData:
    return registry.build(
        SFTDataConfig(paths=[str(p) for p in paths], **{"seq_len": 64, "global_batch_size": 2, **fields}), tokenizer
    )


def spans(ids, keep):
    """Contiguous runs of ids where keep is True."""
    runs, current = [], []
    for token, flag in zip(ids, keep):
        if flag:
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    return runs + ([current] if current else [])


def test_loss_on_exactly_the_assistant_replies(tmp_path, tokenizer):
    data = make(tokenizer, [write_chats(tmp_path / "c.jsonl", CHATS)])
    assert registry.get("data", "sft").cls is SFTData
    rows = data.train_rows.get(np.arange(len(data.train_rows)))
    learned = [
        tokenizer.decode(run) for row in rows.labels.tolist() for run in spans(row, [x != IGNORE_INDEX for x in row])
    ]
    replies = [m["content"] + "<eoa>" for chat in CHATS for m in chat if m["role"] == "assistant"]
    assert learned == replies  # nothing of the prompts, markers or padding, all of every reply


def test_whole_chats_per_row_positions_restart(tmp_path, tokenizer):
    from internlm.components.tokenizer.chat_template import encode_chat

    lengths = [len(encode_chat(tokenizer, c)[0]) for c in CHATS]
    seq = max(lengths) + 2  # chats 0 and 1 cannot share a row with room to spare, so padding appears
    data = make(tokenizer, [write_chats(tmp_path / "c.jsonl", CHATS)], seq_len=seq)
    rows = data.train_rows.get(np.arange(len(data.train_rows)))
    starts = [(row == 0).nonzero()[0].tolist() for row in rows.position_ids]
    for row_starts, row in zip(starts, rows.input_ids):
        assert row_starts[0] == 0 and row[0] == tokenizer.bos_id  # every row begins a chat
    chat_starts = [p for row, s in zip(rows.input_ids, starts) for p in s if row[p] == tokenizer.bos_id]
    assert len(chat_starts) == len(CHATS)  # no chat split across rows


def test_long_chats_are_cut_and_counted(tmp_path, tokenizer):
    data = make(tokenizer, [write_chats(tmp_path / "c.jsonl", CHATS)], seq_len=8)
    assert data.truncated >= 2


def test_bad_chat_records(tmp_path, tokenizer):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"messages": c}) for c in CHATS]
    lines.insert(1, json.dumps({"messages": [{"role": "robot", "content": "x"}]}))
    lines.insert(2, json.dumps({"messages": [{"role": "user", "content": "only a question"}]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"c\.jsonl:2: bad_messages"):
        make(tokenizer, [path])
    data = make(tokenizer, [path], on_error="skip")
    assert len(data.train_rows) > 0


def test_preference_pairs_share_the_prompt(tmp_path, tokenizer):
    path = tmp_path / "p.jsonl"
    records = [
        {"prompt": "the king", "chosen": "love 春", "rejected": "blood"},
        {
            "prompt": [{"role": "system", "content": "moon"}, {"role": "user", "content": "night"}],
            "chosen": "day",
            "rejected": "river",
        },
        {"prompt": "x", "chosen": "same", "rejected": "same"},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"p\.jsonl:3: no_preference"):
        read_preference_pairs([str(path)], tokenizer)
    pairs = read_preference_pairs([str(path)], tokenizer, on_error="skip")
    assert len(pairs) == 2
    first = pairs[0]
    assert tokenizer.decode(first.chosen_ids[first.chosen_mask].tolist()) == "love 春<eoa>"
    assert tokenizer.decode(first.rejected_ids[first.rejected_mask].tolist()) == "blood<eoa>"
    prompt_len = int(np.argmax(first.chosen_mask))
    assert first.chosen_ids[:prompt_len].tolist() == first.rejected_ids[:prompt_len].tolist()
