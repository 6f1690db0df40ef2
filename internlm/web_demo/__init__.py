"""InternLM's Streamlit web demo on the inference engine (`task=web_demo`, or
`streamlit run internlm/web_demo/app.py -- <checkpoint>`).

    chat.py  the conversation logic (controls -> prompt and sampling, streamed reply); no Streamlit
    page.py  the Streamlit page: sidebar controls, history, chat input, streamed replies
    app.py   the script `streamlit run` executes
"""
