"""Knowledge-editing datasets, every schema mapped to one :class:`EditCase`.

Formats (``fmt``; ``None``/"auto" detects from the first record):

- ``counterfact``: CounterFact, either the ROME schema (``requested_rewrite`` with a
  ``"{}"`` prompt template, ``paraphrase_prompts``, ``neighborhood_prompts``) or the
  MEND/EasyEdit schema (``prompt``, ``target_new``, ``ground_truth``, ``rephrase_prompt``,
  ``locality_prompt``, ``locality_ground_truth``, ``subject``);
- ``zsre``: zsRE in MEND format (``src``, ``alt``, ``answers``, ``rephrase``, ``loc``,
  ``loc_ans``, ``subject``, optional ``portability``);
- ``knowedit``: KnowEdit (``prompt``, ``target_new``, ``subject``, optional ``ground_truth``,
  ``rephrase_prompt``, ``locality{...}``, ``portability{...}``);
- ``mquake``: MQuAKE (``requested_rewrite`` list, ``questions``, ``new_answer``,
  ``new_answer_alias``).

A malformed record raises :class:`DatasetFormatError` naming the file, the record index and
the field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from recall.core.errors import RecallError
from recall.core.requests import EditRequest  # the one request type; cases hold it

FORMATS = ("counterfact", "zsre", "knowedit", "mquake")


class DatasetFormatError(RecallError, ValueError):
    """A dataset file or record does not match the expected schema."""


@dataclass
class EditCase:
    """One benchmark case in a schema-independent form."""

    case_id: str
    edits: list[EditRequest]
    rephrase: list[str] = field(default_factory=list)
    locality: list[tuple[str, str]] = field(default_factory=list)  # (prompt, recorded answer)
    portability: list[tuple[str, str]] = field(default_factory=list)  # (prompt, expected answer)
    multihop: list[str] = field(default_factory=list)  # MQuAKE questions
    multihop_answers: list[str] = field(default_factory=list)  # new_answer + aliases
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Rec:
    """Field access on one record that raises DatasetFormatError with file/index context."""

    def __init__(self, path: str, index: int, rec: Any) -> None:
        if not isinstance(rec, dict):
            raise DatasetFormatError(f"{path}: record {index}: expected a JSON object, got {type(rec).__name__}")
        self.path, self.index, self.rec = path, index, rec

    def err(self, msg: str) -> DatasetFormatError:
        return DatasetFormatError(f"{self.path}: record {self.index}: {msg}")

    def str(self, key: str, obj: dict | None = None, where: str = "") -> str:
        obj = self.rec if obj is None else obj
        if key not in obj:
            raise self.err(f"missing field {where + key!r}")
        value = obj[key]
        if not isinstance(value, str) or not value.strip():
            raise self.err(f"field {where + key!r} must be a non-empty string, got {value!r:.80}")
        return value

    def opt_str(self, key: str) -> str | None:
        return self.str(key) if self.rec.get(key) not in (None, "") else None

    def answer(self, value: Any, key: str) -> str:
        """First answer of a str / list / list-of-lists ground truth."""
        if isinstance(value, list):
            flat = _flatten(value)
            value = next((v for v in flat if isinstance(v, str) and v.strip()), flat[0] if flat else value)
        if not isinstance(value, str) or not value.strip():
            raise self.err(f"field {key!r} must be a non-empty string or list of strings, got {value!r:.80}")
        return value

    def answers(self, value: Any, key: str) -> list[str]:
        flat: list[str] = []
        stack = [value]
        while stack:
            v = stack.pop(0)
            if isinstance(v, list):
                stack[:0] = v
            elif isinstance(v, str) and v.strip():
                flat.append(v)
            else:
                raise self.err(f"field {key!r} must hold non-empty strings, got {v!r:.80}")
        if not flat:
            raise self.err(f"field {key!r} is empty")
        return flat

    def prompt_list(self, key: str, required: bool = True) -> list[str]:
        if key not in self.rec:
            if required:
                raise self.err(f"missing field {key!r}")
            return []
        value = self.rec[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
            raise self.err(f"field {key!r} must be a string or a list of non-empty strings")
        return list(value)

    def pairs(self, key: str) -> list[tuple[str, str]]:
        """KnowEdit-style ``{group: [{prompt, ground_truth}, ...]}`` (or one dict per group)."""
        value = self.rec.get(key)
        if value in (None, {}, []):
            return []
        if not isinstance(value, dict):
            raise self.err(f"field {key!r} must be an object of groups, got {type(value).__name__}")
        out = []
        for group, items in value.items():
            items = [items] if isinstance(items, dict) else items
            if not isinstance(items, list):
                raise self.err(f"field {key}.{group} must be a list of {{prompt, ground_truth}} objects")
            for j, item in enumerate(items):
                where = f"{key}.{group}[{j}]."
                if not isinstance(item, dict):
                    raise self.err(f"field {where[:-1]!r} must be an object")
                prompt = self.str("prompt", item, where)
                if "ground_truth" not in item:
                    raise self.err(f"missing field {where + 'ground_truth'!r}")
                if _empty(item["ground_truth"]):
                    continue  # real KnowEdit files hold a few empty answers; nothing to check
                out.append((prompt, self.answer(item["ground_truth"], where + "ground_truth")))
        return out


def _flatten(value: list) -> list:
    out = []
    for v in value:
        out.extend(_flatten(v) if isinstance(v, list) else [v])
    return out


def _empty(value: Any) -> bool:
    if isinstance(value, list):
        return all(_empty(v) for v in value)
    return isinstance(value, str) and not value.strip()


def _fill(r: _Rec, template: str, subject: str, where: str) -> str:
    if "{}" not in template:
        raise r.err(f"field {where!r} must contain the subject placeholder '{{}}', got {template!r:.80}")
    return template.replace("{}", subject)


def _target(r: _Rec, obj: dict, key: str, where: str) -> str:
    value = obj.get(key)
    if isinstance(value, dict):
        return r.str("str", value, f"{where}{key}.")
    if key not in obj:
        raise r.err(f"missing field {where + key!r}")
    return r.answer(value, where + key)


def _counterfact(r: _Rec) -> EditCase:
    rec = r.rec
    cid = str(rec.get("case_id", r.index))
    if "requested_rewrite" in rec:  # ROME schema
        rw = rec["requested_rewrite"]
        if isinstance(rw, list) and len(rw) == 1:
            rw = rw[0]
        if not isinstance(rw, dict):
            raise r.err("field 'requested_rewrite' must be an object")
        subject = r.str("subject", rw, "requested_rewrite.")
        prompt = _fill(r, r.str("prompt", rw, "requested_rewrite."), subject, "requested_rewrite.prompt")
        new = _target(r, rw, "target_new", "requested_rewrite.")
        true = _target(r, rw, "target_true", "requested_rewrite.")
        port = []
        if isinstance(rec.get("portability"), dict) and "New Question" in rec["portability"]:
            p = rec["portability"]
            port = [(r.str("New Question", p, "portability."), r.str("New Answer", p, "portability."))]
        return EditCase(
            cid,
            [EditRequest(prompt, subject, new, true)],
            rephrase=r.prompt_list("paraphrase_prompts", required=False),
            locality=[(p, true) for p in r.prompt_list("neighborhood_prompts", required=False)],
            portability=port,
        )
    subject = r.str("subject")
    true = r.answer(rec.get("ground_truth"), "ground_truth") if "ground_truth" in rec else None
    if true is None:
        raise r.err("missing field 'ground_truth'")
    loc = r.prompt_list("locality_prompt", required=False)
    loc_ans = r.answer(rec["locality_ground_truth"], "locality_ground_truth") if loc else None
    return EditCase(
        cid,
        [EditRequest(r.str("prompt"), subject, r.answer(rec.get("target_new"), "target_new"), true)],
        rephrase=r.prompt_list("rephrase_prompt", required=False),
        locality=[(p, loc_ans) for p in loc],
    )


def _zsre(r: _Rec) -> EditCase:
    rec = r.rec
    if "answers" not in rec:
        raise r.err("missing field 'answers'")
    true = r.answer(rec["answers"], "answers")
    port = []
    if isinstance(rec.get("portability"), dict):
        p = rec["portability"]
        port = [(r.str("New Question", p, "portability."), r.str("New Answer", p, "portability."))]
    loc = r.str("loc")
    return EditCase(
        str(rec.get("case_id", r.index)),
        [EditRequest(r.str("src"), r.str("subject"), r.str("alt"), true)],
        rephrase=r.prompt_list("rephrase"),
        locality=[(loc, r.str("loc_ans"))],
        portability=port,
    )


def _knowedit(r: _Rec) -> EditCase:
    rec = r.rec
    true = r.answer(rec["ground_truth"], "ground_truth") if rec.get("ground_truth") not in (None, "", []) else None
    return EditCase(
        str(rec.get("case_id", r.index)),
        [EditRequest(r.str("prompt"), r.str("subject"), r.answer(rec.get("target_new"), "target_new"), true)],
        rephrase=r.prompt_list("rephrase_prompt", required=False),
        locality=r.pairs("locality"),
        portability=r.pairs("portability"),
    )


def _mquake(r: _Rec) -> EditCase:
    rec = r.rec
    rws = rec.get("requested_rewrite")
    if not isinstance(rws, list) or not rws:
        raise r.err("field 'requested_rewrite' must be a non-empty list")
    edits = []
    for j, rw in enumerate(rws):
        where = f"requested_rewrite[{j}]."
        if not isinstance(rw, dict):
            raise r.err(f"field {where[:-1]!r} must be an object")
        subject = r.str("subject", rw, where)
        prompt = _fill(r, r.str("prompt", rw, where), subject, where + "prompt")
        edits.append(
            EditRequest(prompt, subject, _target(r, rw, "target_new", where), _target(r, rw, "target_true", where))
        )
    answers = [r.str("new_answer")]
    alias = rec.get("new_answer_alias", [])
    if not isinstance(alias, list) or not all(isinstance(a, str) for a in alias):
        raise r.err("field 'new_answer_alias' must be a list of strings")
    return EditCase(
        str(rec.get("case_id", r.index)),
        edits,
        multihop=r.prompt_list("questions"),
        multihop_answers=answers + [a for a in alias if a.strip()],
    )


LAST_SKIPPED: list[str] = []
_PARSERS = {"counterfact": _counterfact, "zsre": _zsre, "knowedit": _knowedit, "mquake": _mquake}


def detect_format(rec: Any) -> str:
    """The format of one record by its keys (see the module docstring)."""
    if not isinstance(rec, dict):
        raise DatasetFormatError(f"cannot detect the format of a {type(rec).__name__} record")
    keys = set(rec)
    if "requested_rewrite" in keys:
        return "mquake" if isinstance(rec["requested_rewrite"], list) and "questions" in keys else "counterfact"
    if "src" in keys and "alt" in keys:
        return "zsre"
    if "locality_prompt" in keys or "locality_ground_truth" in keys:
        return "counterfact"
    if "prompt" in keys and "target_new" in keys:
        return "knowedit"
    raise DatasetFormatError(f"cannot detect the dataset format from record keys {sorted(keys)}")


def load_cases(
    path: str | Path, fmt: str | None = None, limit: int | None = None, skip_invalid: bool = False
) -> list[EditCase]:
    """Every record of a JSON (list) or JSON-lines file as EditCases.

    ``skip_invalid`` drops malformed records (their errors are in :data:`LAST_SKIPPED`)
    instead of raising on the first one; real files hold a few (e.g. an empty zsRE ``alt``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetFormatError(f"{path}: cannot read: {exc}") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        try:
            data = [json.loads(line) for line in text.splitlines() if line.strip()]
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{path}: not JSON or JSON lines: {exc}") from exc
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not data:
        raise DatasetFormatError(f"{path}: expected a non-empty JSON list of records")
    if fmt in (None, "auto"):
        try:
            fmt = detect_format(data[0])
        except DatasetFormatError as exc:
            raise DatasetFormatError(f"{path}: record 0: {exc}") from None
    if fmt not in _PARSERS:
        raise DatasetFormatError(f"unknown dataset format {fmt!r}; known: {', '.join(FORMATS)}")
    parse = _PARSERS[fmt]
    out: list[EditCase] = []
    LAST_SKIPPED.clear()
    for i, rec in enumerate(data):
        if limit and len(out) >= limit:
            break
        try:
            case = parse(_Rec(str(path), i, rec))
        except DatasetFormatError as exc:
            if not skip_invalid:
                raise
            LAST_SKIPPED.append(str(exc))
            continue
        case.source = fmt
        out.append(case)
    return out


def requests_of(cases: list[EditCase]) -> list[EditRequest]:
    """The cases' edits as the weight editors write them (subject kept only when the prompt
    contains it; ``edit_id`` the case id)."""
    return [e.for_editing(str(c.case_id)) for c in cases for e in c.edits]


def load_texts(path: str | Path, key: str = "text", limit: int | None = None) -> list[str]:
    """Generic texts (e.g. KnowEdit WikiBio ``text`` + ``labels``) for perplexity."""
    path = Path(path)
    data = json.loads(path.read_text(encoding="utf-8"))
    out = []
    for i, rec in enumerate(data[:limit] if limit else data):
        if not isinstance(rec, dict) or not isinstance(rec.get(key), str):
            raise DatasetFormatError(f"{path}: record {i}: missing field {key!r}")
        text = rec[key]
        if isinstance(rec.get("labels"), str):
            text = f"{text} {rec['labels']}"
        out.append(text)
    return out
