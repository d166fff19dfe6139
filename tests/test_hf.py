"""pk.hf.causal_lm_logprobs_and_entropy on tiny random Llama / Granite models vs the model's own logits path."""
import pytest
import torch
from torch import nn

import prepo_kernels as pk
from reference import ref_logprobs_entropy

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN = 101, 32


def _config(cls, tied):
    return cls(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               tie_word_embeddings=tied, attn_implementation="eager")


def _llama(head):
    model = transformers.LlamaForCausalLM(_config(transformers.LlamaConfig, tied=head == "tied"))
    if head == "bias":  # an untied head with a bias, which the model's own forward then uses too
        model.lm_head = nn.Linear(HIDDEN, VOCAB, bias=True)
        nn.init.normal_(model.lm_head.bias)
    assert (model.lm_head.weight is model.model.embed_tokens.weight) == (head == "tied")
    return model


def _batch(B=3, T=9):
    """Left-padded batch; targets = next tokens at completion positions, -100 on prompt, padding and last."""
    ids = torch.randint(0, VOCAB, (B, T))
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :3] = 0
    mask[2, :1] = 0
    targets = torch.full((B, T), -100)
    targets[:, :-1] = ids[:, 1:]
    targets[:, :2] = -100                   # "prompt"
    targets[mask == 0] = -100
    targets[0, 5] = -100
    return ids, mask, targets


def _reference(model, ids, mask, targets, temperature, **kw):
    logits = model(input_ids=ids, attention_mask=mask, **kw).logits
    return ref_logprobs_entropy(logits.double(), targets, temperature)


def _check_against_model(model, backend, temperature=0.8, via_model_forward=False, **kw):
    ids, mask, targets = _batch()
    a, b = torch.randn(2, *targets.shape)
    lp, ent = pk.hf.causal_lm_logprobs_and_entropy(model, ids, mask, targets, temperature, backend,
                                                   via_model_forward=via_model_forward, **kw)
    assert lp.shape == ent.shape == targets.shape and lp.dtype == ent.dtype == torch.float32
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad((a * lp).sum() + (b * ent).sum(), params, allow_unused=True)
    rlp, rent = _reference(model, ids, mask, targets, temperature, **kw)
    ref_grads = torch.autograd.grad((a.double() * rlp).sum() + (b.double() * rent).sum(), params, allow_unused=True)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=2e-5)
    assert (lp[targets == -100] == 0).all() and (ent[targets == -100] == 0).all()
    for (name, _), g, gr in zip(model.named_parameters(), grads, ref_grads):
        if gr is None:
            assert g is None or (g == 0).all(), name
            continue
        torch.testing.assert_close(g.double(), gr.double(), rtol=1e-4, atol=1e-5 * gr.abs().max().item() + 1e-8,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("head", ["tied", "untied", "bias"])
def test_llama_matches_model_logits_including_gradients(head):
    _check_against_model(_llama(head), "auto")


@pytest.mark.parametrize("head", ["tied", "bias"])
def test_via_model_forward_matches_model_logits_including_gradients(head):
    """The path for FSDP2-sharded models: the whole model's forward runs, the body's output comes from a hook."""
    model = _llama(head)
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs.get("logits_to_keep")),
                                with_kwargs=True)
    _check_against_model(model, "auto", via_model_forward=True)
    assert calls[0] == 1  # the model's own head ran on the last position only


def test_every_backend(backend):
    _check_against_model(_llama("bias"), backend, temperature=1.3)


def test_position_ids_are_forwarded():
    model = _llama("untied")
    ids, mask, targets = _batch()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0) * 3  # spaced out: RoPE ignores a mere shift
    lp, ent = pk.hf.causal_lm_logprobs_and_entropy(model, ids, mask, targets, position_ids=position_ids)
    rlp, rent = _reference(model, ids, mask, targets, 1.0, position_ids=position_ids)
    torch.testing.assert_close(lp.double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.double(), rent, rtol=1e-5, atol=2e-5)
    # and they matter: default positions give other numbers
    lp0, _ = pk.hf.causal_lm_logprobs_and_entropy(model, ids, mask, targets)
    assert not torch.allclose(lp0[1], lp[1])


def test_logits_scaling_is_folded_into_temperature():
    config = _config(transformers.GraniteConfig, tied=False)
    config.logits_scaling = 3.0
    config.embedding_multiplier = 2.0
    _check_against_model(transformers.GraniteForCausalLM(config), "torch", temperature=0.7)


def test_rejects_models_it_cannot_serve():
    ids, mask, targets = _batch()
    with pytest.raises(ValueError, match="head"):
        pk.hf.causal_lm_logprobs_and_entropy(nn.Linear(3, 3), ids, mask, targets)
    model = _llama("untied")
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="softcapping"):
        pk.hf.causal_lm_logprobs_and_entropy(model, ids, mask, targets)
    with pytest.raises(ValueError, match="targets"):
        pk.hf.causal_lm_logprobs_and_entropy(_llama("tied"), ids, mask, targets[:, :-1])
