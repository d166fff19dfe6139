"""A tiny randomly initialised Llama-style model and a word-level tokenizer with a chat template, for fast tests.

``save_tiny(folder)`` writes both so ``prepo.models.load_model_and_tokenizer(folder)`` (and ``model.name_or_path``) load them.

``build_tokenizer()`` / ``build_model(tok)``: a byte-level BPE tokenizer (real merges, offsets) with a ChatML template,
trained in milliseconds, and a random Llama sized for it. Nothing is downloaded.
"""
from __future__ import annotations

import pytest
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


# -----------------------------------------------------------------------------------------------------------------
BPE_SPECIALS = ["<pad>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
_CORPUS = [
    "What is 12 + 7? The answer is 19.", "Compute 3 * 4 = 12 and 45 - 17 = 28.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May.",
    "Find the number of minutes the walk takes her, including the minutes spent in the coffee shop.",
    "Answer with a single number. You are a tiny test model. system user assistant",
    "Let $x$ be a real number such that \\frac{1}{2} + x = 3. Put the answer in \\boxed{}.",
] * 3


def build_tokenizer(vocab_size: int = 400):
    """Byte-level BPE (GPT-2 style pre-tokenisation, real merges) wrapped as a fast tokenizer with a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=BPE_SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<|im_end|>",
                                   bos_token="<|im_start|>", unk_token=None)
    fast.chat_template = CHATML_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_model(tokenizer, seed: int | None = None, *, hidden: int = 64, layers: int = 2, init: float = 0.2):
    """A random LlamaForCausalLM for ``tokenizer`` (fp32, eval mode); a larger ``init`` gives peakier logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, initializer_range=init, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    if seed is not None:
        torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_model_folder(folder, *, hidden: int = 32):
    """A BPE tokenizer and a random model (fresh seed) saved to ``folder``, loadable as ``model.name_or_path``."""
    import random

    tok = build_tokenizer()
    build_model(tok, seed=random.randrange(10**6), hidden=hidden).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a busy 2-core machine OpenMP waits cost seconds a test.
    Test modules that run them import it (``from tiny_lm import one_thread``) to apply it to all their tests."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
