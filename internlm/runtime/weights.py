"""`model.init_from`: start training from published weights instead of a random init.

    model.init_from=hf:<dir>         a Hugging Face Llama/InternLM folder (safetensors or .bin)
    model.init_from=internlm:<dir>   original InternLM model_tp*_pp*.pt shards, any tp/pp layout
"""

from __future__ import annotations

import logging

from torch import nn

from internlm.errors import ConfigError

log = logging.getLogger("internlm")


def load_initial_weights(model: nn.Module, spec: str) -> None:
    from internlm.interop import check_same_architecture, load_hf_checkpoint, load_internlm_checkpoint, load_into

    kind, _, folder = spec.partition(":")
    if kind == "hf" and folder:
        checkpoint_config, state = load_hf_checkpoint(folder)
        check_same_architecture(model.config, checkpoint_config, where="model.init_from")
    elif kind == "internlm" and folder:
        state = load_internlm_checkpoint(folder, model.config)
    else:
        raise ConfigError(
            f"cannot read model.init_from={spec!r}",
            where="model.init_from",
            fix="use hf:<folder> or internlm:<folder>",
        )
    report = load_into(model, state, where="model.init_from")
    log.info("initialised from %s: %s", spec, report.summary())
