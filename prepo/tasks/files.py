"""Dataset files (JSONL, JSON arrays, Parquet, saved Hugging Face datasets) read into Examples, with field presets for
the math benchmarks; a malformed row is refused naming its file and line.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from prepo.answers import after_hashes, last_boxed
from prepo.rewards import check_gold
from prepo.tasks.example import VERIFIERS, Example


# ---------------------------------------------------------------------------------------------------------------
# answer extractors: gold-answer field value -> answer string
# ---------------------------------------------------------------------------------------------------------------
def _as_text(value) -> str:
    if isinstance(value, float) and not math.isfinite(value):  # JSON NaN / Infinity: no answer a model can give
        raise ValueError(f"expected a finite number, got {value}")
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # AMC stores 27.0
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value).strip()
    raise ValueError(f"expected a string or number, got {type(value).__name__}")


def _extract_gsm8k(value) -> str:
    found = after_hashes(_as_text(value))
    if not found:
        raise ValueError("no '#### answer' line")
    return found.replace(",", "")


def _extract_boxed(value) -> str:
    found = last_boxed(_as_text(value))
    if not found:
        raise ValueError("no \\boxed{...} answer")
    return found


def _extract_first(value) -> str:
    if not isinstance(value, (list, tuple)) or not value:
        raise ValueError(f"expected a non-empty list, got {value!r:.60}")
    return _as_text(value[0])


EXTRACTORS: dict[str, Callable[[object], str]] = {
    "gsm8k": _extract_gsm8k, "boxed": _extract_boxed, "first": _extract_first, "identity": _as_text,
}


@dataclass(frozen=True)
class Preset:
    """How one benchmark's rows map onto an Example."""

    prompt_field: str
    answer_field: str
    answer_extractor: str
    verifier: str
    id_field: str | None = None
    meta_fields: tuple[str, ...] = ()


PRESETS: dict[str, Preset] = {
    "gsm8k": Preset("question", "answer", "gsm8k", "numeric"),
    "math500": Preset("problem", "answer", "identity", "math", "unique_id", ("level", "subject")),
    "aime24": Preset("problem", "answer", "identity", "math", "id"),
    "amc23": Preset("question", "answer", "identity", "math", "id"),
    "minerva": Preset("problem", "solution", "boxed", "math", "idx", ("type",)),
    "olympiadbench": Preset("question", "final_answer", "first", "math", "id", ("subfield",)),
}
# folder / file names that identify a preset (lower case, '-' read as '_')
_PRESET_NAMES = {"gsm8k": "gsm8k", "math500": "math500", "math_500": "math500", "aime24": "aime24",
                 "aime_2024": "aime24", "aime2024": "aime24", "amc23": "amc23", "amc2023": "amc23",
                 "minerva": "minerva", "minerva_math": "minerva", "olympiadbench": "olympiadbench",
                 "olympiad_bench": "olympiadbench"}


def detect_preset(path: str | Path) -> str | None:
    """The preset a path belongs to, from its folder name (then its file stem); None when not recognisable."""
    path = Path(path)
    for name in (path.parent.name, path.stem, path.name):
        key = name.lower().replace("-", "_")
        if key in _PRESET_NAMES:
            return _PRESET_NAMES[key]
    return None


# ---------------------------------------------------------------------------------------------------------------
# readers: each yields (location, row) with location "file:line N" / "file:row N" for error messages
# ---------------------------------------------------------------------------------------------------------------
def _utf8(raw: bytes, path: Path, first_line: int = 1) -> str:
    """``raw`` decoded as UTF-8; ValueError naming the file and line of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        raise ValueError(f"{path}:line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as "
                         "UTF-8") from None


def _read_json_array(path: Path):
    try:
        rows = json.loads(_utf8(path.read_bytes(), path))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:line {exc.lineno}: malformed JSON ({exc.msg})") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts (no position given)
        raise ValueError(f"{path}: malformed JSON ({str(exc).splitlines()[0][:120]})") from None
    for i, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise ValueError(f"{path}:item {i}: expected a JSON object, got {type(row).__name__}")
        yield f"{path}:item {i}", i, row


def _read_jsonl(path: Path):
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = _utf8(raw, path, lineno)
            if not line.strip():
                continue
            where = f"{path}:line {lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{where}: malformed JSON ({exc.msg})") from None
            except ValueError as exc:  # e.g. an integer of more digits than Python converts
                raise ValueError(f"{where}: malformed JSON ({str(exc).splitlines()[0][:120]})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            yield where, lineno, row


def _read_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError as exc:  # pragma: no cover - pyarrow is in the train extra
        raise ImportError("reading Parquet needs pyarrow: pip install pyarrow") from exc
    for i, row in enumerate(pq.read_table(path).to_pylist(), 1):
        yield f"{path}:row {i}", i, row


def _read_hf_disk(path: Path, split: str | None):
    try:
        import datasets
    except ImportError as exc:
        raise ImportError(f"path: {path} is a folder; reading a saved Hugging Face dataset needs `datasets`") from exc
    ds = datasets.load_from_disk(str(path))
    if hasattr(ds, "keys"):  # a DatasetDict
        names = list(ds.keys())
        chosen = split or next((s for s in ("test", "validation", "train") if s in names), names[0] if names else None)
        if chosen not in names:
            raise ValueError(f"split: {chosen!r} is not in {path} (splits: {names})")
        ds = ds[chosen]
    for i, row in enumerate(ds, 1):
        yield f"{path}:row {i}", i, row


def _rows(path: Path, split: str | None):
    if path.is_dir():
        return _read_hf_disk(path, split)
    suffix = path.suffix.lower()
    if suffix == ".json" and _utf8(path.read_bytes(), path).lstrip()[:1] == "[":
        return _read_json_array(path)
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix in (".parquet", ".pq"):
        return _read_parquet(path)
    raise ValueError(f"path: {path}: unsupported file type {suffix!r} (expected .jsonl, .json, .parquet or a "
                     "dataset folder)")


def load_examples(path: str | Path, preset: str | None = None, *, prompt_field: str | None = None,
                  answer_field: str | None = None, answer_extractor: str | Callable | None = None,
                  verifier: str | None = None, limit: int | None = None, split: str | None = None,
                  check_answers: bool = True) -> list[Example]:
    """Read a dataset file into Examples.

    ``preset`` (one of PRESETS) gives the field mapping; when None it is detected from the folder name, and explicit
    ``prompt_field``/``answer_field``/``answer_extractor`` (a name in EXTRACTORS or a callable)/``verifier`` override
    it. A malformed line, a row missing a field or (``check_answers``) a gold answer its verifier cannot read raises
    ValueError naming the file and line. ``split`` picks a split
    of a saved DatasetDict. Ids are ``"<preset or file stem>/<id field or line>"``; meta holds source and line.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"path: {path} does not exist")
    if not (path.is_file() or path.is_dir()):  # a FIFO or device would block or never end
        raise ValueError(f"path: {path} is not a regular file or a dataset folder")
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: expected a non-negative int, got {limit!r}")
    if preset is None:
        preset = detect_preset(path)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"preset: unknown {preset!r}; known: {sorted(PRESETS)}")
    base = PRESETS[preset] if preset else None
    prompt_field = prompt_field or (base.prompt_field if base else None)
    answer_field = answer_field or (base.answer_field if base else None)
    if prompt_field is None or answer_field is None:
        raise ValueError(f"path: cannot tell the format of {path}; pass preset= (one of {sorted(PRESETS)}) "
                         "or prompt_field= and answer_field=")
    extractor = answer_extractor or (base.answer_extractor if base else "identity")
    if isinstance(extractor, str):
        if extractor not in EXTRACTORS:
            raise ValueError(f"answer_extractor: unknown {extractor!r}; known: {sorted(EXTRACTORS)} or a callable")
        extractor = EXTRACTORS[extractor]
    verifier = verifier or (base.verifier if base else "math")
    if verifier not in VERIFIERS:
        raise ValueError(f"verifier: expected one of {VERIFIERS}, got {verifier!r}")
    id_field = base.id_field if base else None
    name = preset or path.stem

    out: list[Example] = []
    for where, lineno, row in _rows(path, split):
        if limit is not None and len(out) >= limit:
            break
        for f in (prompt_field, answer_field):
            if f not in row:
                raise ValueError(f"{where}: missing field {f!r} (has {sorted(row)})")
            if row[f] is None:
                raise ValueError(f"{where}: field {f!r} is null")
        question = row[prompt_field]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: field {prompt_field!r} must be a non-empty string")
        try:
            answer = extractor(row[answer_field])
        except (ValueError, TypeError, KeyError, IndexError) as exc:  # a custom extractor may raise any of these
            raise ValueError(f"{where}: field {answer_field!r}: {exc}") from None
        if not isinstance(answer, str):
            raise ValueError(f"{where}: answer_extractor returned {type(answer).__name__}, expected str")
        if check_answers:
            try:
                check_gold(answer, verifier)
            except ValueError as exc:
                raise ValueError(f"{where}: field {answer_field!r}: {exc}") from None
        key = row.get(id_field) if id_field else None
        meta = {"source": str(path), "line": lineno}
        meta.update({k: row[k] for k in (base.meta_fields if base else ()) if k in row})
        out.append(Example(id=f"{name}/{key if key is not None else lineno}", question=question, answer=answer,
                           verifier=verifier, meta=meta))
    return out
