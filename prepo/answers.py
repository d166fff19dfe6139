"""Answer extraction from free text: the last \\boxed{...}, the GSM8K "####" line, "the answer is ...", the last number.

Shared by the dataset loaders (gold answers) and the numeric verifier (model completions); pure string functions.
"""
from __future__ import annotations

import re
from fractions import Fraction

# 1,234,567 (thousands groups only, so "3,4" stays two numbers) or 1234, then decimals, a fraction bar or an exponent
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?(?:[eE][-+]?\d+)?|-?\.\d+"
NUMBER_RE = re.compile(rf"(?<![\w.])(?:{_NUMBER})(?![\w])")
_FRAC_RE = re.compile(r"\\[dt]?frac\{\s*(-?\d+)\s*\}\{\s*(-?\d+)\s*\}")
_ANSWER_IS_RE = re.compile(r"answer\s*(?:is|:|=)\s*", re.IGNORECASE)
_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")
_BRACE_RE = re.compile(r"[{}]")
_WORD_RE = re.compile(r"[^\s$]+")


def _closing_braces(text: str) -> dict[int, int]:
    """{position of a '{': position of its matching '}'} for every balanced pair, in one pass."""
    pairs, stack = {}, []
    for m in _BRACE_RE.finditer(text):
        if m.group() == "{":
            stack.append(m.start())
        elif stack:
            pairs[stack.pop()] = m.start()
    return pairs


def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (nested braces allowed) or ``\boxed X``; None when there is none.
    Linear in the text's length (a completion of nested ``\boxed{\boxed{...`` is read in one pass).

    >>> last_boxed(r"so $\boxed{\frac{1}{2}}$ and not \boxed{3")
    '\\frac{1}{2}'
    """
    closing = None
    for match in reversed(list(_BOXED_RE.finditer(text))):
        start = match.end()
        if start < len(text) and text[start] == "{":
            if closing is None:
                closing = _closing_braces(text)
            if start in closing:
                return text[start + 1:closing[start]].strip()
            continue  # unbalanced: try an earlier one
        word = _WORD_RE.match(text, start)
        if match.group().endswith((" ", "\t")) and word:
            return word.group()
    return None


def after_hashes(text: str) -> str | None:
    """The rest of the line after the last ``####`` (GSM8K's answer marker); None when absent.

    >>> after_hashes("3 + 4 = 7\\n#### 7")
    '7'
    """
    idx = text.rfind("####")
    if idx < 0:
        return None
    rest = text[idx + 4:].strip().splitlines()
    return rest[0].strip() if rest else ""


def marked_number(text: str) -> str | None:
    """The first number after the last ``####``, and nothing else (a completion without the marker gives None).

    >>> marked_number("3+5=8-2=6####6"), marked_number("3+5=8-2=6")
    ('6', None)
    """
    part = after_hashes(text)
    found = numbers(part) if part is not None else []
    return found[0] if found else None


def _normalise(text: str) -> str:
    text = text.replace("\u2212", "-").replace("\\!", "").replace("\\,", "")
    return _FRAC_RE.sub(lambda m: f"{m.group(1)}/{m.group(2)}", text)


def numbers(text: str) -> list[str]:
    """All numbers in ``text`` in order, commas removed (``\\frac{a}{b}`` with integers counts as a/b).

    >>> numbers("1,234 apples and 5.5 pears, -3 and 1/2.")
    ['1234', '5.5', '-3', '1/2']
    """
    return [m.group().replace(",", "") for m in NUMBER_RE.finditer(_normalise(text))]


def final_number(text: str) -> str | None:
    """The number a solution ends on: inside the last \\boxed{}, else after ####, else after "answer is", else the last.

    >>> final_number("The answer is 12. Then 3 more.")
    '12'
    >>> final_number("7 + 5 = 12.")
    '12'
    """
    for part in (last_boxed(text), after_hashes(text)):
        if part is not None:
            found = numbers(part)
            if found:
                return found[-1]
    marks = list(_ANSWER_IS_RE.finditer(text))
    if marks:
        found = numbers(text[marks[-1].end():])
        if found:
            return found[0]
    found = numbers(text)
    return found[-1] if found else None


def parse_number(text: str | int | float) -> Fraction | None:
    """Exact value of a number string (int, decimal, a/b, exponent, commas, $ and trailing period allowed); else None.

    >>> parse_number("1,250.50"), parse_number("3/4"), parse_number("x")
    (Fraction(2501, 2), Fraction(3, 4), None)
    """
    if isinstance(text, bool):
        return None
    if isinstance(text, (int, float)):
        try:
            return Fraction(text)
        except (ValueError, OverflowError):
            return None
    s = _normalise(str(text)).strip().replace(",", "").replace("$", "").strip()
    s = s.rstrip(".").strip()
    exponent = re.search(r"[eE]([-+]?\d+)$", s)
    if exponent and abs(int(exponent.group(1))) > 400:  # Fraction("1e999999999") would build a gigantic integer
        return None
    try:
        value = Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return value
