"""InternLM's chat format: the text, the Jinja twin, and the token ids with their loss mask."""

from __future__ import annotations

import jinja2
import pytest
import sentencepiece as spm
from jinja2.sandbox import ImmutableSandboxedEnvironment

from internlm.components.tokenizer.chat_template import JINJA_CHAT_TEMPLATE, encode_chat, render_chat, stop_ids
from internlm.components.tokenizer.sentencepiece import SentencePieceConfig, SentencePieceTokenizer
from internlm.errors import ConfigError

TWO_TURNS = [
    {"role": "user", "content": "Who's there?"},
    {"role": "assistant", "content": "Nay, answer me: stand, and unfold yourself."},
    {"role": "user", "content": "写一句唐诗，再数到 2023。"},
    {"role": "assistant", "content": "床前明月光。\n1, 2, 2023"},
]
WITH_SYSTEM = [{"role": "system", "content": "You are Horatio."}, *TWO_TURNS[:3]]


@pytest.fixture(scope="module")
def tok() -> SentencePieceTokenizer:
    return SentencePieceTokenizer(SentencePieceConfig())


def test_render_matches_the_hand_written_format():
    expected = (
        "<|System|>:You are Horatio.\n"
        "<|User|>:Who's there?<eoh>\n"
        "<|Bot|>:Nay, answer me: stand, and unfold yourself.<eoa>\n"
        "<|User|>:写一句唐诗，再数到 2023。<eoh>\n"
        "<|Bot|>:"
    )
    assert render_chat(WITH_SYSTEM, add_generation_prompt=True) == expected
    assert render_chat(TWO_TURNS[:2]) == (
        "<|User|>:Who's there?<eoh>\n<|Bot|>:Nay, answer me: stand, and unfold yourself.<eoa>\n"
    )


@pytest.mark.parametrize("messages", [TWO_TURNS, WITH_SYSTEM, TWO_TURNS[:1], []])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_jinja_template_renders_the_same_text(messages, add_generation_prompt):
    # As transformers renders chat templates: a sandbox with trim_blocks and lstrip_blocks.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(JINJA_CHAT_TEMPLATE)
    text = template.render(messages=messages, bos_token="<s>", add_generation_prompt=add_generation_prompt)
    assert text == "<s>" + render_chat(messages, add_generation_prompt=add_generation_prompt)


def test_jinja_template_rejects_unknown_roles():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    template = env.from_string(JINJA_CHAT_TEMPLATE, globals={"raise_exception": raise_exception})
    with pytest.raises(jinja2.exceptions.TemplateError, match="role"):
        template.render(messages=[{"role": "tool", "content": "x"}], bos_token="<s>")


def reference_mask(tok: SentencePieceTokenizer, messages) -> tuple[list[int], list[bool]]:
    """Encode the whole text at once and mark the tokens whose bytes lie inside an assistant
    response or its <eoa>, located by string search: no use of encode_chat's piecewise logic."""
    text = render_chat(messages)
    raw = text.encode("utf-8")
    spans, start = [], 0
    for message in messages:
        if message["role"] == "assistant":
            target = (message["content"] + "<eoa>").encode("utf-8")
            begin = raw.index(b"<|Bot|>:" + target, start) + len(b"<|Bot|>:")
            spans.append((begin, begin + len(target)))
            start = begin + len(target)
    processor = spm.SentencePieceProcessor(model_file=str(tok.model_path))
    pieces = processor.encode(text, return_type="proto").pieces
    # offsets are in bytes of the text
    ids = [1] + [p.id for p in pieces]
    mask = [False] + [any(b <= p.begin and p.end <= e for b, e in spans) for p in pieces]
    return ids, mask


@pytest.mark.parametrize("messages", [TWO_TURNS, WITH_SYSTEM + [TWO_TURNS[3]]])
def test_mask_covers_exactly_the_assistant_tokens(tok, messages):
    ids, mask = encode_chat(tok, messages)
    assert (ids, mask) == reference_mask(tok, messages)
    assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1 and not mask[0]
    learned = [i for i, m in zip(ids, mask) if m]
    responses = [m["content"] + "<eoa>" for m in messages if m["role"] == "assistant"]
    assert tok.decode(learned) == "".join(responses)
    eoa = tok.special_ids["<eoa>"]
    assert [i for i, m in zip(ids, mask) if i == eoa and m] == [eoa] * len(responses)  # every <eoa> learned
    assert not mask[-1] and tok.decode(ids[-1:]) == "\n"  # the newline after <eoa> is not


@pytest.mark.parametrize("messages", [TWO_TURNS, WITH_SYSTEM, TWO_TURNS[:2] + TWO_TURNS[:2]])
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_piecewise_ids_equal_whole_text_ids(tok, messages, add_generation_prompt):
    ids, mask = encode_chat(tok, messages, add_generation_prompt=add_generation_prompt)
    assert ids == tok.encode(render_chat(messages, add_generation_prompt), bos=True)
    assert len(mask) == len(ids)


def test_generation_prompt_is_not_learned(tok):
    ids, mask = encode_chat(tok, TWO_TURNS[:3], add_generation_prompt=True)
    tail = tok.encode("<|Bot|>:")
    assert ids[-len(tail):] == tail and not any(mask[-len(tail):])


def test_stop_ids(tok):
    assert stop_ids(tok) == [tok.eos_id, tok.special_ids["<eoa>"]] == [2, 7]


def test_stop_ids_without_an_eoa_token():
    class Plain:
        eos_id = 2

        def token_to_id(self, piece):
            return None

    assert stop_ids(Plain()) == [2]


@pytest.mark.parametrize(
    "message, problem",
    [({"role": "tool", "content": "x"}, "unknown chat role"), ({"role": "user", "content": 3}, "must be a string"),
     ("hello", "must be a dict")],
)
def test_malformed_messages_are_config_errors(message, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        render_chat([TWO_TURNS[0], message])
    assert caught.value.where == "chat message 1"


@pytest.mark.parametrize("response", ["Ay, my lord.", "--Ay, my lord.", "《静夜思》"])
def test_ids_are_the_whole_text_and_the_reply_is_learned(tok, response):
    """Issue 13: the conversation is encoded whole (as HF's apply_chat_template does) even where a
    reply's first characters merge with the ':' before them (":--", ":《" are single pieces of the
    bundled vocabulary); every token that spells part of the reply or its <eoa> is learned."""
    question = [{"role": "user", "content": "Is it the king?"}]
    messages = [*question, {"role": "assistant", "content": response}]
    ids, mask = encode_chat(tok, messages)
    assert ids == tok.encode(render_chat(messages), bos=True)
    prompt_text = render_chat(question, add_generation_prompt=True)
    for token_id, learned, end in zip(ids[1:], mask[1:], _ends(tok, ids[1:])):
        start = end - len(tok.decode([token_id]))
        covers_reply = start < len(prompt_text) + len(response) + len("<eoa>") and end > len(prompt_text)
        assert learned == covers_reply, (tok.id_to_token(token_id), start, end)


def _ends(tok, ids):
    return [len(tok.decode(ids[: i + 1])) for i in range(len(ids))]
