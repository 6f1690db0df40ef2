"""The web demo page through Streamlit's AppTest: controls, a streamed reply equal to the reference
decoder's, history, Clear Chat History, and a conversation too long for Max Length."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

import internlm
from internlm.components.tokenizer.chat_template import render_chat, stop_ids
from internlm.runtime.generation import generate
from tests.serve.conftest import RUN_NAME


def page(checkpoint: str) -> None:  # AppTest runs this function's body as the script
    from internlm.web_demo.page import main

    main([checkpoint, "--device", "cpu"])


@pytest.fixture
def app(demo_run) -> AppTest:
    at = AppTest.from_function(page, args=(str(demo_run),), default_timeout=120)
    return at.run()


@pytest.fixture(scope="module")
def greedy_reply(demo_run):
    model, tokenizer = internlm.load(demo_run)

    def reply(messages: list[dict], max_length: int) -> str:
        ids = tokenizer.encode(render_chat(messages, add_generation_prompt=True), bos=True)
        new = generate(model, ids, max_length - len(ids), stop_ids=tuple(stop_ids(tokenizer)))
        return tokenizer.decode(new[:-1] if new and new[-1] in stop_ids(tokenizer) else new)

    return reply


def set_controls(at: AppTest, max_length: int, temperature: float) -> None:
    sliders = {s.label: s for s in at.sidebar.slider}
    sliders["Max Length"].set_value(max_length)
    sliders["Temperature"].set_value(temperature)


def test_the_page_has_internlms_controls(app):
    assert not app.exception
    assert app.title[0].value == RUN_NAME  # the run folder's name
    assert [s.label for s in app.sidebar.slider] == ["Max Length", "Top P", "Temperature"]
    assert [s.value for s in app.sidebar.slider] == [2048, 0.8, 0.7]
    assert [b.label for b in app.sidebar.button] == ["Clear Chat History"]
    assert len(app.chat_input) == 1 and not app.chat_message


def test_a_message_gets_the_greedy_reply_and_history_is_kept_then_cleared(app, greedy_reply):
    set_controls(app, max_length=64, temperature=0.0)
    app.chat_input[0].set_value("你好").run()
    assert not app.exception
    first = greedy_reply([{"role": "user", "content": "你好"}], 64)
    assert first
    assert [(m.name, m.markdown[0].value) for m in app.chat_message] == [("user", "你好"), ("assistant", first.strip())]

    set_controls(app, max_length=160, temperature=0.0)  # room for the first turn in the prompt
    app.chat_input[0].set_value("and then?").run()
    history = [{"role": "user", "content": "你好"}, {"role": "assistant", "content": first},
               {"role": "user", "content": "and then?"}]
    second = greedy_reply(history, 160)
    assert app.session_state["messages"] == [*history, {"role": "assistant", "content": second}]  # exact text
    # On the page: the same, as st.markdown shows it (it strips surrounding whitespace).
    assert [m.markdown[0].value for m in app.chat_message] == [t.strip() for t in ("你好", first, "and then?", second)]

    app.sidebar.button[0].click().run()
    assert not app.chat_message and app.session_state["messages"] == []


def test_a_conversation_longer_than_max_length_is_refused_with_a_hint(app):
    set_controls(app, max_length=32, temperature=0.0)
    app.chat_input[0].set_value("a long question " * 20).run()
    assert not app.exception
    assert "Max Length" in app.warning[0].value
    assert app.session_state["messages"] == []  # nothing half-answered enters the history
