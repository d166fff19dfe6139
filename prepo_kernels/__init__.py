"""prepo_kernels: fused per-token log-probs, entropies and perplexities from logits or hidden states.

Drop-in torch functions with autograd; Triton on CUDA, C++ on CPU, plain torch everywhere (see ``dispatch``).
"""
from prepo_kernels._checks import IGNORE_INDEX  # a target that is not scored: every op's default ignore_index
from prepo_kernels.logprobs_entropy import logprobs_and_entropy, token_entropy, token_logprobs
from prepo_kernels.logprobs_entropy_native import cpu_capability, native_available
from prepo_kernels.sequence_perplexity import sequence_perplexity
from prepo_kernels.dispatch import BACKENDS
from prepo_kernels.linear_logprobs_entropy import linear_logprobs_and_entropy, linear_sequence_perplexity
from prepo_kernels import hf  # noqa: E402  (Hugging Face glue; imports no transformers itself)

__all__ = [
    "BACKENDS",
    "IGNORE_INDEX",
    "cpu_capability",
    "hf",
    "linear_logprobs_and_entropy",
    "linear_sequence_perplexity",
    "logprobs_and_entropy",
    "native_available",
    "sequence_perplexity",
    "token_entropy",
    "token_logprobs",
]
__version__ = "0.1.0"
