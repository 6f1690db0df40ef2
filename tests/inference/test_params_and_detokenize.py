"""Sampling parameters refuse bad values by name; streamed text never splits a UTF-8 character."""

from __future__ import annotations

import pytest

from internlm.errors import ConfigError
from internlm.inference import Engine, SamplingParams
from internlm.inference.detokenize import IncrementalDecoder


@pytest.mark.parametrize(
    "values, field",
    [({"top_p": 2}, "top_p"), ({"top_p": 0}, "top_p"), ({"temperature": -0.1}, "temperature"),
     ({"max_new_tokens": 0}, "max_new_tokens"), ({"top_k": -1}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"),
     ({"seed": 1.5}, "seed"), ({"stop_strings": [""]}, "stop_strings"), ({"do_sample": "yes"}, "do_sample")],
)
def test_bad_values_name_the_field(values, field):
    with pytest.raises(ConfigError) as caught:
        SamplingParams.from_dict(values)
    assert caught.value.where == f"sampling.{field}"


def test_unknown_field_is_refused_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown sampling field 'temprature' \(did you mean 'temperature'\?\)"):
        SamplingParams.from_dict({"temprature": 0.5})


def test_greedy_when_temperature_is_zero_or_sampling_is_off():
    assert SamplingParams(temperature=0).greedy and SamplingParams(do_sample=False).greedy
    assert not SamplingParams().greedy


@pytest.mark.parametrize("prompt, problem", [([], "the prompt is empty"), ([1] * 300, "the prompt has 300 tokens"),
                                             ([1, 99999], "outside the vocabulary"), ("hello", "list of token ids")])
def test_bad_prompts(model64, tokenizer, prompt, problem):
    engine = Engine(model64, tokenizer, model_id="random", max_batch=1)
    with pytest.raises(ConfigError, match=problem):
        engine.submit(prompt, SamplingParams())
    with pytest.raises(ConfigError, match="top_p"):
        engine.generate([[1, 2]], SamplingParams(top_p=2))
    engine.close()


TEXTS = ["《静夜思》床前明月光，疑是地上霜。龘", "emoji 🙂 and 𠀀 rare han, ½ ü", "--dash led, then 龘 and 中文"]


@pytest.mark.parametrize("text", TEXTS)
def test_pieces_join_to_the_text_and_never_split_a_character(tokenizer, text):
    ids = tokenizer.encode(text)
    assert any(tokenizer.id_to_token(i).startswith("<0x") for i in ids)  # byte fallback in play
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(i) for i in ids] + [decoder.flush()]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)
    # Token-by-token decoding (what InternLM's stream_chat did) would have shown half characters.
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids)
