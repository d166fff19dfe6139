"""Chat-format prompts (TRL/verl rows: a string or a list of messages) to token ids plus PREPO's perplexity score mask.

Shared by the TRL and verl integrations; imports neither framework. The score span is prepo.tasks.prompts.score_mask.
"""
from __future__ import annotations

from prepo.tasks.prompts import SCORE_SPANS, score_mask


def encode_prompt(processing_class, prompt, *, span: str = "question", chat_template=None, tools=None,
                  chat_template_kwargs: dict | None = None) -> tuple[list[int], list[int]]:
    """Token ids of a prompt as TRL's ``GRPOTrainer`` tokenizes it, and the 0/1 mask of the ids whose perplexity counts.

    A conversational prompt (list of messages) goes through the chat template with the generation prompt; a plain
    string is tokenized with the tokenizer's special tokens. ``span="question"`` scores only the tokens that overlap
    the last user message's text (found by character offsets, so the template and the system prompt do not dominate),
    ``"prompt"`` every token after the first. ``mask[0]`` is always 0 (the first token has no prediction).
    """
    if span not in SCORE_SPANS:
        raise ValueError(f"span must be one of {SCORE_SPANS}, got {span!r}")
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    if isinstance(prompt, str):
        text, question, special = prompt, prompt, True
    elif isinstance(prompt, list) and all(isinstance(m, dict) for m in prompt):
        text = processing_class.apply_chat_template(prompt, tools=tools, chat_template=chat_template,
                                                    add_generation_prompt=True, tokenize=False,
                                                    **(chat_template_kwargs or {}))
        users = [m.get("content") for m in prompt if m.get("role") == "user"]
        question, special = (users[-1] if users else None), False
    else:
        raise TypeError(f"prompt must be a string or a list of chat messages, got {type(prompt).__name__}")
    enc = tokenizer(text, add_special_tokens=special, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    start = end = 0
    if span == "question":
        start = text.rfind(question) if isinstance(question, str) and question else -1
        if start < 0:
            raise ValueError("prompt: no user message text found verbatim in the rendered prompt; "
                             "use the 'prompt' score span")
        end = start + len(question)
    mask = score_mask(enc["offset_mapping"], span, start, end)
    if not any(mask):
        raise ValueError(f"prompt: no token to score (span={span!r}, {len(ids)} tokens)")
    return ids, mask
