import pytest

from internlm.components.eval import answers


@pytest.mark.parametrize(
    "text,expected",
    [
        ("4 * 3 = 12 pages.\nThe answer is 12", "12"),
        ("So 1,200 in total, then 5 left. The answer is 1,195.", "1195"),
        ("We get 7 then 8 then 9.50", "9.5"),
        ("The answer is $42", "42"),
        ("no digits here", ""),
    ],
)
def test_gsm8k_prediction(text, expected):
    assert answers.gsm8k_prediction(text) == expected


def test_gsm8k_gold_drops_commas():
    assert answers.gsm8k_gold("2,500 + 3,000 = 5,500.\n#### 5,500") == "5500"


@pytest.mark.parametrize(
    "solution,expected",
    [
        ("so $x=\\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac12}", "\\frac{1}{2}"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{3/4}", "\\frac{3}{4}"),
        ("first \\boxed{1} then \\boxed{ 2 }", "2"),
        ("\\boxed{10\\text{ cm}}", "10"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{x = 5}", "5"),
    ],
)
def test_math_extraction_and_normalisation(solution, expected):
    assert answers.math_prediction(solution) == expected


def test_math_nested_braces():
    assert answers.last_boxed("\\boxed{\\frac{a}{b^{2}}}") == "\\frac{a}{b^{2}}"


@pytest.mark.parametrize(
    "text,expected",
    [("The answer is (B).", "B"), ("答案是C", "C"), ("A", "A"), ("Because of that, D is right", "D"), ("nothing", "")],
)
def test_first_option(text, expected):
    assert answers.first_option(text, ["A", "B", "C", "D"]) == expected


def test_first_option_chinese_labels():
    assert answers.first_option("我认为是。", ["否", "是"]) == "是"
