"""Tests for prepo.tasks: benchmark presets on real rows, loader errors, Parquet, the arith task, prompt encoding."""
from __future__ import annotations

import json
import random
import re
import sys
import types
from pathlib import Path

import pytest

from prepo.tasks.arith import ARITH_TIERS, make_arith
from prepo.tasks.example import Example
from prepo.tasks.files import PRESETS, detect_preset, load_examples
from prepo.tasks.prompts import ARITH_FORMAT, PromptFormat, encode_prompts, score_mask
from prepo.tasks.registry import BUILTIN_TASKS, builtin_tiers, make_builtin
from tiny_lm import build_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "data"
# the first five rows of each shared benchmark file, answers read off the files by hand
EXPECTED = {
    "gsm8k": ("gsm8k", ["18", "3", "70000", "540", "20"], "numeric"),
    "math500": ("math500", ["\\left( 3, \\frac{\\pi}{2} \\right)", "p - q", "\\frac{14}{3}", "9", "\\text{Evelyn}"],
                "math"),
    "aime24": ("aime24", ["204", "113", "371", "385", "110"], "math"),
    "amc23": ("amc23", ["27", "36", "45", "3159", "36"], "math"),
    "minerva_math": ("minerva", ["1.6", "4.5e33", "41.8", "20.39", "0.006"], "math"),
    "olympiadbench": ("olympiadbench", ["2", "$\\frac{1}{2 n+2}$", "$2^{1009}$", "2", "$2n-2$"], "math"),
}


@pytest.mark.parametrize("folder", sorted(EXPECTED))
def test_presets_on_real_rows(folder):
    preset, answers, verifier = EXPECTED[folder]
    path = FIXTURES / folder / "test.jsonl"
    assert detect_preset(path) == preset
    auto = load_examples(path)
    named = load_examples(path, preset)
    assert auto == named
    assert [e.answer for e in auto] == answers
    assert all(e.verifier == verifier for e in auto)
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert [e.question for e in auto] == [r[PRESETS[preset].prompt_field] for r in raw]
    assert len({e.id for e in auto}) == 5 and all(e.id.startswith(preset + "/") for e in auto)
    assert [e.meta["line"] for e in auto] == [1, 2, 3, 4, 5]


def test_limit_and_field_overrides(tmp_path):
    path = FIXTURES / "gsm8k" / "test.jsonl"
    assert len(load_examples(path, limit=2)) == 2
    # the answer field read whole, with a custom callable extractor
    ex = load_examples(path, "gsm8k", answer_extractor=lambda v: v.split()[-1], limit=1)[0]
    assert ex.answer == "18"
    # a file the loader cannot recognise needs fields
    plain = tmp_path / "mine.jsonl"
    plain.write_text(json.dumps({"q": "What is 2 + 2?", "a": 4}) + "\n\n" + json.dumps({"q": "1+1?", "a": 2.0}) + "\n")
    with pytest.raises(ValueError, match="preset"):
        load_examples(plain)
    got = load_examples(plain, prompt_field="q", answer_field="a", verifier="numeric", limit=1)
    assert got == [Example("mine/1", "What is 2 + 2?", "4", "numeric")]
    # blank lines are skipped, line numbers stay true
    second = load_examples(plain, prompt_field="q", answer_field="a")[1]
    assert second.meta["line"] == 3 and second.answer == "2" and second.verifier == "math"
    with pytest.raises(ValueError, match=re.escape(f"{plain}:line 1") + ".*non-empty list"):
        load_examples(plain, prompt_field="q", answer_field="a", answer_extractor="first")
    with pytest.raises(ValueError, match=re.escape(f"{plain}:line 3") + ".*'a'"):   # a callable that raises
        load_examples(plain, prompt_field="q", answer_field="a", answer_extractor=lambda v: {4: "4"}[v])
    # a JSON array file reads the same
    array = tmp_path / "mine.json"
    array.write_text(json.dumps([{"q": "What is 2 + 2?", "a": 4}, {"q": "1+1?", "a": 2.0}]))
    assert [(e.id, e.answer) for e in load_examples(array, prompt_field="q", answer_field="a")] == \
           [("mine/1", "4"), ("mine/2", "2")]


@pytest.mark.parametrize("bad_line, message", [
    ('{"question": "q", "answer": "#### 1"', "malformed JSON"),
    ('{"question": "q"}', "missing field 'answer'"),
    ('{"question": "q", "answer": "no marker"}', "####"),
    ('["question", "answer"]', "JSON object"),
    ('{"question": "", "answer": "#### 1"}', "non-empty"),
    ('{"question": "q", "answer": null}', "field 'answer' is null"),
    ('{"question": "q", "answer": ' + "7" * 5000 + "}", "malformed JSON (Exceeds the limit (4300 digits)"),
])
def test_bad_rows_name_file_and_line(tmp_path, bad_line, message):
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    path = folder / "test.jsonl"
    good = json.dumps({"question": "What is 1 + 1?", "answer": "1 + 1 = 2\n#### 2"})
    lineno = random.randint(2, 6)
    path.write_text("\n".join([good] * (lineno - 1) + [bad_line, good]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:line {lineno}") + ".*" + re.escape(message)):
        load_examples(path)


@pytest.mark.parametrize("gold", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("verifier", ["math", "numeric"])
def test_non_finite_gold_is_refused_with_file_and_line(tmp_path, gold, verifier):
    """JSON's NaN read as "nan" made math-verify score \\boxed{ann} 1.0 (sympy: n*a*n)."""
    path = tmp_path / "train.jsonl"
    lines = [json.dumps({"q": f"What is {i} + 1?", "a": i + 1}) for i in range(5)]
    lines[3] = '{"q": "What is 0 / 0?", "a": ' + gold + "}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:line 4: field 'a': expected a finite number, got ")):
        load_examples(path, prompt_field="q", answer_field="a", verifier=verifier)


def test_a_fifo_is_refused_not_read(tmp_path):
    import os
    import signal

    fifo = tmp_path / "train.jsonl"
    os.mkfifo(fifo)
    signal.signal(signal.SIGALRM, lambda *a: pytest.fail("reading the FIFO blocked"))
    signal.alarm(10)
    try:
        with pytest.raises(ValueError, match=re.escape(f"path: {fifo} is not a regular file or a dataset folder")):
            load_examples(fifo, prompt_field="q", answer_field="a")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


def test_gold_answers_are_checked_under_their_verifier_at_load(tmp_path):
    """A gold the verifier cannot read would fail every rollout of that prompt mid-training: refuse it at load."""
    path = tmp_path / "train.jsonl"
    rows = [{"q": f"What is {i} + 1?", "a": str(i + 1)} for i in range(60)]
    rows[49]["a"] = "four"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:line 50: field 'a': gold answer 'four' is not a number")):
        load_examples(path, prompt_field="q", answer_field="a", verifier="numeric")
    assert len(load_examples(path, prompt_field="q", answer_field="a", verifier="math")) == 60  # "four": a symbol
    assert len(load_examples(path, prompt_field="q", answer_field="a", verifier="numeric", check_answers=False)) == 60
    rows[49]["a"] = "$$"  # math-verify reads nothing in it
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:line 50: field 'a': math-verify cannot parse the gold")):
        load_examples(path, prompt_field="q", answer_field="a", verifier="math")


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_non_utf8_data_names_file_and_line(tmp_path, suffix):
    path = tmp_path / f"latin1{suffix}"
    lines = ['{"q": "What is 1 + 1?", "a": "2"}'] * 4
    lines[2] = '{"q": "Caf\xe9: what is 2 + 2?", "a": "4"}'
    text = "\n".join(lines) + "\n"
    if suffix == ".json":
        text = "[\n" + ",\n".join(lines) + "\n]\n"
    path.write_bytes(text.encode("latin-1"))
    line = 3 if suffix == ".jsonl" else 4
    with pytest.raises(ValueError, match=re.escape(f"{path}:line {line}: not UTF-8 text (byte 0xe9)")):
        load_examples(path, prompt_field="q", answer_field="a")


def test_bad_arguments(tmp_path):
    path = FIXTURES / "amc23" / "test.jsonl"
    with pytest.raises(ValueError, match="preset"):
        load_examples(path, "nope")
    with pytest.raises(ValueError, match="answer_extractor"):
        load_examples(path, answer_extractor="nope")
    with pytest.raises(ValueError, match="verifier"):
        load_examples(path, verifier="exact")
    with pytest.raises(FileNotFoundError):
        load_examples(tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported"):
        load_examples(tmp_path / "x.csv", "gsm8k")
    with pytest.raises(ValueError, match="verifier"):
        Example("a", "q", "1", "exact")


def test_parquet_round_trip(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    for folder in ("olympiadbench", "math500"):
        src = FIXTURES / folder / "test.jsonl"
        rows = [json.loads(line) for line in src.read_text().splitlines()]
        out = tmp_path / folder / "test.parquet"
        out.parent.mkdir()
        pq.write_table(pa.Table.from_pylist(rows), out)
        from_parquet, from_jsonl = load_examples(out), load_examples(src)
        assert [(e.id, e.question, e.answer, e.verifier) for e in from_parquet] == \
               [(e.id, e.question, e.answer, e.verifier) for e in from_jsonl]
    # a missing value is reported with its row
    rows[3]["answer"] = None
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist(rows), bad)
    with pytest.raises(ValueError, match=re.escape(f"{bad}:row 4") + ".*answer"):
        load_examples(bad, "math500")


def test_saved_hf_dataset_folder(tmp_path, monkeypatch):
    """The `datasets` path, through a stand-in module (datasets itself is optional and not installed by default)."""
    rows = [{"question": "What is 2 + 3?", "answer": "#### 5"}, {"question": "What is 4 + 4?", "answer": "#### 8"}]
    calls = []

    def load_from_disk(path):
        calls.append(path)
        return {"train": rows[:1], "test": rows}

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_from_disk=load_from_disk))
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    assert [e.answer for e in load_examples(folder)] == ["5", "8"]        # "test" preferred
    assert [e.answer for e in load_examples(folder, split="train")] == ["5"]
    with pytest.raises(ValueError, match="split"):
        load_examples(folder, split="validation")
    assert calls == [str(folder)] * 3


# ---------------------------------------------------------------------------------------------------------------
# arith
# ---------------------------------------------------------------------------------------------------------------
def _reference_value(question: str) -> int:
    """Evaluate "What is a op b [op c]?" independently: shunting-yard over the tokens."""
    tokens = re.fullmatch(r"What is (.*)\?", question).group(1).split()
    prec = {"+": 1, "-": 1, "*": 2}
    out, ops = [], []
    apply = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
    for t in tokens:
        if t in prec:
            while ops and prec[ops[-1]] >= prec[t]:
                b, a = out.pop(), out.pop()
                out.append(apply[ops.pop()](a, b))
            ops.append(t)
        else:
            assert re.fullmatch(r"\d+", t), question
            out.append(int(t))
    while ops:
        b, a = out.pop(), out.pop()
        out.append(apply[ops.pop()](a, b))
    return out[0]


def test_arith_exact_answers_and_tiers():
    seed = random.randrange(10**6)
    n = random.randint(80, 120)
    examples = make_arith(n, seed)
    assert len(examples) == n and len({e.id for e in examples}) == n
    for e in examples:
        assert int(e.answer) == _reference_value(e.question) >= 0, e
        assert e.question == f"What is {e.meta['expr']}?"
        assert e.verifier == "numeric" and e.meta["tier"] in ARITH_TIERS
        assert re.fullmatch(rf"arith-{e.meta['tier']}-\d+", e.id)
        numbers = [int(x) for x in re.findall(r"\d+", e.question)]
        ranges = ARITH_TIERS[e.meta["tier"]].ranges
        assert len(numbers) == len(ranges)
        in_order = all(lo <= x <= hi for x, (lo, hi) in zip(numbers, ranges))
        swapped = " - " in e.question and all(lo <= x <= hi for x, (lo, hi) in zip(numbers[::-1], ranges))
        assert in_order or swapped, e      # a subtraction may put the larger operand first
        assert set(re.findall(r"[-+*]", e.question)) <= set(ARITH_TIERS[e.meta["tier"]].ops)
    counts = {t: sum(e.meta["tier"] == t for e in examples) for t in ARITH_TIERS}
    assert max(counts.values()) - min(counts.values()) <= 1          # round robin


def test_arith_determinism_and_splits():
    seed = random.randrange(10**6)
    a, b = make_arith(40, seed), make_arith(40, seed)
    assert [(e.id, e.question, e.answer) for e in a] == [(e.id, e.question, e.answer) for e in b]
    assert [e.question for e in make_arith(40, seed + 1)] != [e.question for e in a]
    only = make_arith(12, seed, ["mul1", "add1"])
    assert [e.meta["tier"] for e in only] == ["mul1", "add1"] * 6
    train = {e.question for e in make_arith(600, seed, split="train")}
    held = {e.question for e in make_arith(200, seed, split="eval")}
    assert held and not train & held
    with pytest.raises(ValueError, match="tiers"):
        make_arith(3, 0, ["add9"])
    with pytest.raises(ValueError, match="split"):
        make_arith(3, 0, split="test")
    with pytest.raises(ValueError, match="n"):
        make_arith(-1, 0)


# ---------------------------------------------------------------------------------------------------------------
# prompt encoding
# ---------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _scored_text(tok, enc):
    return tok.decode([i for i, m in zip(enc.input_ids, enc.score_mask) if m])


QUESTIONS = ["What is 12 + 7?", "Natalia sold 48 clips in April.", "Let $x$ be \\frac{1}{2}; find x.",
             "Compute 3 * 4", "What is 12 + 7? What is 12 + 7?"]


@pytest.mark.parametrize("system_prompt", [None, "Answer with a single number.", "What is 12 + 7?"])
def test_score_mask_covers_exactly_the_question(tok, system_prompt):
    examples = [Example(f"q{i}", q, "1") for i, q in enumerate(random.sample(QUESTIONS, len(QUESTIONS)))]
    shots = [("What is 3 + 5?", "8")] if system_prompt else []
    encoded = encode_prompts(tok, examples, system_prompt=system_prompt, few_shot=shots)
    for ex, enc in zip(examples, encoded):
        messages = ([{"role": "system", "content": system_prompt}] if system_prompt is not None else [])
        for q, a in shots:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": ex.question})
        expected_ids = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if not isinstance(expected_ids, list):
            expected_ids = expected_ids["input_ids"]
        assert enc.input_ids == list(expected_ids)
        assert len(enc.score_mask) == len(enc.input_ids)
        assert _scored_text(tok, enc) == ex.question
        # the scored tokens are one run ending right before "<|im_end|>" of the last user turn
        on = [i for i, m in enumerate(enc.score_mask) if m]
        assert on == list(range(on[0], on[-1] + 1))
        assert tok.convert_ids_to_tokens(enc.input_ids[on[-1] + 1]) == "<|im_end|>"
        assert tok.convert_ids_to_tokens(enc.input_ids[-1]) == "Ċ"      # generation prompt "assistant\n" ends it
        full = encode_prompts(tok, [ex], system_prompt=system_prompt, few_shot=shots, score_span="prompt")[0]
        assert full.input_ids == enc.input_ids and full.score_mask == [0] + [1] * (len(enc.input_ids) - 1)


def test_template_wrapper_and_no_template(tok):
    ex = Example("a", "What is 12 + 7?", "19")
    [wrapped] = encode_prompts(tok, [ex], prompt_template="Q: {question}\nPut the answer in \\boxed{}.")
    assert _scored_text(tok, wrapped) == ex.question
    assert "boxed" in tok.decode(wrapped.input_ids)
    [plain] = encode_prompts(tok, [ex], use_chat_template=False)
    assert plain.input_ids == tok(ex.question)["input_ids"]
    # the first token can never be scored: with nothing before the question it is dropped
    assert plain.score_mask[0] == 0 and all(plain.score_mask[1:])
    [sysd] = encode_prompts(tok, [ex], use_chat_template=False, system_prompt="Answer with a single number.")
    assert _scored_text(tok, sysd) == ex.question


def test_encode_errors(tok):
    ex = [Example("a", "What is 1 + 1?", "2")]
    with pytest.raises(ValueError, match="score_span"):
        encode_prompts(tok, ex, score_span="all")
    with pytest.raises(ValueError, match="prompt_template"):
        encode_prompts(tok, ex, prompt_template="no placeholder")
    bare = build_tokenizer()
    bare.chat_template = None
    with pytest.raises(ValueError, match="use_chat_template"):
        encode_prompts(bare, ex, use_chat_template=True)
    assert encode_prompts(bare, ex)[0].input_ids == bare(ex[0].question)["input_ids"]   # auto: no template
    one_token = [Example("b", "What", "0")]
    with pytest.raises(ValueError, match="'b'"):
        encode_prompts(bare, one_token)


def test_response_prefix_and_the_arith_format(tok):
    examples = make_arith(6, random.randrange(10**6))
    encoded = encode_prompts(tok, examples, **ARITH_FORMAT.as_kwargs())
    for ex, enc in zip(examples, encoded):
        text = tok.decode(enc.input_ids)
        assert text.endswith("<|im_start|>assistant\n" + ex.meta["expr"] + " =")
        assert text.startswith("<|im_start|>system\n" + ARITH_FORMAT.system_prompt)
        assert all(q in text and a in text for q, a in ARITH_FORMAT.few_shot)
        assert _scored_text(tok, enc) == ex.question          # shots and the reply prefix are never scored
    with pytest.raises(ValueError, match="response_prefix.*'x'.*nope"):
        encode_prompts(tok, [Example("x", "What is 1?", "1")], response_prefix="{nope} =")
    # LaTeX braces are not placeholders; {question} is
    [enc] = encode_prompts(tok, [Example("x", "What is 1?", "1")], response_prefix="\\frac{1}{2} {question}")
    assert tok.decode(enc.input_ids).endswith("assistant\n\\frac{1}{2} What is 1?")
    assert _scored_text(tok, enc) == "What is 1?"


def test_prompt_format_for_dataset():
    """One decision: arith's own format (worked turns, reply prefix), the plain one for every other dataset; a given
    system prompt or template replaces the format's own and keeps the rest."""
    assert PromptFormat.for_dataset("arith") == ARITH_FORMAT
    for name in ("tiny-arith", "tiny-chain", "gsm8k", "mine"):
        assert PromptFormat.for_dataset(name) == PromptFormat()
    mine = PromptFormat.for_dataset("arith", system_prompt="Be brief.", prompt_template="Q: {question}")
    assert (mine.system_prompt, mine.prompt_template) == ("Be brief.", "Q: {question}")
    assert (mine.few_shot, mine.response_prefix) == (ARITH_FORMAT.few_shot, ARITH_FORMAT.response_prefix)
    assert PromptFormat.for_dataset("arith", system_prompt=None).system_prompt == ARITH_FORMAT.system_prompt


def test_score_mask_spans():
    offsets = [(0, 0), (0, 4), (4, 9), (9, 12), (12, 13)]
    assert score_mask(offsets, "question", 5, 12) == [0, 0, 1, 1, 0]   # overlap counts; the first token never does
    assert score_mask(offsets, "prompt") == [0, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="span"):
        score_mask(offsets, "answer")


def test_builtin_task_registry():
    assert BUILTIN_TASKS == ("arith", "tiny-arith", "tiny-chain")
    assert builtin_tiers("arith") == list(ARITH_TIERS)
    for task in BUILTIN_TASKS:
        examples = make_builtin(task, 4, 0, builtin_tiers(task)[:1], split="eval")
        assert len(examples) == 4 and all(e.id.startswith(f"{task}-") for e in examples)
    assert make_builtin("arith", 6, 1) == make_arith(6, 1)
    for bad in (lambda: builtin_tiers("nope"), lambda: make_builtin("nope", 1, 0)):
        with pytest.raises(ValueError, match="unknown built-in task 'nope'"):
            bad()
