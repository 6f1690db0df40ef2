"""internlm: a declarative, config-compiled system for training large language models."""

__version__ = "0.1.0"


def load(path, **kwargs):
    """Load a trained model and its tokenizer: ``model, tokenizer = internlm.load("outputs/run")``."""
    from internlm.api import load as _load

    return _load(path, **kwargs)
