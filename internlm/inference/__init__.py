"""The inference layer shared by generate, chat, serve and eval.

    from internlm.inference import load_engine, SamplingParams
    engine = load_engine("outputs/run", device="auto", dtype="auto")
    prompt = engine.render_chat([{"role": "user", "content": "你好"}])
    print(engine.generate([prompt], SamplingParams(temperature=0))[0].text)
    for delta in engine.stream(prompt, SamplingParams(seed=0)):
        print(delta.text, end="", flush=True)

See docs/inference.md.
"""

from internlm.inference.engine import Engine
from internlm.inference.loading import load_engine, load_model
from internlm.sampling import SamplingParams
from internlm.inference.request import Completion, Delta, RequestHandle

__all__ = ["Completion", "Delta", "Engine", "RequestHandle", "SamplingParams", "load_engine", "load_model"]
