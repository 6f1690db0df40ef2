"""`model.init_from`: start training from earlier or published weights instead of a random init.

    model.init_from=run:<dir>        a run folder (its newest checkpoint) or a checkpoint folder of ours
    model.init_from=hf:<dir>         a Hugging Face Llama/InternLM folder (safetensors or .bin)
    model.init_from=internlm:<dir>   original InternLM model_tp*_pp*.pt shards, any tp/pp layout

Only the weights are taken: the optimizer, the schedule and the data position start afresh
(to continue a run, use trainer.resume instead).
"""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from internlm.errors import ConfigError
from internlm.interop import check_same_architecture, load_hf_checkpoint, load_internlm_checkpoint, load_into
from internlm.runtime import checkpoint as ckpt
from internlm.runtime.saved_run import checkpoint_model_config, load_model_state

log = logging.getLogger("internlm")

KINDS = ("run", "hf", "internlm")


def load_initial_weights(model: nn.Module, spec: str) -> None:
    kind, _, folder = spec.partition(":")
    if kind == "run" and folder:
        found = ckpt.find_checkpoint(folder, Path(folder))
        saved_model_cfg, _ = checkpoint_model_config(found)
        check_same_architecture(model.config, saved_model_cfg, where="model.init_from")
        state = load_model_state(found)
    elif kind == "hf" and folder:
        checkpoint_config, state = load_hf_checkpoint(folder)
        check_same_architecture(model.config, checkpoint_config, where="model.init_from")
    elif kind == "internlm" and folder:
        state = load_internlm_checkpoint(folder, model.config)
    else:
        raise ConfigError(
            f"cannot read model.init_from={spec!r}",
            where="model.init_from",
            fix="use run:<run or checkpoint folder>, hf:<folder> or internlm:<folder>",
        )
    report = load_into(model, state, where="model.init_from")
    log.info("initialised from %s: %s", spec, report.summary())
