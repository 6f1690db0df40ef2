"""The web demo's Streamlit page, laid out as InternLM's `web_demo.py`: a title, sidebar sliders
(Max Length, Top P, Temperature) and a Clear Chat History button, the conversation so far, a chat
input, and the reply streamed into the page as it is generated.

The engine is loaded once per server process (`st.cache_resource`) and shared by every browser
session: its continuous batching runs their replies together.
"""

from __future__ import annotations

import argparse

import streamlit as st

from internlm.errors import ConfigError
from internlm.inference import load_engine
from internlm.web_demo.chat import CURSOR, Controls, TooLong, stream_reply

AVATARS = {"user": ":material/person:", "assistant": ":material/smart_toy:"}  # icons bundled with Streamlit


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="streamlit run internlm/web_demo/app.py --")
    parser.add_argument("checkpoint", help="run folder, checkpoint folder or hf:<export dir>")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="auto", help="auto | bf16 | fp16 | fp32")
    parser.add_argument("--title", default=None, help="page title (default: the model's name)")
    parser.add_argument("--max-length", type=int, default=2048, help="Max Length slider's starting value (32..2048)")
    return parser.parse_args(argv)


@st.cache_resource(show_spinner="Loading the model...")
def engine_for(checkpoint: str, device: str, dtype: str):
    return load_engine(checkpoint, device=device, dtype=dtype)


def sidebar_controls(max_length: int) -> Controls:
    with st.sidebar:
        max_length = st.slider("Max Length", min_value=32, max_value=2048, value=min(max(max_length, 32), 2048))
        top_p = st.slider("Top P", 0.0, 1.0, 0.8, step=0.01)
        temperature = st.slider("Temperature", 0.0, 1.0, 0.7, step=0.01)
        st.button("Clear Chat History", on_click=lambda: st.session_state.messages.clear())
    return Controls(max_length=max_length, top_p=top_p, temperature=temperature)


def main(argv: list[str]) -> None:
    args = parse_args(argv)
    try:
        engine = engine_for(args.checkpoint, args.device, args.dtype)
    except ConfigError as error:
        st.error(error.render())
        st.stop()
    st.title(args.title or engine.model_id)
    controls = sidebar_controls(args.max_length)
    messages = st.session_state.setdefault("messages", [])
    for message in messages:
        with st.chat_message(message["role"], avatar=AVATARS[message["role"]]):
            st.markdown(message["content"])

    if prompt := st.chat_input("What is up?"):
        with st.chat_message("user", avatar=AVATARS["user"]):
            st.markdown(prompt)
        conversation = [*messages, {"role": "user", "content": prompt}]
        with st.chat_message("assistant", avatar=AVATARS["assistant"]):
            placeholder = st.empty()
            try:
                reply = ""
                for reply in stream_reply(engine, conversation, controls):
                    placeholder.markdown(reply + CURSOR)
                placeholder.markdown(reply)
            except TooLong as error:
                placeholder.warning(str(error))
                return
        messages += [conversation[-1], {"role": "assistant", "content": reply}]
