"""Edit records: the kinds the runtime knows, their fields, and validation.

An :class:`Edit` is what the store keeps and what the API returns. Validation happens
here, before anything is written, so a bad edit never reaches the store.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from recall.core import regex_patch
from recall.core.errors import (
    EmptyTextError,
    ImportFormatError,
    InvalidEditError,
    MissingFieldError,
    TextTooLongError,
    UnknownKindError,
)
from recall.core.limits import LIMITS
from recall.core.short_names import short_names as derive_short_names

SCHEMA_VERSION = 1
KINDS = ("fact", "patch", "regex", "prompt", "codebook")
LEARNED_KINDS = ("prompt", "codebook")  # kinds whose edit is a learned tensor kept in the store
# Kinds that answer a question (a prompt, its target, a subject and relation) and are scoped the
# way facts are: indexed by their prompt and relation text, in the subject lexicon, judged by
# the runtime's gate, superseding each other on the same subject and relation. They differ in
# what fires: a fact's answer is injected (inject.py), a prompt edit's tuned prefix is placed
# before the row.
ANSWER_KINDS = ("fact", "prompt")
STATUSES = ("active", "retired", "consolidated")
REGEX_SCOPES = ("input", "output")

_PATCH_RE = re.compile(r"^\s*if\s+(?P<cond>.+?)\s*,\s*then\s+(?P<cons>.+?)\s*$", re.IGNORECASE | re.DOTALL)


# Statuses whose edits the memory serves (indexed, retrieved, injected). A consolidated edit
# keeps its memory copy: the weights carry it on the prompts the job verified, but its
# paraphrases may not move with them (issue 21 measured generality .80 from memory against .60
# from the weights alone), and where the weights already give the answer, injecting it changes
# nothing. Retired edits are never served.
SERVED_STATUSES = frozenset({"active", "consolidated"})


@dataclass
class Edit:
    """One correction held by the store.

    ``payload`` holds the kind's fields (fact: prompt, target, relation; patch: condition,
    consequence; regex: pattern, replacement, scope; prompt and codebook: prompt, target, the
    learned tensors being kept beside the record in the store). ``keys`` are the texts indexed for
    retrieval. ``num`` is the store-local integer used as the vector index id.
    """

    id: str
    kind: str
    payload: dict[str, Any]
    keys: list[str]
    subject: str | None = None
    status: str = "active"
    created_at: float = field(default_factory=time.time)
    provenance: str | None = None
    schema: int = SCHEMA_VERSION
    num: int = -1
    retired_by: str | None = None
    retired_reason: str | None = None
    consolidated_in: str | None = None  # checkpoint id, while status is "consolidated"

    @property
    def served(self) -> bool:
        """Whether the memory answers with this edit: active edits, and consolidated ones,
        whose memory copy keeps firing beside the weights (:data:`SERVED_STATUSES`)."""
        return self.status in SERVED_STATUSES

    def content(self) -> tuple[str, str | None, dict[str, Any]]:
        """What the edit says (kind, subject, payload), without its id, status or history: two
        edits with equal content are the same correction. Short names are left out: they say how
        the subject is written, not what is corrected, and a record exported before they were
        derived must still match the same edit imported now."""
        return self.kind, self.subject, {k: v for k, v in self.payload.items() if k != "short_names"}

    @property
    def prompt(self) -> str | None:
        return self.payload.get("prompt")

    @property
    def target(self) -> str | None:
        return self.payload.get("target")

    @property
    def names(self) -> list[str]:
        """The subject, its aliases and its short names (facts): the names that put a query
        about it in scope."""
        if not self.subject:
            return []
        return [self.subject, *self.payload.get("aliases", []), *self.payload.get("short_names", [])]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edit:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _text(fields: dict[str, Any], name: str, limit: int, *, required: bool = True) -> str | None:
    value = fields.get(name)
    if value is None:
        if required:
            raise MissingFieldError(f"edit field {name!r} is required")
        return None
    if not isinstance(value, str):
        raise InvalidEditError(f"edit field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise EmptyTextError(f"edit field {name!r} is empty or whitespace only")
    if len(value) > limit:
        raise TextTooLongError(f"edit field {name!r} has {len(value)} characters; the limit is {limit}")
    check_utf8(value, f"edit field {name!r}", InvalidEditError)
    return value


MAX_ALIASES = 16


def _name_list(fields: dict[str, Any], subject: str | None, field: str = "aliases",
             taken: Sequence[str] = ()) -> list[str]:
    """Other names of a fact's subject ("Obama" for "Barack Obama"): a list of non-empty
    strings (repeats of the subject, of ``taken`` or of each other, ignoring case, are dropped);
    they need a subject to stand for. ``field`` names the list (``aliases`` or ``short_names``)."""
    value = fields.get(field)
    if value is None:
        return []
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, str) for a in value):
        raise InvalidEditError(f"edit field {field!r} must be a list of strings")
    if subject is None:
        raise InvalidEditError(f"edit field {field!r} needs a 'subject' (they are other names of it)")
    if len(value) > MAX_ALIASES:
        raise TextTooLongError(f"edit field {field!r} has {len(value)} names; the limit is {MAX_ALIASES}")
    out: list[str] = []
    seen = {n.strip().casefold() for n in (subject, *taken)}
    for i, alias in enumerate(value):
        text = _text({f"{field}[{i}]": alias}, f"{field}[{i}]", 200)
        assert text is not None
        key = text.strip().casefold()
        if key not in seen:  # a repeat of the subject or of another alias adds nothing
            seen.add(key)
            out.append(text.strip())
    return out


def check_utf8(value: str, what: str, error: type[Exception]) -> None:
    """Reject strings that cannot be encoded as UTF-8 (lone surrogates)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(f"{what} is not valid Unicode text ({exc.reason} at position {exc.start})") from exc


ID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


def split_patch(text: str) -> tuple[str, str]:
    """Split "If <condition>, then <consequence>" into its two parts."""
    m = _PATCH_RE.match(text)
    if not m:
        raise InvalidEditError(f"patch text must read 'If <condition>, then <consequence>'; got {text!r}")
    cond, cons = m.group("cond").strip(), m.group("cons").strip()
    if not cond or not cons:
        raise EmptyTextError(f"patch text {text!r} has an empty condition or consequence")
    return cond, cons


def build_edit(kind: str = "fact", *, provenance: str | None = None, edit_id: str | None = None, **fields: Any) -> Edit:
    """Validate user-supplied fields and return a new, not yet stored, Edit."""
    if edit_id is not None and (not isinstance(edit_id, str) or not ID_RE.fullmatch(edit_id)):
        raise InvalidEditError(f"edit id {edit_id!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    if not isinstance(kind, str) or kind not in KINDS:
        raise UnknownKindError(f"unknown edit kind {kind!r}; known kinds: {', '.join(KINDS)}")
    allowed = {
        "fact": {"prompt", "target", "subject", "relation", "aliases", "short_names"},
        "patch": {"text", "condition", "consequence"},
        "regex": {"pattern", "replacement", "scope", "ignore_case"},
        "prompt": {"prompt", "target", "subject", "relation", "aliases", "short_names"},
        "codebook": {"prompt", "target", "subject"},
    }[kind]
    unknown = set(fields) - allowed
    if unknown:
        raise InvalidEditError(f"{kind} edits take {sorted(allowed)}; unexpected field(s) {sorted(unknown)}")
    if provenance is not None:
        if not isinstance(provenance, str) or len(provenance) > 200:
            raise InvalidEditError("provenance must be a string of at most 200 characters")
        check_utf8(provenance, "provenance", InvalidEditError)
    subject = None
    if kind in ANSWER_KINDS:
        prompt = _text(fields, "prompt", LIMITS.max_prompt_chars)
        target = _text(fields, "target", LIMITS.max_target_chars)
        subject = _text(fields, "subject", LIMITS.max_prompt_chars, required=False)
        relation = _text(fields, "relation", 200, required=False)
        if subject is not None and subject.strip().casefold() not in prompt.casefold():
            raise InvalidEditError(f"subject {subject!r} does not occur in prompt {prompt!r}")
        payload = {"prompt": prompt.strip(), "target": target.strip(), "relation": relation}
        subject = subject.strip() if subject else None
        aliases = _name_list(fields, subject)
        if aliases:
            payload["aliases"] = aliases
        # the forms people shorten the subject to ("Nadella"), derived unless the caller lists them
        # (an empty list: none); stored with the edit, so a later rule never changes its scope
        if fields.get("short_names") is None and subject:
            derived = [n for n in derive_short_names(subject, aliases, payload["prompt"]) if len(n) <= 200]
            fields = {**fields, "short_names": derived[:MAX_ALIASES]}
        short = _name_list(fields, subject, "short_names", aliases)
        if short:
            payload["short_names"] = short
        keys = [payload["prompt"]]
    elif kind == "codebook":
        prompt = _text(fields, "prompt", LIMITS.max_prompt_chars)
        target = _text(fields, "target", LIMITS.max_target_chars)
        subject = _text(fields, "subject", LIMITS.max_prompt_chars, required=False)
        if subject is not None and subject.strip().casefold() not in prompt.casefold():
            raise InvalidEditError(f"subject {subject!r} does not occur in prompt {prompt!r}")
        payload = {"prompt": prompt.strip(), "target": target.strip()}
        subject = subject.strip() if subject else None
        keys = []  # matched by the codebook hook, not retrieved
    elif kind == "patch":
        if "text" in fields:
            text = _text(fields, "text", LIMITS.max_prompt_chars)
            condition, consequence = split_patch(text)
        else:
            condition = _text(fields, "condition", LIMITS.max_prompt_chars)
            consequence = _text(fields, "consequence", LIMITS.max_prompt_chars)
        payload = {"condition": condition.strip(), "consequence": consequence.strip()}
        keys = [payload["condition"]]
    else:
        pattern = _text(fields, "pattern", LIMITS.max_prompt_chars)
        replacement = fields.get("replacement")
        if replacement is None:
            raise MissingFieldError("edit field 'replacement' is required")
        if not isinstance(replacement, str):
            raise InvalidEditError("edit field 'replacement' must be a string")
        if len(replacement) > LIMITS.max_target_chars:
            raise TextTooLongError(
                f"edit field 'replacement' has {len(replacement)} characters; the limit is {LIMITS.max_target_chars}"
            )
        scope = fields.get("scope", "output")
        if scope not in REGEX_SCOPES:
            raise InvalidEditError(f"regex scope must be one of {REGEX_SCOPES}, got {scope!r}")
        ignore_case = fields.get("ignore_case", False)
        if not isinstance(ignore_case, bool):
            raise InvalidEditError("edit field 'ignore_case' must be a boolean")
        compiled = regex_patch.compile_pattern(pattern, regex_patch.regex.IGNORECASE if ignore_case else 0)
        regex_patch.check_replacement(compiled, replacement)
        payload = {"pattern": pattern, "replacement": replacement, "scope": scope, "ignore_case": ignore_case}
        keys = []
    return Edit(
        id=edit_id or uuid.uuid4().hex[:16],
        kind=kind,
        payload=payload,
        keys=keys,
        subject=subject,
        provenance=provenance,
    )


def validate_record(data: Any, where: str, *, derive_id: bool = False) -> Edit:
    """Turn an exported record back into an Edit, re-validating every field. ``derive_id``: a
    record without an id gets :func:`content_id` (imports), else a random one."""

    if not isinstance(data, dict):
        raise ImportFormatError(f"{where}: expected a JSON object, got {type(data).__name__}")
    kind = data.get("kind", "fact")
    payload = data.get("payload")
    if payload is None:  # flat form: {"kind": ..., "prompt": ..., "target": ...}
        payload = {
            k: v
            for k, v in data.items()
            if k
            not in (
                "kind",
                "id",
                "provenance",
                "status",
                "created_at",
                "schema",
                "num",
                "keys",
                "retired_by",
                "retired_reason",
                "consolidated_in",
                "subject",
            )
        }
        if kind in ("fact", *LEARNED_KINDS) and data.get("subject") is not None:
            payload["subject"] = data["subject"]
    elif not isinstance(payload, dict):
        raise ImportFormatError(f"{where}: 'payload' must be an object")
    elif kind in ("fact", *LEARNED_KINDS):
        payload = {**payload, "subject": data.get("subject")}
    schema = data.get("schema", SCHEMA_VERSION)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ImportFormatError(f"{where}: record schema {schema!r} is newer than this recall ({SCHEMA_VERSION})")
    payload = {k: v for k, v in payload.items() if v is not None}
    clash = sorted({"kind", "provenance", "edit_id"} & set(payload))
    if clash:
        raise ImportFormatError(f"{where}: unexpected field(s) {clash} (a record's id is 'id')")
    edit_id = data.get("id")
    if edit_id is not None and (not isinstance(edit_id, str) or not ID_RE.fullmatch(edit_id)):
        raise ImportFormatError(f"{where}: id {edit_id!r} must be 1-64 characters of [A-Za-z0-9_.:-]")
    try:
        edit = build_edit(kind, provenance=data.get("provenance"), edit_id=edit_id, **payload)
    except InvalidEditError as exc:
        raise ImportFormatError(f"{where}: {exc}") from exc
    status = data.get("status", "active")
    if status not in STATUSES:
        raise ImportFormatError(f"{where}: unknown status {status!r}")
    # a consolidated edit lives in another store's weights, not in this store's: it comes in
    # active, so importing never loses it
    edit.status = "active" if status == "consolidated" else status
    created = data.get("created_at")
    if created is not None:
        if isinstance(created, bool) or not isinstance(created, (int, float)) or not math.isfinite(created):
            raise ImportFormatError(f"{where}: created_at must be a finite number of seconds, got {created!r}")
        edit.created_at = float(created)
    retired_by = data.get("retired_by")
    if retired_by is not None and (not isinstance(retired_by, str) or not ID_RE.fullmatch(retired_by)):
        raise ImportFormatError(f"{where}: retired_by must be an edit id, got {retired_by!r}")
    reason = data.get("retired_reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > LIMITS.max_prompt_chars):
        raise ImportFormatError(f"{where}: retired_reason must be a string of at most {LIMITS.max_prompt_chars} "
                                "characters")
    if reason is not None:
        check_utf8(reason, f"{where}: retired_reason", ImportFormatError)
    edit.retired_by, edit.retired_reason = retired_by, reason
    if edit_id is None and derive_id:
        edit.id = content_id(edit)
    return edit


def content_id(edit: Edit) -> str:
    """An id that is a function of what the edit says (kind, subject, payload): importing the
    same record without an id twice names it the same, so a retried import skips it instead of
    storing it twice."""
    canonical = json.dumps(list(edit.content()), sort_keys=True, ensure_ascii=False)
    return "c-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:24]
