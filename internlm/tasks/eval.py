"""Score checkpoints on a suite: `task=eval checkpoint=<run|checkpoint|hf:dir> eval=<suite or dataset>`.

Writes into the run folder: summary.md / summary.csv (OpenCompass's layout, one column per
model), results.json, and predictions/<dataset>.jsonl (one line per model and item). With
`task.mode=score` the saved predictions are re-scored and no model is loaded.

Every check a user's input can fail (data files and their layout, unknown datasets or
evaluator options, missing predictions, a chat dataset for a model without a chat template)
happens before the first model loads.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from internlm.components.eval.config import EvalSuiteConfig
from internlm.components.eval.runner import Dataset, load_suite, predict_all_ranks, score
from internlm.components.eval.summary import Row, to_csv, to_markdown, to_text
from internlm.errors import ConfigError
from internlm.registry import register
from internlm.tasks.base import RunContext, Task

log = logging.getLogger("internlm")
MODES = ("all", "score")


@dataclass
class EvalTaskConfig:
    models: list[str] = field(default_factory=list)  # several sources, one column each; [] = the root `checkpoint`
    mode: str = "all"  # all: predict and score | score: re-score saved predictions (no model is loaded)
    predictions: str | None = None  # run folder whose predictions/ task.mode=score reads; null = this run folder
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU) | float32 | bfloat16
    batch_tokens: int = 16384  # tokens per scoring forward (batch size x longest request)
    eval: EvalSuiteConfig = field(default_factory=EvalSuiteConfig)  # the suite (conf/eval/; eval@task.eval=<name>)


@register("task", "eval", EvalTaskConfig)
class Eval(Task):
    """Evaluate one or more models on OpenCompass-style datasets and print the summary table."""

    needs_tokenizer = False  # each model brings its own

    def run(self, ctx: RunContext) -> dict[str, Any]:
        cfg = self.config
        if cfg.mode not in MODES:
            raise ConfigError(f"unknown mode '{cfg.mode}'", where="task.mode", fix="use all or score")
        suite = _suite(ctx, cfg)
        if cfg.mode == "score":
            datasets = load_suite(suite, with_items=False)
            records, columns = read_predictions(Path(cfg.predictions) if cfg.predictions else ctx.run_dir, datasets)
            models = {column: column for column in columns}
            writer = _rank() == 0
        else:
            sources = self.sources(ctx)
            datasets = load_suite(suite)
            check_models(sources, datasets)
            with joined_ranks(cfg):  # under torchrun: items split across the ranks, gathered on each
                columns = _column_names(sources)  # one per source, unique even when a source repeats
                records = {d.name: {} for d in datasets}
                for source, column in zip(sources, columns):
                    lm = open_model(source, cfg)
                    for dataset in datasets:
                        log.info("eval %s on %s (%d items)", dataset.name, column, len(dataset.items))
                        records[dataset.name][column] = predict_all_ranks(dataset, lm)
                    del lm
                models = dict(zip(columns, sources))
                writer = _rank() == 0  # asked while the group stands; rank 0 writes once all are done
        return write_results(ctx.run_dir, datasets, models, records, write=writer)

    def sources(self, ctx: RunContext) -> list[str]:
        models = list(self.config.models) or ([ctx.config.checkpoint] if ctx.config.checkpoint else [])
        if not models:
            raise ConfigError("task=eval needs a model", where="checkpoint / task.models",
                              fix="checkpoint=<run folder | checkpoint folder | hf:<dir>> or task.models=[a,b]")
        return models


def _suite(ctx: RunContext, cfg: EvalTaskConfig) -> EvalSuiteConfig:
    """The root `eval` group when the root config has one, else the task's own."""
    root = getattr(ctx.config, "eval", None)
    return root if isinstance(root, EvalSuiteConfig) and root.datasets else cfg.eval


def model_name(source: str) -> str:
    path = Path(source.removeprefix("hf:").rstrip("/"))
    if path.name.startswith("step-") and path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}/{path.name}"
    return path.stem if path.suffix == ".gguf" else path.name


def check_models(sources: list[str], datasets: list[Dataset]) -> None:
    """Each model exists, and has a chat template when a dataset needs one: before any loads."""
    from internlm.inference.scoring import check_hf_source, hf_has_chat_template
    from internlm.runtime import checkpoint as ckpt
    from internlm.runtime.saved_run import checkpoint_model_config

    needs_chat = [d.name for d in datasets if d.chat]
    for source in sources:
        if source.startswith("hf:"):
            check_hf_source(source)
            has_chat = hf_has_chat_template(source) if needs_chat else True
        else:
            checkpoint = ckpt.find_checkpoint(source, Path(source))
            _, tokenizer = checkpoint_model_config(checkpoint)
            has_chat = all(tokenizer.token_to_id(m) is not None for m in ("<|User|>", "<|Bot|>", "<eoh>", "<eoa>"))
        if needs_chat and not has_chat:
            raise ConfigError(
                f"model {source} has no chat template, and {', '.join(needs_chat)} use(s) it",
                where="task.models / checkpoint",
                fix="evaluate a chat model (its tokenizer needs a chat template), or a base suite (eval=base_suite)",
            )


@contextlib.contextmanager
def joined_ranks(cfg: EvalTaskConfig) -> Iterator[None]:
    """A launch of several processes (torchrun: WORLD_SIZE, RANK, MASTER_ADDR set) joins one
    process group for the block: gloo on CPU, NCCL with one GPU per local rank. It is torn down
    at the end (after every rank is done; at once if this one failed: the others may never
    arrive): a gloo group left to the interpreter's exit can abort a rank ("terminate called
    without an active exception") after its work is written, or hide a failure's exit code."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def open_model(source: str, cfg: EvalTaskConfig):
    from internlm.inference.scoring import for_hf, for_internlm
    from internlm.runtime.saved_run import load

    device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else ("cpu" if cfg.device == "auto" else cfg.device)
    if device == "cuda" and torch.distributed.is_available() and torch.distributed.is_initialized():
        device = f"cuda:{torch.cuda.current_device()}"  # this rank's GPU
    dtype_name = cfg.dtype if cfg.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
    if dtype_name not in ("float32", "bfloat16"):
        raise ConfigError(f"unknown dtype '{cfg.dtype}'", where="task.dtype", fix="use auto, float32 or bfloat16")
    dtype = getattr(torch, dtype_name)
    if source.startswith("hf:"):
        return for_hf(source, device, dtype, cfg.batch_tokens)
    model, tokenizer = load(source, device)
    lm = for_internlm(model_name(source), model.to(dtype), tokenizer, cfg.batch_tokens)
    return lm


def read_predictions(run_dir: Path, datasets: list[Dataset]) -> tuple[dict[str, dict[str, list[dict]]], list[str]]:
    folder = run_dir / "predictions"
    records: dict[str, dict[str, list[dict]]] = {}
    models: list[str] = []
    for dataset in datasets:
        path = folder / f"{dataset.name}.jsonl"
        if not path.is_file():
            raise ConfigError(f"no saved predictions for '{dataset.name}': {path} is missing", where="task.mode=score",
                              fix="run task=eval once without task.mode=score, or point task.predictions at that run folder")
        per_model: dict[str, list[dict]] = {}
        for number, line in enumerate(path.read_text("utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                per_model.setdefault(record["model"], []).append(record)
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ConfigError(f"{path}:{number}: not a prediction line", where="task.predictions",
                                  fix="predictions files are written by task=eval; do not edit them by hand") from None
            if record.get("version") not in (None, dataset.version):
                raise ConfigError(f"{path}:{number}: predictions of prompt version {record.get('version')}, the config's is {dataset.version}",
                                  where=f"eval.datasets.{dataset.name}", fix="re-run the predictions: the template changed")
        for model in per_model:
            if model not in models:
                models.append(model)
        records[dataset.name] = per_model
    return records, models


def write_results(run_dir: Path, datasets: list[Dataset], models: dict[str, str], records, write: bool = True) -> dict[str, Any]:
    """models: column name -> source. Scores every (dataset, model), writes the four outputs
    (`write=False`: the other ranks of a multi-process run score alike and write nothing)."""
    columns = list(models)
    rows: list[Row] = []
    results: dict[str, Any] = {"models": dict(models), "datasets": {}}
    if write:
        (run_dir / "predictions").mkdir(parents=True, exist_ok=True)
    for dataset in datasets:
        metrics_by_model: dict[str, dict[str, float]] = {}
        lines = []
        for column in columns:
            model_records = records[dataset.name].get(column, [])
            metrics_by_model[column] = score(dataset, model_records) if model_records else {}
            for record in model_records:
                record["model"], record["version"] = column, dataset.version
                lines.append(json.dumps(record, ensure_ascii=False))
        if write:
            _write_atomic(run_dir / "predictions" / f"{dataset.name}.jsonl", "\n".join(lines) + "\n")
        metric_names = list(dict.fromkeys(k for m in metrics_by_model.values() for k in m))
        for metric in metric_names:
            rows.append(Row(dataset.name, dataset.version, metric, dataset.evaluator.mode,
                            {c: metrics_by_model[c].get(metric) for c in columns}))
        results["datasets"][dataset.name] = {"version": dataset.version, "mode": dataset.evaluator.mode,
                                             "metrics": metrics_by_model}
    if not write:
        return results
    print(to_text(rows, columns), end="")
    _write_atomic(run_dir / "summary.md", to_markdown(rows, columns))
    _write_atomic(run_dir / "summary.csv", to_csv(rows, columns))
    _write_atomic(run_dir / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return results


def _column_names(sources: list[str]) -> list[str]:
    """Short, unique column names (the folder names; a suffix where two collide)."""
    out: list[str] = []
    for source in sources:
        name = model_name(source)
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name}-{n}", n + 1
        out.append(candidate)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
