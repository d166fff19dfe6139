"""HFEngine's shared-prefix generation: a template common to the chunk runs once, outputs unchanged."""
import random

import pytest
import torch

from prepo.rollout import HFEngine, _common_prefix_length
from tiny_lm import build_model, build_tokenizer, one_thread  # noqa: F401 (autouse fixture)


def test_common_prefix_length():
    assert _common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert _common_prefix_length([[1, 2, 3], [1, 2, 3]]) == 2      # each row keeps one token of its own
    assert _common_prefix_length([[7, 1], [8, 1]]) == 0


def test_shared_prefix_generation_equals_plain_generation():
    tok = build_tokenizer()
    model = build_model(tok, seed=random.randrange(10**6), hidden=32, init=0.5)
    template = [{"role": "system", "content": "Answer with a single number."},
                {"role": "user", "content": "What is 3 + 5?"}, {"role": "assistant", "content": "8"}]
    questions = [f"What is {random.randint(1, 99)} + {random.randint(1, 99)}?" for _ in range(5)]
    prompts = [tok.apply_chat_template(template + [{"role": "user", "content": q}], tokenize=True,
                                       add_generation_prompt=True) for q in questions]
    prompts = [list(p["input_ids"]) if hasattr(p, "keys") else list(p) for p in prompts]
    shared = _common_prefix_length(prompts)
    assert shared >= 16

    first_lengths = []

    def spy(module, args, kwargs):  # a hook, not a wrapper: generate() inspects forward's signature
        ids = kwargs.get("input_ids", args[0] if args else None)
        first_lengths.append(None if ids is None else ids.shape[1])

    plain = HFEngine(model, tok, share_prefix=0).generate(prompts, n=3, max_new_tokens=6, temperature=0.0)
    handle = model.register_forward_pre_hook(spy, with_kwargs=True)
    cached = HFEngine(model, tok, share_prefix=16).generate(prompts, n=3, max_new_tokens=6, temperature=0.0)
    handle.remove()
    assert first_lengths[0] == shared                       # the prefix ran once, on its own
    assert [r.completion_ids for r in cached] == [r.completion_ids for r in plain]
    assert [(r.prompt_index, r.sample_index) for r in cached] == [(r.prompt_index, r.sample_index) for r in plain]
    with pytest.raises(ValueError, match="share_prefix"):
        HFEngine(model, tok, share_prefix=-1)
