"""Examples to prompts: the prompt format of each dataset (``PromptFormat.for_dataset``), encoding through the chat
template, and the score span: the mask of prompt tokens whose perplexity PREPO scores (``score_mask``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Sequence

from prepo.batching import TokenSeq
from prepo.tasks.arith import ARITH_SYSTEM_PROMPT
from prepo.tasks.example import Example

SCORE_SPANS = ("question", "prompt")  # which prompt tokens PREPO's perplexity scores


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

    @classmethod
    def for_dataset(cls, name: str, *, system_prompt: str | None = None,
                    prompt_template: str | None = None) -> PromptFormat:
        """The format of the dataset called ``name``: a built-in task's own (``FORMATS``: arith's worked turns and
        reply prefix), else the plain one; ``system_prompt`` / ``prompt_template``, when not None, replace its own.

        >>> PromptFormat.for_dataset("arith").response_prefix
        '{expr} ='
        >>> PromptFormat.for_dataset("gsm8k", prompt_template="Q: {question}")
        PromptFormat(system_prompt=None, prompt_template='Q: {question}', few_shot=(), response_prefix='')
        """
        fmt = FORMATS.get(name, cls())
        given = {"system_prompt": system_prompt, "prompt_template": prompt_template}
        return replace(fmt, **{k: v for k, v in given.items() if v is not None})


# SmolLM2-135M-Instruct rambles on "What is 7 + 7?" (add1 pass rate 0.1-0.3 at T=0.7, 16 tokens); three worked turns
# and the reply started as "7 + 7 =" make it answer with one number and stop (add1: 0.90, 99% finished).
ARITH_FORMAT = PromptFormat(
    system_prompt=ARITH_SYSTEM_PROMPT,
    few_shot=(("What is 3 + 5?", "3 + 5 = 8"), ("What is 9 - 4?", "9 - 4 = 5"), ("What is 6 * 3?", "6 * 3 = 18")),
    response_prefix="{expr} =")
# the built-in tasks with a format of their own; tiny-arith and tiny-chain use the plain chat template they were
# trained on (prepo.tasks.tiny_model), files the plain one with the config's system prompt and template
FORMATS: dict[str, PromptFormat] = {"arith": ARITH_FORMAT}


def score_mask(offsets: Sequence[tuple[int, int]], span: str, start: int = 0, end: int = 0) -> list[int]:
    """The 0/1 mask of the prompt tokens whose perplexity counts, from the tokens' character ``offsets``: ``"prompt"``
    every token after the first, ``"question"`` the tokens after the first that overlap the characters [start, end).

    >>> score_mask([(0, 3), (3, 5), (5, 9), (9, 10)], "question", 4, 9)
    [0, 1, 1, 0]
    >>> score_mask([(0, 3), (3, 5)], "prompt")
    [0, 1]
    """
    if span not in SCORE_SPANS:
        raise ValueError(f"span: expected one of {SCORE_SPANS}, got {span!r}")
    if span == "prompt":
        return [0] + [1] * (len(offsets) - 1)
    return [int(t > 0 and e > s and s < end and e > start) for t, (s, e) in enumerate(offsets)]


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
        ids = list(enc["input_ids"])
        mask = score_mask(enc["offset_mapping"], score_span, q_start, q_end)
        if not any(mask):
            raise ValueError(f"examples: {ex.id!r} has no scorable tokens (score_span={score_span!r})")
        out.append(TokenSeq(ids, mask))
    return out
