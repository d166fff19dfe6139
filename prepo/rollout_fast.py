"""The fast rollout engine for small Llama-architecture models: RolloutEngine as a batched decode loop over the model's
own weights with a preallocated KV cache, free of transformers ``generate``'s per-token Python costs.

Same semantics as HFEngine (prepo.rollout), and with a seed the same samples as HFEngine with the same ``batch_size``:
each step draws from the RNG exactly as ``generate`` does (one ``torch.multinomial`` over every row of the chunk).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .rollout import Rollout, _check_sampling, in_chunks, make_rollout, stop_and_pad_ids

# model types whose decoder layer is Llama's (pre-norm RMSNorm, rotary q/k, grouped-query attention, gated MLP)
SUPPORTED_MODEL_TYPES = ("llama",)
# rows a chunk holds when batch_size is None: as many as keep its KV cache under this many MiB
_CACHE_MIB = 1024
# compact the batch (drop finished rows from the KV cache) once this share of the rows still computed is finished
_COMPACT_SHARE = 0.125


def fast_engine_supports(model) -> tuple[bool, str]:
    """Whether FastEngine can run ``model``, and why not."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in SUPPORTED_MODEL_TYPES:
        return False, f"engine 'fast' runs {SUPPORTED_MODEL_TYPES} models, not {kind!r}"
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in ("default", "linear", "llama3", "yarn", "longrope"):   # position-only: dynamic rope rescales
        return False, f"engine 'fast' does not run rope_type {rope!r}"
    body = getattr(model, "model", None)
    if body is None or not hasattr(body, "layers") or not hasattr(body, "rotary_emb") or not hasattr(model, "lm_head"):
        return False, f"engine 'fast': {type(model).__name__} lacks Llama's model.layers / rotary_emb / lm_head"
    from prepo.distributed import is_sharded

    if is_sharded(model):
        return False, "engine 'fast' does not read FSDP-sharded weights"
    return True, ""


def prefer_fast_engine(model) -> bool:
    """The choice of engine "auto": the fast engine for a model it runs that lives on the CPU (where it is tested and
    measured: results/rollout-speed.md), transformers generate otherwise."""
    first = next(model.parameters(), None)
    return first is not None and first.device.type == "cpu" and fast_engine_supports(model)[0]


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's prepacked matmul (``torch.ops.mkldnn._linear_pointwise``)."""
    return (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class _Linear:
    """``x @ weight.T + bias``. Packed: oneDNN's matmul on a weight reordered once to its blocked layout, about twice
    as fast as ``F.linear`` (MKL) for the skinny float32 products of a small model's decode step on CPU; the same
    float32 arithmetic up to the order of the sums (logits agree to ~1e-6 relative)."""

    def __init__(self, weight, bias, packed: bool):
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None) if packed else None
        self.weight, self.bias = None if packed else weight, bias    # packed: the reordered copy alone is kept

    def __call__(self, x):
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")


def _concat(*tensors):
    return None if tensors[0] is None else torch.cat(tensors)


class _Weights:
    """The model's decoder weights for the decode loop, q/k/v and gate/up concatenated (one matrix product each
    instead of three and two), optionally packed for oneDNN. Rebuilt when a parameter changes (``stale``)."""

    def __init__(self, model, packed: bool):
        body, config = model.model, model.config
        first = body.layers[0].self_attn
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.scaling = first.head_dim, first.scaling
        self.embed = body.embed_tokens.weight
        self.rotary, self.final_norm = body.rotary_emb, body.norm
        self.lm_head = _Linear(model.lm_head.weight, model.lm_head.bias, packed)
        self.layers = []
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            qkv = _Linear(_concat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                          _concat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias), packed)
            gate_up = _Linear(_concat(m.gate_proj.weight, m.up_proj.weight),
                              _concat(m.gate_proj.bias, m.up_proj.bias), packed)
            self.layers.append((layer.input_layernorm, qkv, _Linear(a.o_proj.weight, a.o_proj.bias, packed),
                                layer.post_attention_layernorm, gate_up, m.act_fn,
                                _Linear(m.down_proj.weight, m.down_proj.bias, packed)))
        self.signature = _signature(model)

    def stale(self, model) -> bool:
        return _signature(model) != self.signature

    def kv_bytes_per_token(self) -> int:
        return 2 * len(self.layers) * self.kv_heads * self.head_dim * self.embed.element_size()


def _signature(model) -> tuple:
    """Changes when any parameter is replaced or written in place (an optimizer step, load_state_dict)."""
    return tuple((id(t), t.data_ptr(), t._version) for t in model.parameters())


def _rms_norm(norm, x):
    """LlamaRMSNorm's arithmetic (float32 statistics, weight times the input dtype)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(x.dtype)


def _rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


def _attend_step(q, k, v, bias, scaling):
    """One new position a row: q (B, H, 1, D), k / v (B, KV, Tk, D) (views of the cache), bias (B, 1, 1, Tk)
    additive (0 or -inf); scores and softmax in float32. Each key/value head serves its H/KV query heads unrepeated,
    in two batched matrix products (faster here than scaled_dot_product_attention's kernel for one query)."""
    b, h, _, d = q.shape
    kv, tk = k.shape[1], k.shape[2]
    scores = torch.bmm(q.reshape(b * kv, h // kv, d), k.flatten(0, 1).transpose(1, 2)).float()
    probs = (scores.view(b, kv, h // kv, tk) * scaling + bias).softmax(dim=-1).to(v.dtype)
    return torch.bmm(probs.view(b * kv, h // kv, tk), v.flatten(0, 1)).view(b, 1, h * d)


def _attend_prefill(q, k, v, mask, scaling):
    """Whole prompts: q (B, H, T, D), k / v (B, KV, T, D), mask (B, 1, T, T) boolean (True: attend), through
    scaled_dot_product_attention (memory-bounded, the kernel transformers' sdpa attention calls too)."""
    b, h, t, d = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling, enable_gqa=True)
    return out.transpose(1, 2).reshape(b, t, h * d)


def _forward(w: _Weights, ids, positions, caches, start: int, mask):
    """Logits (float32) of the last position of each row. ``ids``/``positions`` (B, T); the keys and values are
    written to columns [start, start + T) of ``caches`` (one (keys, values) pair of (B, KV, columns, D) per layer)
    and attention reads columns [0, start + T) under ``mask``: a boolean (B, 1, T, T) for a prefill from column 0,
    else (T = 1, a decode step) an additive bias (B, 1, 1, start + 1)."""
    b, t = ids.shape
    x = F.embedding(ids, w.embed)
    cos, sin = w.rotary(x, positions)
    cos, sin = cos[:, None], sin[:, None]
    hq, hkv, d = w.heads * w.head_dim, w.kv_heads * w.head_dim, w.head_dim
    end = start + t
    attend = _attend_prefill if mask.dtype == torch.bool else _attend_step
    for (norm1, qkv_proj, o_proj, norm2, gate_up_proj, act, down_proj), (kc, vc) in zip(w.layers, caches):
        qkv = qkv_proj(_rms_norm(norm1, x))
        q = _rotate(qkv[..., :hq].view(b, t, -1, d).transpose(1, 2), cos, sin)
        kc[:, :, start:end] = _rotate(qkv[..., hq:hq + hkv].view(b, t, -1, d).transpose(1, 2), cos, sin)
        vc[:, :, start:end] = qkv[..., hq + hkv:].view(b, t, -1, d).transpose(1, 2)
        x = x + o_proj(attend(q, kc[:, :, :end], vc[:, :, :end], mask, w.scaling))
        gate, up = gate_up_proj(_rms_norm(norm2, x)).chunk(2, dim=-1)
        x = x + down_proj(act(gate) * up)
    return w.lm_head(_rms_norm(w.final_norm, x[:, -1])).float()


def _top_p_filter(scores, top_p: float):
    """-inf outside the nucleus: the smallest top set of tokens whose probabilities sum past ``top_p`` (transformers'
    TopPLogitsWarper rule: sort ascending, drop while the cumulative probability is <= 1 - top_p, keep the top one)."""
    ordered, order = torch.sort(scores, descending=False)
    drop = ordered.softmax(dim=-1).cumsum(dim=-1) <= 1 - top_p
    drop[..., -1] = False
    return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


class FastEngine:
    """Batched sampling over a Llama model's weights, in chunks of ``batch_size`` rows (None: as many as keep the KV
    cache under 1 GiB). Each distinct prompt of a chunk is prefilled once and its cache copied to its samples; rows
    that stop are dropped from the batch as they finish. Temperature 0 is greedy; sampling is pure (temperature, then
    top_p); with a seed the global RNG is untouched, without one it is advanced. Completions are cut after the first
    stop token. Raises ValueError for a model it cannot run (``fast_engine_supports``): use HFEngine there.
    """

    def __init__(self, model, tokenizer, *, batch_size: int | None = None, stop_ids: Sequence[int] | None = None,
                 onednn: bool | None = None):
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size: expected a positive int or None, got {batch_size!r}")
        ok, why = fast_engine_supports(model)
        if not ok:
            raise ValueError(f"model: {why}; use engine 'hf'")
        if onednn not in (None, True, False):
            raise ValueError(f"onednn: expected True, False or None, got {onednn!r}")
        if onednn and not onednn_available():
            raise ValueError("onednn: this torch build has no oneDNN prepacked matmul; pass None or False")
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        # oneDNN's prepacked matmul where it applies (float32 weights on CPU), unless asked otherwise
        self.onednn = onednn
        self._weights: _Weights | None = None
        self.stop_ids, self.pad_id = stop_and_pad_ids(tokenizer, model, stop_ids)

    def sync_weights(self, model) -> None:
        if model is not self.model:
            raise ValueError("model: FastEngine samples from the model it was built with; pass that same object")

    @torch.no_grad()
    def generate(self, prompts: Sequence[list[int]], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[Rollout]:
        _check_sampling(prompts, n, max_new_tokens, temperature, top_p)
        if not prompts:
            return []
        weights = self._current_weights()
        size = self.batch_size
        if size is None:
            per_row = weights.kv_bytes_per_token() * (max(len(p) for p in prompts) + max_new_tokens)
            size = max(1, _CACHE_MIB * 2**20 // per_row)
        stops = set(self.stop_ids)

        def generate_chunk(chunk_prompts, chunk):
            tokens = self._decode(chunk_prompts, weights, max_new_tokens, temperature, top_p)
            return [make_rollout(p, s, t, stops, self.tokenizer) for (p, s), t in zip(chunk, tokens)]

        return in_chunks(prompts, n, size, seed, generate_chunk)

    def _current_weights(self) -> _Weights:
        if self._weights is None or self._weights.stale(self.model):
            self._weights = None   # drop the old copies first: peak memory of one set
            first = next(self.model.parameters())
            packed = self.onednn
            if packed is None:
                packed = first.device.type == "cpu" and first.dtype == torch.float32 and onednn_available()
            self._weights = _Weights(self.model, packed)
        return self._weights

    def _decode(self, prompts, w: _Weights, max_new: int, temperature: float, top_p: float) -> list[list[int]]:
        """Each row's generated tokens (through its first stop token, or ``max_new`` of them)."""
        device = w.embed.device
        # prefill each distinct prompt once, left-padded to the longest
        distinct: dict[tuple, int] = {}
        source = torch.tensor([distinct.setdefault(tuple(p), len(distinct)) for p in prompts], device=device)
        width = max(len(p) for p in distinct)
        ids = torch.full((len(distinct), width), self.pad_id, dtype=torch.long)
        valid = torch.zeros((len(distinct), width), dtype=torch.bool)
        for i, p in enumerate(distinct):
            ids[i, width - len(p):] = torch.as_tensor(p, dtype=torch.long)
            valid[i, width - len(p):] = True
        ids, valid = ids.to(device), valid.to(device)
        positions = (valid.long().cumsum(-1) - 1).clamp_(min=0)
        # a query sees valid keys at or before it; a padding query sees itself (its output is never read)
        causal = torch.ones(width, width, dtype=torch.bool, device=device).tril_()
        seen = ((valid[:, None, :] & causal) | torch.eye(width, dtype=torch.bool, device=device))[:, None]
        columns = width + max_new
        shape = (len(distinct), w.kv_heads, columns, w.head_dim)
        caches = [(w.embed.new_empty(shape), w.embed.new_empty(shape)) for _ in w.layers]
        logits = _forward(w, ids, positions, caches, 0, seen)[source]
        caches = [(k.index_select(0, source), v.index_select(0, source)) for k, v in caches]
        # decode: the rows still computed (``alive``, indices into the chunk) and their key bias over all columns
        rows = len(prompts)
        key_bias = torch.zeros((rows, columns), device=device)
        key_bias[:, :width].masked_fill_(~valid[source], float("-inf"))
        position = positions[source, -1:]
        alive = torch.arange(rows, device=device)
        running = torch.ones(rows, dtype=torch.bool, device=device)
        stops = torch.tensor(self.stop_ids, device=device)
        out = torch.full((rows, max_new), self.pad_id, dtype=torch.long, device=device)
        lengths = torch.full((rows,), max_new, dtype=torch.long, device=device)
        full = torch.ones((rows, logits.shape[-1]), device=device) if temperature > 0 else None
        for step in range(max_new):
            token = self._pick(logits, alive, full, temperature, top_p)
            out[alive, step] = token
            stopped = torch.isin(token, stops) & running   # rows finished earlier still compute until compacted
            lengths[alive[stopped]] = step + 1
            running &= ~stopped
            left = int(running.sum())
            if left == 0 or step == max_new - 1:
                break
            if len(alive) - left >= max(1, _COMPACT_SHARE * len(alive)):
                keep = running.nonzero().squeeze(1)
                alive, token, position, key_bias = alive[keep], token[keep], position[keep], key_bias[keep]
                caches = [(k.index_select(0, keep), v.index_select(0, keep)) for k, v in caches]
                running = running[keep]
            position = position + 1
            end = width + step + 1
            logits = _forward(w, token[:, None], position, caches, end - 1, key_bias[:, None, None, :end])
        return [row[:n] for row, n in zip(out.tolist(), lengths.tolist())]

    @staticmethod
    def _pick(logits, alive, full, temperature: float, top_p: float):
        """The next token of each computed row: argmax at temperature 0; else one ``torch.multinomial`` draw over
        all the chunk's rows (rows no longer computed get a uniform row), as ``generate`` draws, so the RNG advances
        the same way and each row gets the same sample."""
        if temperature == 0:
            return logits.argmax(dim=-1)
        scores = logits / temperature
        if top_p < 1:
            scores = _top_p_filter(scores, top_p)
        full.fill_(1.0)
        full[alive] = scores.softmax(dim=-1)
        return torch.multinomial(full, num_samples=1).squeeze(1)[alive]
