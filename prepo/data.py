"""Training and evaluation examples: dataset files (JSONL, Parquet, saved HF datasets), presets for the math benchmarks,
the built-in synthetic ``arith`` task, and prompt encoding with the mask of tokens whose perplexity PREPO scores.
"""
from __future__ import annotations

import json
import math
import random
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from prepo.answers import after_hashes, last_boxed
from prepo.batching import TokenSeq

VERIFIERS = ("numeric", "marked", "math")  # prepo.rewards.REWARDS


@dataclass(frozen=True)
class Example:
    """One prompt with its gold answer; ``verifier`` names the reward that checks it (see prepo.rewards)."""

    id: str
    question: str
    answer: str
    verifier: str = "numeric"
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self):
        for name in ("id", "question", "answer"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name}: expected str, got {type(getattr(self, name)).__name__}")
        if self.verifier not in VERIFIERS:
            raise ValueError(f"verifier: expected one of {VERIFIERS}, got {self.verifier!r}")


# ---------------------------------------------------------------------------------------------------------------
# answer extractors: gold-answer field value -> answer string
# ---------------------------------------------------------------------------------------------------------------
def _as_text(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):  # JSON NaN / Infinity: no answer a model can give
        raise ValueError(f"expected a finite number, got {value}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # AMC stores 27.0
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value).strip()
    raise ValueError(f"expected a string or number, got {type(value).__name__}")


def _extract_gsm8k(value) -> str:
    found = after_hashes(_as_text(value))
    if not found:
        raise ValueError("no '#### answer' line")
    return found.replace(",", "")


def _extract_boxed(value) -> str:
    found = last_boxed(_as_text(value))
    if not found:
        raise ValueError("no \\boxed{...} answer")
    return found


def _extract_first(value) -> str:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"expected a non-empty list, got {value!r:.60}")
    return _as_text(value[0])


EXTRACTORS: dict[str, Callable[[object], str]] = {
    "gsm8k": _extract_gsm8k, "boxed": _extract_boxed, "first": _extract_first, "identity": _as_text,
}


@dataclass(frozen=True)
class Preset:
    """How one benchmark's rows map onto an Example."""

    prompt_field: str
    answer_field: str
    answer_extractor: str
    verifier: str
    id_field: str | None = None
    meta_fields: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset("question", "answer", "gsm8k", "numeric"),
    "math500": Preset("problem", "answer", "identity", "math", "unique_id", ("level", "subject")),
    "aime24": Preset("problem", "answer", "identity", "math", "id"),
    "amc23": Preset("question", "answer", "identity", "math", "id"),
    "minerva": Preset("problem", "solution", "boxed", "math", "idx", ("type",)),
    "olympiadbench": Preset("question", "final_answer", "first", "math", "id", ("subfield",)),
}
# folder / file names that identify a preset (lower case, '-' read as '_')
_PRESET_NAMES = {"gsm8k": "gsm8k", "math500": "math500", "math_500": "math500", "aime24": "aime24",
                 "aime_2024": "aime24", "aime2024": "aime24", "amc23": "amc23", "amc2023": "amc23",
                 "minerva": "minerva", "minerva_math": "minerva", "olympiadbench": "olympiadbench",
                 "olympiad_bench": "olympiadbench"}


def detect_preset(path: str | Path) -> str | None:
    """The preset a path belongs to, from its folder name (then its file stem); None when not recognisable."""
    path = Path(path)
    for name in (path.parent.name, path.stem, path.name):
        key = name.lower().replace("-", "_")
        if key in _PRESET_NAMES:
            return _PRESET_NAMES[key]
    return None


# ---------------------------------------------------------------------------------------------------------------
# readers: each yields (location, row) with location "file:line N" / "file:row N" for error messages
# ---------------------------------------------------------------------------------------------------------------
def _utf8(raw: bytes, path: Path, first_line: int = 1) -> str:
    """``raw`` decoded as UTF-8; ValueError naming the file and line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        raise ValueError(f"{path}:line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as "
                         "UTF-8") from None


def _read_json_array(path: Path):
    try:
        rows = json.loads(_utf8(path.read_bytes(), path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:line {exc.lineno}: malformed JSON ({exc.msg})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (no position given)
        raise ValueError(f"{path}: malformed JSON ({str(exc).splitlines()[0][:120]})") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:item {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:item {i}", i, row


def _read_jsonl(path: Path):
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = _utf8(raw, path, lineno)
            if not line.strip():
                continue
            where = f"{path}:line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: malformed JSON ({exc.msg})") from None
            except ValueError as exc:  # e.g. an integer of more digits than Python converts
                raise ValueError(f"{where}: malformed JSON ({str(exc).splitlines()[0][:120]})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, lineno, row


def _read_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the train extra
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield f"{path}:row {i}", i, row


def _read_hf_disk(path: Path, split: str | None):
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"path: {path} is a folder; reading a saved Hugging Face dataset needs `datasets`") from exc
    ds = datasets.load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict
        names = list(ds.keys())
        chosen = split or next((s for s in ("test", "validation", "train") if s in names), names[0] if names else None)
        if chosen not in names:
            raise ValueError(f"split: {chosen!r} is not in {path} (splits: {names})")
        ds = ds[chosen]
    for i, row in enumerate(ds, 1):
        yield f"{path}:row {i}", i, row


def _rows(path: Path, split: str | None):
    if path.is_dir():
        return _read_hf_disk(path, split)
    suffix = path.suffix.lower()
    if suffix == ".json" and _utf8(path.read_bytes(), path).lstrip()[:1] == "[":
        return _read_json_array(path)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise ValueError(f"path: {path}: unsupported file type {suffix!r} (expected .jsonl, .json, .parquet or a "
                     "dataset folder)")


def load_examples(path: str | Path, preset: str | None = None, *, prompt_field: str | None = None,
                  answer_field: str | None = None, answer_extractor: str | Callable | None = None,
                  verifier: str | None = None, limit: int | None = None, split: str | None = None,
                  check_answers: bool = True) -> list[Example]:
    """Read a dataset file into Examples.

    ``preset`` (one of PRESETS) gives the field mapping; when None it is detected from the folder name, and explicit
    ``prompt_field``/``answer_field``/``answer_extractor`` (a name in EXTRACTORS or a callable)/``verifier`` override
    it. A malformed line, a row missing a field or (``check_answers``) a gold answer its verifier cannot read raises
    ValueError naming the file and line. ``split`` picks a split
    of a saved DatasetDict. Ids are ``"<preset or file stem>/<id field or line>"``; meta holds source and line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist")
    if not (path.is_file() or path.is_dir()):  # a FIFO or device would block or never end
        raise ValueError(f"path: {path} is not a regular file or a dataset folder")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: expected a non-negative int, got {limit!r}")
    if preset is None:
        preset = detect_preset(path)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; known: {sorted(PRESETS)}")
    from prepo.rewards import check_gold

    base = PRESETS[preset] if preset else None
    prompt_field = prompt_field or (base.prompt_field if base else None)
    answer_field = answer_field or (base.answer_field if base else None)
    if prompt_field is None or answer_field is None:
        raise ValueError(f"path: cannot tell the format of {path}; pass preset= (one of {sorted(PRESETS)}) "
                         "or prompt_field= and answer_field=")
    extractor = answer_extractor or (base.answer_extractor if base else "identity")
    if isinstance(extractor, str):
        if extractor not in EXTRACTORS:
            raise ValueError(f"answer_extractor: unknown {extractor!r}; known: {sorted(EXTRACTORS)} or a callable")
        extractor = EXTRACTORS[extractor]
    verifier = verifier or (base.verifier if base else "math")
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier: expected one of {VERIFIERS}, got {verifier!r}")
    id_field = base.id_field if base else None
    name = preset or path.stem

    out: list[Example] = []
    for where, lineno, row in _rows(path, split):
        if limit is not None and len(out) >= limit:
            break
        for f in (prompt_field, answer_field):
            if f not in row:
                raise ValueError(f"{where}: missing field {f!r} (has {sorted(row)})")
            if row[f] is None:
                raise ValueError(f"{where}: field {f!r} is null")
        question = row[prompt_field]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field {prompt_field!r} must be a non-empty string")
        try:
            answer = extractor(row[answer_field])
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # a custom extractor may raise any of these
            raise ValueError(f"{where}: field {answer_field!r}: {exc}") from None
        if not isinstance(answer, str):
            raise ValueError(f"{where}: answer_extractor returned {type(answer).__name__}, expected str")
        if check_answers:
            try:
                check_gold(answer, verifier)
            except ValueError as exc:
                raise ValueError(f"{where}: field {answer_field!r}: {exc}") from None
        key = row.get(id_field) if id_field else None
        meta = {"source": str(path), "line": lineno}
        meta.update({k: row[k] for k in (base.meta_fields if base else ()) if k in row})
        out.append(Example(id=f"{name}/{key if key is not None else lineno}", question=question, answer=answer,
                           verifier=verifier, meta=meta))
    return out


# ---------------------------------------------------------------------------------------------------------------
# the built-in synthetic task
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ArithTier:
    """Expressions ``x0 op x1 [op x2]`` with operand i drawn from ``ranges[i]`` and each op from ``ops``.

    A two-operand subtraction puts the larger operand first and any expression with a negative value is redrawn:
    answers are never negative (the small model handles those worst).
    """

    ranges: tuple[tuple[int, int], ...]
    ops: str


# easiest first, by the pass rate of SmolLM2-135M-Instruct with ARITH_FORMAT (10 problems x 8 samples, T=0.7, 16 tokens)
ARITH_TIERS: dict[str, ArithTier] = {
    "add1": ArithTier(((1, 9), (1, 9)), "+"),              # 1-digit + 1-digit            0.84
    "mul1": ArithTier(((2, 9), (2, 9)), "*"),              # 1-digit * 1-digit            0.79
    "sub1": ArithTier(((1, 9), (1, 9)), "-"),              # 1-digit - 1-digit, >= 0      0.65
    "add2": ArithTier(((10, 99), (1, 9)), "+"),            # 2-digit + 1-digit            0.31
    "mul2": ArithTier(((10, 99), (2, 9)), "*"),            # 2-digit * 1-digit            0.28
    "add2x2": ArithTier(((10, 99), (10, 99)), "+-"),       # 2-digit +/- 2-digit          0.21
    "mixed": ArithTier(((1, 20), (2, 9), (2, 9)), "+-*"),  # two operators, precedence    0.03
    "add3": ArithTier(((100, 999), (100, 999)), "+-"),     # 3-digit +/- 3-digit          0.00
}
ARITH_QUESTION = "What is {expr}?"
ARITH_SYSTEM_PROMPT = "Answer with a single number."


@dataclass(frozen=True)
class PromptFormat:
    """How examples are turned into prompts: the keyword arguments of ``encode_prompts`` (and ``evaluate``)."""

    system_prompt: str | None = None
    prompt_template: str = "{question}"
    few_shot: tuple[tuple[str, str], ...] = ()
    response_prefix: str = ""

    def as_kwargs(self) -> dict:
        return {"system_prompt": self.system_prompt, "prompt_template": self.prompt_template,
                "few_shot": self.few_shot, "response_prefix": self.response_prefix}


# SmolLM2-135M-Instruct rambles on "What is 7 + 7?" (add1 pass rate 0.1-0.3 at T=0.7, 16 tokens); three worked turns
# and the reply started as "7 + 7 =" make it answer with one number and stop (add1: 0.90, 99% finished).
ARITH_FORMAT = PromptFormat(
    system_prompt=ARITH_SYSTEM_PROMPT,
    few_shot=(("What is 3 + 5?", "3 + 5 = 8"), ("What is 9 - 4?", "9 - 4 = 5"), ("What is 6 * 3?", "6 * 3 = 18")),
    response_prefix="{expr} =")
ARITH_SPLITS = ("train", "eval")
_EVAL_BUCKETS = 10  # a question is held out (split "eval") when crc32(question) % 10 == 0: about 10% of each tier


def _arith_value(operands: list[int], ops: list[str]) -> int:
    """Exact value with * before + and -, left to right (an independent reading of the same expression)."""
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= x
        else:
            signs.append(op)
            terms.append(x)
    total = terms[0]
    for op, t in zip(signs, terms[1:]):
        total = total + t if op == "+" else total - t
    return total


def _arith_draw(tier: ArithTier, rng: random.Random) -> tuple[str, int]:
    """(expression, exact value) for one random problem of ``tier``."""
    while True:
        operands = [rng.randint(lo, hi) for lo, hi in tier.ranges]
        ops = [rng.choice(tier.ops) for _ in operands[1:]]
        if len(operands) == 2 and ops[0] == "-" and operands[0] < operands[1]:
            operands.reverse()
        value = _arith_value(operands, ops)
        if value >= 0:
            return " ".join(str(operands[0]) if i == 0 else f"{ops[i - 1]} {x}" for i, x in enumerate(operands)), value


def arith_split_of(question: str) -> str:
    """"eval" for the held-out ~10% of the question space, "train" for the rest (stable across runs and machines)."""
    return "eval" if zlib.crc32(question.encode()) % _EVAL_BUCKETS == 0 else "train"


def draw_examples(task: str, n: int, seed: int, tiers: Sequence[str] | None, known: Sequence[str],
                  draw: Callable[[str, random.Random], tuple[str, str, dict]], *, split: str | None = None,
                  weights: Sequence[float] | None = None, verifier: str = "numeric") -> list[Example]:
    """``n`` examples of a synthetic task: tier names round robin over ``tiers`` (default ``known``), or drawn by
    ``weights``; ``draw(tier, rng)`` gives (question, answer, meta) and is retried until the question lies in
    ``split`` (see arith_split_of). Deterministic for a seed; ids ``<task>-<tier>-<i>``, meta gains ``tier``."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n: expected a non-negative int, got {n!r}")
    tiers = list(known) if tiers is None else list(tiers)
    if not tiers:
        raise ValueError("tiers: empty")
    unknown = [t for t in tiers if t not in known]
    if unknown:
        raise ValueError(f"tiers: unknown {unknown}; known: {list(known)}")
    if split is not None and split not in ARITH_SPLITS:
        raise ValueError(f"split: expected one of {ARITH_SPLITS} or None, got {split!r}")
    if weights is not None and (len(weights) != len(tiers) or min(weights) < 0 or sum(weights) <= 0):
        raise ValueError(f"weights: expected {len(tiers)} non-negative numbers with a positive sum, got {weights!r}")
    rng = random.Random(f"{task}/{seed}/{split}")
    counts = {t: 0 for t in tiers}
    out = []
    for i in range(n):
        name = tiers[i % len(tiers)] if weights is None else rng.choices(tiers, weights)[0]
        for _ in range(10_000):
            question, answer, meta = draw(name, rng)
            if split is None or arith_split_of(question) == split:
                break
        else:  # pragma: no cover - every tier has hundreds of questions in each split
            raise RuntimeError(f"tier {name!r} has no {split} questions")
        out.append(Example(id=f"{task}-{name}-{counts[name]}", question=question, answer=answer,
                           verifier=verifier, meta={"tier": name, **meta}))
        counts[name] += 1
    return out


def _arith_example(tier: str, rng: random.Random) -> tuple[str, str, dict]:
    expr, value = _arith_draw(ARITH_TIERS[tier], rng)
    return ARITH_QUESTION.format(expr=expr), str(value), {"expr": expr}


def make_arith(n: int, seed: int, tiers: Sequence[str] | None = None, *, split: str | None = None) -> list[Example]:
    """``n`` integer-arithmetic examples spread round robin over ``tiers`` (default: all of ARITH_TIERS, easiest
    first), deterministic for a seed. ``split="train"``/``"eval"`` keeps only questions of that part of a fixed
    partition of the question space, so a held-out set never shares a question with training; None draws from all.
    Ids are ``arith-<tier>-<i>`` (i counts within the tier); ``meta`` holds ``tier`` and ``expr`` ("7 + 5").
    """
    return draw_examples("arith", n, seed, tiers, list(ARITH_TIERS), _arith_example, split=split)


# synthetic tasks named by data.train / --data (tiny-arith: prepo.tiny_arith, tiny-chain: prepo.tiny_chain)
BUILTIN_TASKS = ("arith", "tiny-arith", "tiny-chain")


def builtin_tiers(task: str) -> list[str]:
    """The difficulty tiers of a built-in task, easiest first."""
    if task == "arith":
        return list(ARITH_TIERS)
    if task == "tiny-arith":
        from prepo.tiny_arith import TIERS

        return list(TIERS)
    if task == "tiny-chain":
        from prepo.tiny_chain import TIERS as CHAIN_TIERS

        return list(CHAIN_TIERS)
    raise ValueError(f"task: unknown built-in task {task!r}; known: {list(BUILTIN_TASKS)}")


def make_builtin(task: str, n: int, seed: int, tiers: Sequence[str] | None = None, *,
                 split: str | None = None) -> list[Example]:
    """``n`` problems of a built-in task (``make_arith``, ``prepo.tiny_arith.make_tiny_arith``,
    ``prepo.tiny_chain.make_tiny_chain``)."""
    if task == "arith":
        return make_arith(n, seed, tiers, split=split)
    if task == "tiny-arith":
        from prepo.tiny_arith import make_tiny_arith

        return make_tiny_arith(n, seed, tiers, split=split)
    if task == "tiny-chain":
        from prepo.tiny_chain import make_tiny_chain

        return make_tiny_chain(n, seed, tiers, split=split)
    raise ValueError(f"task: unknown built-in task {task!r}; known: {list(BUILTIN_TASKS)}")


# ---------------------------------------------------------------------------------------------------------------
# prompt encoding
# ---------------------------------------------------------------------------------------------------------------
SCORE_SPANS = ("question", "prompt")  # which prompt tokens PREPO's perplexity scores


_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


def _fill(template: str, ex: Example) -> str:
    """``{question}`` and ``{<meta key>}`` placeholders of a response prefix, filled from the example."""
    values = {**{k: str(v) for k, v in ex.meta.items()}, "question": ex.question}
    missing = sorted({m for m in _PLACEHOLDER.findall(template) if m not in values})
    if missing:
        raise ValueError(f"response_prefix: example {ex.id!r} has no {missing} (meta keys: {sorted(ex.meta)})")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def _render(tokenizer, question: str, system_prompt, use_chat_template: bool, prompt_template: str, few_shot,
            reply: str):
    """The prompt text and the character span [start, end) of the question inside it."""
    prefix, suffix = prompt_template.split("{question}")
    content = prefix + question + suffix
    if not use_chat_template:
        shots = "".join(f"{prefix}{q}{suffix}\n{a}\n\n" for q, a in few_shot)
        text = (system_prompt + "\n\n" if system_prompt else "") + shots + content
        at = len(text) - len(content) + len(prefix)
        return text + ("\n" + reply if reply else ""), at, at + len(question)
    messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
    for shot_q, shot_a in few_shot:
        messages += [{"role": "user", "content": prefix + shot_q + suffix}, {"role": "assistant", "content": shot_a}]
    messages.append({"role": "user", "content": content})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    at = text.rfind(content)
    if at >= 0:
        at += len(prefix)
    else:  # a template that trims or rewrites the message: find the question itself
        question = question.strip()
        at = text.rfind(question) if question else -1
        if at < 0:
            raise ValueError("tokenizer: the chat template does not copy the question verbatim; "
                             "use score_span='prompt'")
    return text + reply, at, at + len(question)


def encode_prompts(tokenizer, examples: Sequence[Example], *, system_prompt: str | None = None,
                   use_chat_template: bool | None = None, score_span: str = "question",
                   prompt_template: str = "{question}",
                   few_shot: Sequence[tuple[str, str]] = (), response_prefix: str = "") -> list[TokenSeq]:
    """Encode examples as the policy will see them (``TokenSeq``: ids and the perplexity score mask).

    The chat template (when the tokenizer has one and ``use_chat_template`` is not False) wraps an optional system
    message and the user message ``prompt_template.format(question=...)``, with the generation prompt appended.
    ``score_span="question"`` scores only the question's tokens (found by character offsets; the template and system
    prompt would dominate the perplexity otherwise), ``"prompt"`` scores every prompt token after the first.
    ``few_shot`` (question, answer) pairs go before the question as earlier user/assistant turns (never scored);
    ``response_prefix`` starts the assistant's reply, so generation continues it; ``{question}`` and ``{key}`` for
    any key of the example's meta are filled in (arith: ``"{expr} ="``). See ``PromptFormat`` / ``ARITH_FORMAT``.
    """
    if score_span not in SCORE_SPANS:
        raise ValueError(f"score_span: expected one of {SCORE_SPANS}, got {score_span!r}")
    if prompt_template.count("{question}") != 1:
        raise ValueError(f"prompt_template: must contain '{{question}}' exactly once, got {prompt_template!r}")
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if use_chat_template is None:
        use_chat_template = has_template
    elif use_chat_template and not has_template:
        raise ValueError("use_chat_template: the tokenizer has no chat template")
    out = []
    for ex in examples:
        text, q_start, q_end = _render(tokenizer, ex.question, system_prompt, use_chat_template, prompt_template,
                                       few_shot, _fill(response_prefix, ex) if response_prefix else "")
        enc = tokenizer(text, add_special_tokens=not use_chat_template, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        if score_span == "prompt":
            mask = [0] + [1] * (len(ids) - 1)
        else:
            mask = [int(t > 0 and e > s and s < q_end and e > q_start) for t, (s, e) in enumerate(offsets)]
        if not any(mask):
            raise ValueError(f"examples: {ex.id!r} has no scorable tokens (score_span={score_span!r})")
        out.append(TokenSeq(ids, mask))
    return out
