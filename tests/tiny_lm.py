"""A tiny randomly initialised Llama-style model and a word-level tokenizer with a chat template, for fast tests.

``save_tiny(folder)`` writes both so ``prepo.models.load_model_and_tokenizer(folder)`` (and ``model.name_or_path``) load them.
"""
from __future__ import annotations

import torch

SPECIALS = ["<pad>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = [str(d) for d in range(10)] + ["+", "-", "*", "=", "?", ".", ",", ":", "What", "is", "Answer", "with",
                                         "a", "single", "number", "The", "answer", "Compute"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|> {% endif %}"
)


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(),
                                                 pre_tokenizers.Digits(individual_digits=True)])
    tok.decoder = decoders.Fuse()  # digits join back into numbers ("1", "9" -> "19")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<|end|>",
                                   additional_special_tokens=SPECIALS[2:5])
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(vocab_size: int | None = None, *, hidden: int = 32, layers: int = 2, seed: int | None = None):
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = vocab_size or len(SPECIALS) + len(WORDS)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True, pad_token_id=0,
                         bos_token_id=None, eos_token_id=SPECIALS.index("<|end|>"))
    if seed is not None:
        torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = 0
    return model


def save_tiny(folder, *, seed: int | None = None) -> None:
    model = tiny_llama(seed=seed)
    model.save_pretrained(folder, safe_serialization=True)
    tiny_tokenizer().save_pretrained(folder)
