"""One tokenisation of a conversation everywhere (issue 13): training's encode_chat, the engine's
chat prompt and transformers' apply_chat_template on an export give the same ids."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from internlm.components.tokenizer.chat_template import encode_chat
from internlm.inference import load_engine

REPLIES = ["《静夜思》", "--Ay, my lord.", "床前明月光，疑是地上霜。", ":) fine", "  two spaces", "「引号」和‘单引号’",
           "...well", "1. first\n2. second", "emoji 🙂 龘", "", "-- 破折号开头", "，逗号开头"]
QUERIES = ["写一首诗", "Is it the king?", "--", "《静夜思》的作者是谁？", "hi\nthere", "？"]


def conversations():
    found = []
    for i, reply in enumerate(REPLIES):
        query = QUERIES[i % len(QUERIES)]
        found.append([{"role": "user", "content": query}, {"role": "assistant", "content": reply}])
        found.append([{"role": "system", "content": "你是一个助手。"}, {"role": "user", "content": reply or "?"},
                      {"role": "assistant", "content": query}, {"role": "user", "content": reply + query}])
    return found


@pytest.fixture(scope="module")
def hf_tokenizer(hf_export):
    return AutoTokenizer.from_pretrained(hf_export)


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_training_ids_equal_transformers_apply_chat_template(hf_tokenizer, tokenizer, add_generation_prompt):
    for messages in conversations():
        hf_ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
        hf_ids = hf_ids["input_ids"] if isinstance(hf_ids, dict) or hasattr(hf_ids, "keys") else hf_ids
        ours, mask = encode_chat(tokenizer, messages, add_generation_prompt=add_generation_prompt)
        assert ours == list(hf_ids), messages
        assert len(mask) == len(ours)


def test_the_engine_prompts_with_the_same_ids(hf_export, hf_tokenizer):
    with load_engine(f"hf:{hf_export}", device="cpu", max_batch=1) as engine:
        for messages in conversations():
            if messages[-1]["role"] != "user":
                messages = messages[:-1]
            hf_ids = hf_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            hf_ids = hf_ids["input_ids"] if hasattr(hf_ids, "keys") else hf_ids
            assert engine.render_chat(messages) == list(hf_ids)
