"""Hugging Face glue for the fused linear path: per-token log-probs and entropies of a causal LM, no full logits.

Runs the model's body for the final hidden states, then the fused head only at positions that have a target.
"""
from __future__ import annotations

import torch

from prepo_kernels._checks import IGNORE_INDEX
from prepo_kernels.linear_logprobs_entropy import linear_logprobs_and_entropy


def _head(model) -> torch.nn.Module:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    weight = getattr(head, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ValueError(
            f"model ({type(model).__name__}) has no linear output head: get_output_embeddings() returned {head!r}"
        )
    return head


def _body(model) -> torch.nn.Module:
    """The module that turns input_ids into final hidden states (what the causal LM's forward calls before lm_head)."""
    body = getattr(model, "base_model", model)
    if body is model:
        get = getattr(model, "get_decoder", None)
        body = get() if callable(get) else model
    if body is model:
        raise ValueError(f"cannot find the body of {type(model).__name__} (no base_model / get_decoder())")
    return body


def _logit_temperature(model, temperature: float) -> float:
    """Fold the model's own logit scaling into the temperature; refuse transforms that are not a scale."""
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    if getattr(config, "final_logit_softcapping", None) is not None:
        raise ValueError("models with final_logit_softcapping (tanh on the logits) are not supported by the fused head")
    scale = getattr(config, "logit_scale", None)  # Cohere: logits * logit_scale
    if isinstance(scale, (int, float)) and not isinstance(scale, bool) and scale != 1:
        temperature = temperature / float(scale)
    divisor = getattr(config, "logits_scaling", None)  # Granite: logits / logits_scaling
    if isinstance(divisor, (int, float)) and not isinstance(divisor, bool) and divisor != 1:
        temperature = temperature * float(divisor)
    return temperature


def causal_lm_logprobs_and_entropy(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                                   targets: torch.Tensor, temperature: float = 1.0, backend: str = "auto",
                                   via_model_forward: bool = False, **body_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs and entropies of a Hugging Face causal LM at temperature T, without the full logits.

    Args:
        model: a causal LM (e.g. ``LlamaForCausalLM``); its lm_head may be tied to the embeddings or not, with or
            without bias. ``logit_scale`` / ``logits_scaling`` in its config are honoured.
        input_ids, attention_mask: (B, T) as for ``model(...)``.
        targets: (B, T) int; ``targets[b, t]`` is the token predicted at position t (input_ids shifted left),
            -100 where there is none (prompt, padding, last position). Only those positions go through the head.
        via_model_forward: run ``model(...)`` (logits for the last position only) and take the body's output from a
            forward hook, instead of calling the body directly: for wrappers that gather parameters in the outer
            module's forward (FSDP2 ``fully_shard`` on the whole model); same result.
        body_kwargs: forwarded to the model body (e.g. ``position_ids``); ``use_cache`` defaults to False.
    Returns:
        (logprobs, entropy), float32 (B, T), 0 at ignored positions; differentiable w.r.t. the model parameters.
    """
    head = _head(model)
    body = _body(model)
    temperature = _logit_temperature(model, temperature)
    body_kwargs.setdefault("use_cache", False)
    if via_model_forward:
        out = _body_output_via_model(model, body, input_ids, attention_mask, body_kwargs)
    else:
        out = body(input_ids=input_ids, attention_mask=attention_mask, **body_kwargs)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    weight = head.weight
    if hidden.dtype != weight.dtype:  # e.g. under autocast: use the head's precision
        hidden = hidden.to(weight.dtype)
    return linear_logprobs_and_entropy(hidden, weight, targets, bias=getattr(head, "bias", None),
                                       temperature=temperature, ignore_index=IGNORE_INDEX, backend=backend)


def _body_output_via_model(model, body, input_ids, attention_mask, body_kwargs):
    """The body's output, captured by a hook while the whole model runs (its head on the last position only)."""
    captured = []
    handle = body.register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1, **body_kwargs)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise RuntimeError(f"model ({type(model).__name__}): its forward ran the body {len(captured)} times, expected 1")
    return captured[0]
