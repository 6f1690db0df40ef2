"""task=serve as users meet it: a real server process on loopback, driven by the official `openai`
client. Greedy answers are checked against the project's uncached reference decoder."""

from __future__ import annotations

import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import internlm
from internlm.components.tokenizer.chat_template import render_chat, stop_ids
from internlm.runtime.generation import generate
from tests.serve.conftest import API_KEY, RUN_NAME

HELLO = [{"role": "user", "content": "你好, who are you?"}]


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def reference(tiny_run):
    """The uncached decoder on the same checkpoint: (new ids, text without the stop token)."""
    model, tokenizer = internlm.load(tiny_run)

    def complete(prompt_ids: list[int], max_tokens: int, stops: list[int]) -> tuple[list[int], str, str]:
        new = generate(model, prompt_ids, max_tokens, stop_ids=tuple(stops))
        stopped = bool(new) and new[-1] in stops
        return new, tokenizer.decode(new[:-1] if stopped else new), "stop" if stopped else "length"

    complete.tokenizer = tokenizer
    return complete


def chat_ids(tokenizer, messages) -> list[int]:
    """InternLM's template rendered as text and encoded whole, with one BOS."""
    return tokenizer.encode(render_chat(messages, add_generation_prompt=True), bos=True)


def post(server, path: str, body, key: str | None = API_KEY, raw: bool = False) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw:
        return httpx.post(f"{server.base_url}{path}", content=body, headers={**headers, "Content-Type": "application/json"}, timeout=30)
    return httpx.post(f"{server.base_url}{path}", json=body, headers=headers, timeout=30)


def test_models_lists_the_run_by_name(client):
    assert [m.id for m in client.models.list().data] == [RUN_NAME]
    assert client.models.retrieve(RUN_NAME).id == RUN_NAME


def test_greedy_chat_equals_the_reference_decoder(client, reference):
    tokenizer = reference.tokenizer
    ids = chat_ids(tokenizer, HELLO)
    new, text, reason = reference(ids, 16, stop_ids(tokenizer))
    reply = client.chat.completions.create(model=RUN_NAME, messages=HELLO, max_tokens=16, temperature=0)
    assert reply.object == "chat.completion" and reply.model == RUN_NAME
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == reason
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), len(new))
    assert reply.usage.total_tokens == len(ids) + len(new)


def test_greedy_completion_equals_the_reference_decoder(client, reference):
    tokenizer = reference.tokenizer
    ids = tokenizer.encode("To be, or not", bos=True)
    new, text, reason = reference(ids, 12, [tokenizer.eos_id])
    reply = client.completions.create(model=RUN_NAME, prompt="To be, or not", max_tokens=12, temperature=0)
    assert reply.choices[0].text == text
    assert reply.choices[0].finish_reason == reason == "length"  # 12 tokens without an EOS
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), 12)


def test_chat_stream_joins_to_the_unstreamed_reply(client):
    whole = client.chat.completions.create(model=RUN_NAME, messages=HELLO, max_tokens=30, temperature=0)
    chunks = list(client.chat.completions.create(model=RUN_NAME, messages=HELLO, max_tokens=30, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage  # the usage chunk comes last
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_ends_with_done_and_joins(server, client):
    whole = client.completions.create(model=RUN_NAME, prompt="O Romeo", max_tokens=20, temperature=0)
    response = post(server, "/v1/completions", {"model": RUN_NAME, "prompt": "O Romeo", "max_tokens": 20,
                                                "temperature": 0, "stream": True})
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: "):] for line in response.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole.choices[0].text
    assert chunks[-1]["choices"][0]["finish_reason"] == whole.choices[0].finish_reason
    assert "usage" not in chunks[-1]  # only with stream_options.include_usage


def test_a_stop_string_cuts_the_text_where_it_first_appears(client):
    text = client.completions.create(model=RUN_NAME, prompt="To be", max_tokens=40, temperature=0).choices[0].text
    assert len(text) > 12, text
    stop = text[8:11]
    reply = client.completions.create(model=RUN_NAME, prompt="To be", max_tokens=40, temperature=0, stop=[stop])
    assert reply.choices[0].text == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_n_seeded_samples_are_reproducible_and_end_by_length(client):
    ask = dict(model=RUN_NAME, messages=HELLO, max_tokens=6, temperature=1.0, top_p=0.95, n=3, seed=11)
    first, again = client.chat.completions.create(**ask), client.chat.completions.create(**ask)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    for choice in first.choices:
        assert choice.finish_reason in ("stop", "length")
    lengths = sum(1 for c in first.choices if c.finish_reason == "length")
    assert first.usage.completion_tokens >= 6 * lengths
    streamed = ["", "", ""]
    for chunk in client.chat.completions.create(**ask, stream=True):  # the choices interleave, by index
        for choice in chunk.choices:
            streamed[choice.index] += choice.delta.content or ""
    assert streamed == [c.message.content for c in first.choices]


TOO_LONG = list(range(5, 4005))  # 4000 prompt tokens: with max_tokens=200 more than the 4096 context


@pytest.mark.parametrize("path, body, param, code", [
    ("/v1/completions", {"model": RUN_NAME, "prompt": ""}, "prompt", "empty_prompt"),
    ("/v1/chat/completions", {"model": RUN_NAME, "messages": []}, "messages", "invalid_value"),
    ("/v1/chat/completions", {"model": RUN_NAME, "messages": [{"role": "user", "content": " "}]}, "messages", "empty_prompt"),
    ("/v1/chat/completions", {"model": RUN_NAME, "messages": HELLO, "top_p": 2}, "top_p", "invalid_value"),
    ("/v1/chat/completions", {"model": RUN_NAME, "messages": HELLO, "temprature": 0.5}, "temprature", "unknown_field"),
    ("/v1/chat/completions", {"model": RUN_NAME, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "invalid_value"),
    ("/v1/completions", {"model": RUN_NAME, "prompt": TOO_LONG, "max_tokens": 200}, "max_tokens", "context_length_exceeded"),
    ("/v1/completions", {"model": RUN_NAME, "prompt": TOO_LONG + TOO_LONG}, "prompt", "context_length_exceeded"),
    ("/v1/completions", {"model": RUN_NAME, "prompt": "hi", "max_tokens": 3001}, "max_tokens", "invalid_value"),
    ("/v1/completions", {"model": RUN_NAME, "prompt": "hi", "n": 9}, "n", "invalid_value"),
    ("/v1/completions", {"model": RUN_NAME, "prompt": [10**9]}, "prompt", "invalid_value"),
])
def test_bad_requests_get_400_with_an_openai_error(server, path, body, param, code):
    response = post(server, path, body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"]


def test_malformed_json_and_huge_bodies_are_refused(server):
    response = post(server, "/v1/chat/completions", b'{"model": "x", "messages": [', raw=True)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = post(server, "/v1/chat/completions", b'{"prompt": "' + b"a" * 1_200_000 + b'"}', raw=True)
    assert response.status_code == 413 and response.json()["error"]["code"] == "body_too_large"


def test_the_client_sees_400_404_401_and_the_server_keeps_serving(server, client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=RUN_NAME, messages=HELLO, top_p=2)
    assert bad.value.body["param"] == "top_p"
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    for key in ("wrong-key", None):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        response = httpx.get(f"{server.base_url}/v1/models", headers=headers, timeout=10)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    keyless = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="wrong-key", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        keyless.chat.completions.create(model=RUN_NAME, messages=HELLO)
    assert httpx.get(f"{server.base_url}/v1/nothing-here", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 404
    reply = client.chat.completions.create(model=RUN_NAME, messages=HELLO, max_tokens=4, temperature=0)
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert server.health() == {"status": "ok", "model": RUN_NAME, "active": 0, "queued": 0,
                               "cache_slots": 16, "cache_slots_free": 16}


def test_sixteen_concurrent_clients_get_their_solo_answers(client):
    prompts = [[{"role": "user", "content": f"question {i}: {'ab' * i}"}] for i in range(4)]
    solo = [client.chat.completions.create(model=RUN_NAME, messages=p, max_tokens=12, temperature=0).choices[0].message.content
            for p in prompts]

    def ask(i: int) -> str:
        if i % 2:  # half of them stream
            stream = client.chat.completions.create(model=RUN_NAME, messages=prompts[i % 4], max_tokens=12, temperature=0, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        return client.chat.completions.create(model=RUN_NAME, messages=prompts[i % 4], max_tokens=12, temperature=0).choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))  # any error would raise here
    assert answers == [solo[i % 4] for i in range(16)]


def wait_until_idle(server, seconds: float = 20) -> dict:
    """/health once no request holds a server slot or an engine cache slot (or when time is up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = server.health()
        if health["active"] == 0 and health["cache_slots_free"] == health["cache_slots"]:
            return health
        time.sleep(0.1)
    return server.health()


def test_a_client_that_disconnects_mid_stream_frees_its_slot(server, client):
    ask = dict(model=RUN_NAME, prompt="To be", temperature=0)
    assert client.completions.create(**ask, max_tokens=200).choices[0].finish_reason == "length"  # no early EOS
    # 3000 tokens would keep the slot for far longer than the wait below, unless the disconnect frees it.
    with client.completions.create(**ask, max_tokens=3000, stream=True) as stream:
        for index, _ in enumerate(stream):
            if index == 2:
                health = server.health()
                assert (health["active"], health["cache_slots_free"]) == (1, health["cache_slots"] - 1)
                break  # leaving the block closes the connection
    health = wait_until_idle(server, seconds=10)
    assert (health["active"], health["cache_slots_free"]) == (0, health["cache_slots"])  # the engine slot too
    assert client.completions.create(**ask, max_tokens=3).usage.completion_tokens == 3


def test_a_client_that_gives_up_on_a_long_answer_frees_its_slot(server):
    body = {"model": RUN_NAME, "prompt": "To be", "max_tokens": 3000, "temperature": 0}
    with pytest.raises(httpx.ReadTimeout):  # the client hangs up long before 3000 tokens
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=1.0,
                   headers={"Authorization": f"Bearer {API_KEY}"})
    health = wait_until_idle(server, seconds=10)
    assert (health["active"], health["cache_slots_free"]) == (0, health["cache_slots"])


def test_a_full_server_answers_429_and_sigterm_lets_the_running_stream_finish(tiny_run, tmp_path):
    from tests.serve.conftest import start_server

    # One request at a time, none waiting: a second one while the first streams must get 429.
    server = start_server(tiny_run, tmp_path, "task.max_concurrent=1", "task.max_queued=0", "task.shutdown_timeout=120")
    chunks: list[str] = []

    def consume() -> None:
        with httpx.stream("POST", f"{server.base_url}/v1/completions", timeout=120,
                          json={"model": RUN_NAME, "prompt": "To be", "max_tokens": 200, "temperature": 0, "stream": True}) as r:
            for line in r.iter_lines():
                if line:
                    chunks.append(line)

    reader = threading.Thread(target=consume)
    reader.start()
    deadline = time.monotonic() + 30
    while len(chunks) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    busy = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.RateLimitError) as refused:
        busy.completions.create(model=RUN_NAME, prompt="hi", max_tokens=2)
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert not any(c == "data: [DONE]" for c in chunks), "the first stream must still be running"
    server.process.send_signal(signal.SIGTERM)
    reader.join(timeout=120)
    assert server.process.wait(timeout=30) == 0, server.output()
    assert chunks[-1] == "data: [DONE]"  # drained, not cut off
    assert sum(1 for c in chunks if '"finish_reason":"length"' in c.replace(" ", "")) == 1
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.base_url}/health", timeout=2)
