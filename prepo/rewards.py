"""Verifiable rewards: 1.0 when a completion's final answer matches the gold answer, else 0.0.

``numeric`` compares the final number exactly; ``math`` runs math-verify (sympy); each under a hard deadline.
"""
from __future__ import annotations

import functools
import logging
import math
import re
import signal
import threading
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Callable, Sequence

from prepo.answers import final_number, marked_number, parse_number

logger = logging.getLogger(__name__)


class RewardError(RuntimeError):
    """A verifier raised on one example (a bug or bad gold data, never a wrong answer)."""

    def __init__(self, example_id: str, message: str):
        super().__init__(f"example {example_id!r}: {message}")
        self.example_id = example_id


class VerifyTimeoutWarning(RuntimeWarning):
    """A verifier ran past its deadline; the completion scored 0."""


# ---------------------------------------------------------------------------------------------------------------
# the rewards: plain functions (completion, answer) -> float
# ---------------------------------------------------------------------------------------------------------------
def numeric_reward(completion: str, answer: str) -> float:
    r"""1.0 when the completion's final number (\boxed{}, ####, "answer is", else the last number) equals ``answer``.

    >>> numeric_reward("7 + 5 = 12.", "12"), numeric_reward("The answer is 1,200.", "1200"), numeric_reward("13", "12")
    (1.0, 1.0, 0.0)
    """
    gold = parse_number(answer)
    if gold is None:
        raise ValueError(f"answer: {answer!r} is not a number (use the 'math' verifier)")
    found = final_number(completion)
    return 1.0 if found is not None and parse_number(found) == gold else 0.0


def marked_reward(completion: str, answer: str) -> float:
    """1.0 when the number right after the completion's last ``####`` equals ``answer`` (no marker: 0.0); for tasks
    whose solutions write intermediate numbers (tiny-chain), so that stopping early never scores by chance.

    >>> marked_reward("3+5=8####8", "8"), marked_reward("3+5=8", "8")
    (1.0, 0.0)
    """
    gold = parse_number(answer)
    if gold is None:
        raise ValueError(f"answer: {answer!r} is not a number (use the 'math' verifier)")
    found = marked_number(completion)
    return 1.0 if found is not None and parse_number(found) == gold else 0.0


_E_NOTATION = re.compile(r"^\s*(-?\d+(?:\.\d+)?)[eE]([-+]?\d+)\s*$")


def _wrap_gold(answer: str) -> str:
    # math-verify extracts from LaTeX environments: a bare gold like "\frac{14}{3}" must be put in one
    if "$" in answer or "\\boxed" in answer:
        return answer
    sci = _E_NOTATION.match(answer)  # "4.5e33" would read as 4.5*e*33: write it as LaTeX
    if sci:
        answer = f"{sci.group(1)} \\times 10^{{{int(sci.group(2))}}}"
    return f"${answer}$"


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str):
    from math_verify import parse

    parsed = parse(_wrap_gold(answer), parsing_timeout=None)
    if not parsed:
        raise ValueError(f"answer: math-verify cannot parse the gold answer {answer!r}")
    return parsed


def math_reward(completion: str, answer: str) -> float:
    r"""1.0 when math-verify finds the completion's answer equivalent to ``answer`` (LaTeX or plain). No deadline here:
    call it through ``verify``.

    >>> math_reward(r"so the result is $\boxed{\frac{1}{2}}$", "0.5"), math_reward(r"$\boxed{3}$", r"\frac{14}{3}")
    (1.0, 0.0)
    """
    from math_verify import parse
    from math_verify import verify as mv_verify

    gold = _parse_gold(answer)
    pred = parse(completion, parsing_timeout=None)
    return 1.0 if pred and mv_verify(gold, pred, timeout_seconds=None) else 0.0


@functools.lru_cache(maxsize=None)
def _warm_math_verify() -> None:
    """Import math-verify and build its parsers once, outside any deadline (a cold start takes seconds)."""
    from math_verify import parse

    parse("$\\frac{1}{2}$", parsing_timeout=None)


REWARDS: dict[str, Callable[[str, str], float]] = {"numeric": numeric_reward, "marked": marked_reward,
                                                  "math": math_reward}
# every verifier runs under the deadline: math runs sympy on model output, and the others read texts of any length
_GUARDED = set(REWARDS)
_WARM_UP = {"math": _warm_math_verify}


def prepare_verifier(kind: str) -> None:
    """Import and warm up a verifier's dependencies once, so a cold start never eats into a deadline."""
    if kind in _WARM_UP:
        _WARM_UP[kind]()


class _Silence(logging.Filter):
    """math-verify warns once that its own (signal, whole-second) timeouts are off: ours replace them."""

    def filter(self, record):
        return not record.getMessage().startswith("Timeout is disabled")


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_Silence())


# ---------------------------------------------------------------------------------------------------------------
# the deadline: SIGALRM in the main thread, a killable worker process elsewhere
# ---------------------------------------------------------------------------------------------------------------
class _Deadline(BaseException):
    """Raised by the alarm; a BaseException so that library code's `except Exception` cannot swallow it."""


def _on_alarm(signum, frame):
    raise _Deadline()


def _with_alarm(fn, args, timeout: float):
    old = signal.signal(signal.SIGALRM, _on_alarm)
    # re-fire every 0.1 s in case a bare `except:` somewhere swallowed the first one
    signal.setitimer(signal.ITIMER_REAL, timeout, 0.1)
    try:
        return fn(*args)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def _in_worker(fn, args, timeout: float):
    global _pool
    import multiprocessing

    with _pool_lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool = _pool
    future = pool.submit(fn, *args)
    try:
        return future.result(timeout=timeout)
    except FutureTimeout:
        with _pool_lock:
            if _pool is pool:
                _pool = None
        for proc in list(getattr(pool, "_processes", {}).values()):
            proc.kill()  # a stuck sympy call cannot be interrupted any other way
        pool.shutdown(wait=False, cancel_futures=True)
        raise _Deadline() from None


def run_with_deadline(fn: Callable, args: tuple, timeout: float):
    """``fn(*args)``, or raise TimeoutError after ``timeout`` seconds.

    In the main thread a SIGALRM interrupts the call; in other threads (signals only reach the main one) it runs in a
    worker process that is killed on time-out, so ``fn`` and ``args`` must be picklable there.
    """
    if not timeout > 0 or not math.isfinite(timeout):
        raise ValueError(f"timeout: expected a finite number of seconds > 0, got {timeout!r}")
    main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    try:
        return _with_alarm(fn, args, timeout) if main else _in_worker(fn, args, timeout)
    except _Deadline:
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} ran past {timeout} s") from None


def verify(completion: str, answer: str, kind: str, *, timeout: float = 5.0) -> float:
    r"""Reward 1.0 or 0.0 for ``completion`` against the gold ``answer`` with verifier ``kind`` ("numeric" | "math").

    A time-out scores 0.0 with a VerifyTimeoutWarning; any other error from the verifier propagates.

    >>> verify("3 + 4 = 7", "7", "numeric"), verify(r"It is $x = \dfrac{6}{2}$.", "3", "math")
    (1.0, 1.0)
    """
    if kind not in REWARDS:
        raise ValueError(f"kind: unknown verifier {kind!r}; known: {sorted(REWARDS)}")
    if not isinstance(completion, str) or not isinstance(answer, str):
        raise TypeError("completion and answer: expected str")
    if kind not in _GUARDED:
        return REWARDS[kind](completion, answer)
    prepare_verifier(kind)
    try:
        return run_with_deadline(REWARDS[kind], (completion, answer), timeout)
    except TimeoutError:
        msg = f"{kind} verifier timed out after {timeout} s on a completion of {len(completion)} chars; scored 0"
        logger.warning(msg)
        warnings.warn(msg, VerifyTimeoutWarning, stacklevel=2)
        return 0.0


def check_gold(answer: str, kind: str, *, timeout: float = 5.0) -> None:
    """ValueError when verifier ``kind`` cannot read the gold ``answer`` (it would fail on every completion).

    >>> check_gold("1,200", "numeric"), check_gold(r"\\frac{14}{3}", "math")
    (None, None)
    """
    if kind not in REWARDS:
        raise ValueError(f"kind: unknown verifier {kind!r}; known: {sorted(REWARDS)}")
    shown = repr(answer) if len(answer) <= 80 else f"{answer[:40]!r}... ({len(answer)} characters)"
    if kind in ("numeric", "marked"):
        if parse_number(answer) is None:
            raise ValueError(f"gold answer {shown} is not a number (the numeric verifier needs one; "
                             "use the math verifier)")
        return
    prepare_verifier(kind)
    try:
        run_with_deadline(_parse_gold, (answer,), timeout)
    except TimeoutError:
        raise ValueError(f"math-verify did not parse the gold answer {shown} within {timeout} s") from None
    except Exception as exc:
        detail = "" if isinstance(exc, ValueError) else f" ({type(exc).__name__}: {str(exc)[:80]})"
        raise ValueError(f"math-verify cannot parse the gold answer {shown}{detail}") from None


def score_rollouts(examples: Sequence, completions: Sequence[str], *, timeout: float = 5.0) -> list[float]:
    """``verify`` each completion against its aligned example's answer with the example's verifier.

    A verifier that raises becomes a RewardError naming the example id.
    """
    if len(examples) != len(completions):
        raise ValueError(f"completions: {len(completions)} completions for {len(examples)} examples")
    out = []
    for ex, text in zip(examples, completions):
        try:
            out.append(verify(text, ex.answer, ex.verifier, timeout=timeout))
        except Exception as exc:
            raise RewardError(ex.id, f"{ex.verifier} verifier raised {type(exc).__name__}: {exc}") from exc
    return out
