"""`trainer.eval_every` + `eval=<suite>`: the suite scored on the model being trained, every N
steps and after the last, logged as `eval/<dataset>/<metric>` (metrics.csv, TensorBoard).

The suite's data is loaded and checked before the first step (a wrong folder fails at once, not
after hours). Items are split across data-parallel ranks and gathered, as task=eval does, when
every rank holds the whole model; a sharded model (FSDP, tensor parallel) needs every rank in
every forward, so there each rank scores all items through the model's own forward.
"""

from __future__ import annotations

import logging

import torch

from internlm.components.eval.causal_lm import for_internlm_model
from internlm.components.eval.runner import Dataset, load_suite, predict, predict_all_ranks, score

try:  # a torch built without distributed has no DTensor, so no sharded model either
    from torch.distributed.tensor import DTensor
except ImportError:
    DTensor = None

log = logging.getLogger("internlm")


def is_dtensor(tensor: torch.Tensor) -> bool:
    return DTensor is not None and isinstance(tensor, DTensor)


class TrainingEval:
    def __init__(self, datasets: list[Dataset], every: int, max_steps: int, tokenizer, batch_tokens: int = 8192):
        self.datasets, self.every, self.max_steps = datasets, every, max_steps
        self.tokenizer, self.batch_tokens = tokenizer, batch_tokens

    def due(self, done: int) -> bool:
        return done % self.every == 0 or done == self.max_steps

    @torch.no_grad()
    def run(self, model) -> dict[str, float]:
        module = getattr(model, "module", model)  # Fabric's wrapper forwards calls to this
        sharded = any(is_dtensor(p) for p in module.parameters())
        lm = for_internlm_model("training", module, self.tokenizer, self.batch_tokens)  # generation without the engine
        if sharded:  # the packed-prefix path calls submodules directly, past the shards' gathers
            lm.share_prefixes = False
        was_training = module.training
        module.eval()
        metrics = {}
        try:
            for dataset in self.datasets:
                records = predict(dataset, lm) if sharded else predict_all_ranks(dataset, lm)
                for name, value in score(dataset, records).items():
                    metrics[f"eval/{dataset.name}/{name}"] = value
        finally:
            module.train(was_training)
        return metrics


def prepare(config, tokenizer) -> TrainingEval | None:
    """None unless trainer.eval_every is set; then the suite, loaded and checked now (its settings
    were checked by compile: planning.plan.check_training_eval)."""
    every = config.trainer.eval_every
    if not every:
        return None
    datasets = load_suite(config.eval)
    log.info("evaluating %s every %d steps", ", ".join(f"{d.name} ({len(d.items)} items)" for d in datasets), every)
    return TrainingEval(datasets, every, config.trainer.max_steps, tokenizer)
