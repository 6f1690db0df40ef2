"""Answer extraction and normalisation for generative datasets (GSM8K, MATH, option letters)."""

from __future__ import annotations

import re

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?|-?\.\d+")


def gsm8k_gold(answer: str) -> str:
    """GSM8K's reference solution ends with `#### <number>`; commas are thousands separators."""
    return normalize_number(answer.split("#### ")[-1])


def gsm8k_prediction(text: str) -> str:
    """`The answer is N` (the CoT prompts' final line) when present, else the last number."""
    marked = re.findall(r"[Tt]he answer is\s*\$?\s*(" + _NUMBER.pattern + ")", text)
    if marked:
        return normalize_number(marked[-1])
    numbers = _NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else ""


def normalize_number(text: str) -> str:
    """'1,234.50' -> '1234.5', '7.' -> '7', '-0' -> '0': one spelling per number."""
    text = text.strip().replace(",", "").rstrip(".")
    try:
        value = float(text)
    except ValueError:
        return text
    if value == int(value):
        return str(int(value))
    return repr(value)


def last_boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}` (or `\\fbox{...}`), braces balanced."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    brace = text.find("{", start)
    if brace < 0:
        rest = text[start + len("\\boxed") :].strip()  # `\boxed 5`
        return rest.split("$")[0].strip() or None
    depth = 0
    for i in range(brace, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[brace + 1 : i]
    return None


def math_prediction(text: str) -> str:
    """The last boxed answer, else `The answer is X` / `final answer is $X$`, normalised."""
    boxed = last_boxed(text)
    if boxed is None:
        found = re.findall(r"answer is\s*\$?([^\n$]+?)\$?\s*(?:\.|\n|$)", text)
        boxed = found[-1] if found else ""
    return normalize_math(boxed)


def math_gold(solution: str) -> str:
    return normalize_math(last_boxed(solution) or "")


def normalize_math(answer: str) -> str:
    """Hendrycks et al.'s string normalisation: spacing, units, \\left/\\right, dfrac, 0.5 = .5, ..."""
    s = answer.strip().replace("\n", "").rstrip(".")
    s = s.replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = re.sub(r"\\text\{\s*[a-zA-Z ]*\}\s*$", "", s) if "\\text{" in s and not s.startswith("\\text{") else s
    s = re.sub(r"\\(?:text|mbox|mathrm)\{([^}]*)\}", r"\1", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    if "=" in s and len(s.split("=")[0]) <= 2:  # "x = 5" -> "5"
        s = s.split("=")[1]
    s = _fix_sqrt(s)
    s = s.replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    s = _fix_slash_fraction(s)
    return s


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}."""
    parts = s.split("\\frac")
    out = parts[0]
    for part in parts[1:]:
        out += "\\frac"
        if part.startswith("{") or len(part) < 2:
            out += part
            continue
        a, rest = part[0], part[1:]
        if rest.startswith("{"):
            out += "{" + a + "}" + rest
        else:
            out += "{" + a + "}{" + rest[0] + "}" + rest[1:]
    return out


def _fix_slash_fraction(s: str) -> str:
    """'3/4' -> '\\frac{3}{4}' when both sides are integers."""
    match = re.fullmatch(r"(-?\d+)/(\d+)", s)
    return f"\\frac{{{match.group(1)}}}{{{match.group(2)}}}" if match else s


def first_option(text: str, labels: list[str]) -> str:
    """The first option label the answer names: 'B', '(B)', 'B.', '答案是B', '是' ..."""
    best, best_at = "", len(text) + 1
    for label in labels:
        if label.isascii() and label.isalnum():
            match = re.search(rf"(?<![A-Za-z]){re.escape(label)}(?![A-Za-z])", text)
        else:
            match = re.search(re.escape(label), text)
        if match and match.start() < best_at:
            best, best_at = label, match.start()
    return best
