"""model.chat / model.stream_chat: InternLM's template, stops at <eoa>, streams join to the reply."""

from __future__ import annotations

import copy

import pytest
import torch

import internlm
from internlm.errors import ConfigError
from internlm.inference import SamplingParams
from internlm.inference.chat_api import with_chat

from inference_helpers import uncached

HISTORY = [("床前明月光", "疑是地上霜。"), ("Who wrote it?", "--Li Bai")]


def template_ids(tokenizer, history, query):
    """InternLM's chat format, written out by hand: one BOS, then the turns, ending ready to reply."""
    text = "".join(f"<|User|>:{q}<eoh>\n<|Bot|>:{r}<eoa>\n" for q, r in history) + f"<|User|>:{query}<eoh>\n<|Bot|>:"
    return [tokenizer.bos_id, *tokenizer.encode(text)]


@pytest.fixture
def chat_model(model64):
    return with_chat(copy.deepcopy(model64))


def test_chat_prompts_with_internlms_template(chat_model, tokenizer):
    stops = (tokenizer.eos_id, tokenizer.token_to_id("<eoa>"))
    expected = uncached(chat_model, template_ids(tokenizer, HISTORY, "《静夜思》"),
                        SamplingParams(max_new_tokens=16, temperature=0, stop_ids=stops))
    response, history = chat_model.chat(tokenizer, "《静夜思》", history=HISTORY, max_new_tokens=16, temperature=0)
    assert response == tokenizer.decode([t for t in expected if t not in stops])
    assert history == [*HISTORY, ("《静夜思》", response)]
    assert chat_model.chat(tokenizer, "《静夜思》", history=HISTORY, max_new_tokens=16, do_sample=False)[0] == response


def test_chat_stops_at_eoa_and_never_runs_into_a_next_turn(chat_model, tokenizer):
    prompt = template_ids(tokenizer, [], "你好")
    free = uncached(chat_model, prompt, SamplingParams(max_new_tokens=12, temperature=0))
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])
    eoa = tokenizer.token_to_id("<eoa>")
    with torch.no_grad():  # make <eoa> win exactly where the model would first say free[k]
        logits = chat_model(torch.tensor([prompt + free[:k]]))[0, -1]
        assert logits[free[k]] > 0 and logits[eoa] < logits[free[k]]
        chat_model.lm_head.weight[eoa] = 1.5 * chat_model.lm_head.weight[free[k]]
    assert uncached(chat_model, prompt, SamplingParams(max_new_tokens=12, temperature=0))[: k + 1] == free[:k] + [eoa]
    response, _ = chat_model.chat(tokenizer, "你好", max_new_tokens=12, temperature=0)
    assert response == tokenizer.decode(free[:k]) and "<|User|>" not in response


def test_stream_chat_pieces_join_to_the_chinese_reply(chat_model, tokenizer):
    gen = {"max_new_tokens": 30, "temperature": 1.0, "top_p": 0.95, "seed": 2}
    response, _ = chat_model.chat(tokenizer, "用中文写一首诗", history=HISTORY, **gen)
    partials = list(chat_model.stream_chat(tokenizer, "用中文写一首诗", history=HISTORY, **gen))
    assert partials and partials[-1] == (response, [*HISTORY, ("用中文写一首诗", response)])
    for (before, _), (after, _) in zip(partials, partials[1:]):
        assert after.startswith(before) and len(after) > len(before)


def test_chat_defaults_are_internlms_and_bad_options_are_refused(chat_model, tokenizer):
    from internlm.inference.chat_api import CHAT_DEFAULTS

    assert CHAT_DEFAULTS == {"max_new_tokens": 1024, "temperature": 0.8, "top_p": 0.8, "do_sample": True}
    with pytest.raises(ConfigError, match="top_p"):
        chat_model.chat(tokenizer, "hi", top_p=2)
    with pytest.raises(ConfigError, match="unknown sampling field 'max_length'"):
        chat_model.chat(tokenizer, "hi", max_length=5)


def test_internlm_load_gives_a_model_that_chats(trained_run):
    model, tokenizer = internlm.load(trained_run)
    response, history = model.chat(tokenizer, "你好", history=[], max_new_tokens=8, temperature=0)
    assert isinstance(response, str) and history == [("你好", response)]
    assert isinstance(model, torch.nn.Module) and set(model.state_dict()) == set(internlm.load(trained_run)[0].state_dict())
