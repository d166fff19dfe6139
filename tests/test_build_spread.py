"""benchmarks.rl.build_spread: a recipe built under two kernel settings, shortened to a few steps: the pinned build
is reproducible, each row's probe NLL matches a plain float64 recomputation, and bad variants are refused."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from benchmarks.rl import build_spread


def test_rows_and_table(tmp_path, monkeypatch):
    monkeypatch.setattr(build_spread, "RESULTS_DIR", tmp_path)
    a = build_spread.build_one("tiny-arith", 0, "pinned", steps=3, per_tier=2)
    b = build_spread.build_one("tiny-arith", 0, "pinned", steps=3, per_tier=2)
    assert a["sha256"] == b["sha256"] and a["probe_nll"] == b["probe_nll"]    # the pinned build is deterministic
    assert 0.0 < a["probe_nll"] < 2 * math.log(64) and 0.0 <= a["greedy"] <= 1.0
    assert build_spread.main(["--seeds", "0", "--variants", "pinned,unpinned", "--steps", "3", "--per-tier", "2",
                              "--save"]) == 0
    text = (tmp_path / "build-spread-tiny-arith.md").read_text()
    assert f"| 0 | pinned | `{a['sha256'][:16]}` | {a['probe_nll']:.4f} |" in text and "| 0 | unpinned |" in text


def test_probe_nll_against_float64():
    from prepo.tasks.tiny_model import build_tokenizer, recipe_for, supervised_batches
    from tiny_lm import tiny_llama

    recipe = recipe_for("tiny-arith")
    tok = build_tokenizer(recipe.task)
    model = tiny_llama(vocab_size=len(tok), seed=0).eval()
    got = build_spread.probe_nll(model, tok, recipe, batches=2)
    num = den = 0.0
    probe = dataclasses.replace(recipe, seed=build_spread.PROBE_SEED, steps=2)
    with torch.no_grad():
        for ids, w in supervised_batches(probe, tok):
            logits = model(input_ids=ids, attention_mask=ids != tok.pad_token_id).logits.double()
            logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
            mask = (w[:, 1:] == 1.0).double()
            num += float(-(logp * mask).sum())
            den += float(mask.sum())
    assert got == pytest.approx(num / den, rel=1e-5)


def test_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        build_spread.build_one("tiny-arith", 0, "fastest", steps=1, per_tier=1)
