"""LMDB record store: the source of truth for every edit.

Layout (named sub-databases of one LMDB environment in the store directory):

- ``edits``:   edit id -> JSON record
- ``nums``:    8-byte big-endian num -> edit id (num is the store-local integer id)
- ``vectors``: num -> ``np.save`` bytes of that edit's key (and gate) vectors
- ``changes``: 8-byte generation -> JSON {"op": "add"|"remove", "num": n}; lets readers in
  other processes bring their derived index up to date without a rebuild
- ``meta``:    schema version, generation counter, next num, encoder name and dimension;
  on a read replica's copy also ``replicated_generation`` (see :meth:`EditStore.apply_changes`)
- ``supersedes``: edit id -> JSON list of the ids it retired as conflicts (for ``explain``)
- ``tensors``: num -> ``np.savez`` bytes of the kind's learned tensors (continuous prompt edits:
  knowledge representation and prefix; codebook edits: key, value, deferral radius). A change
  to an existing edit's tensors (a codebook split shrinks a neighbour's radius) is written in
  the same transaction as the edit that caused it, with an "update" change entry.
- ``names``: one key per (name, num) of every *served* fact with a subject (its subject and
  aliases, normalized; see :func:`_name_key`), empty value: the subject lexicon, looked up per
  query with a cursor, so opening a store does not read its records. Meta ``name_lengths``
  counts these entries by word count (a query is split only into runs of those lengths).
- ``special``: num -> kind of every served edit that is not a fact with a subject (regex,
  prompt, codebook, patch, subject-less fact): the few the memory keeps in RAM, read at open.

``names``, ``special`` and ``name_lengths`` change in the transaction that changes whether an
edit is served (:meth:`EditStore._served_change`), so they are never out of step with the
records. A store written before they existed gets them on its first writable open (meta
``lookups``); a read-only open of such a store derives them in RAM from a scan instead.

Every write is one LMDB transaction; LMDB fsyncs on commit, so a write that returned is on
disk and survives SIGKILL. A write that raised was rolled back whole. A bulk import is one
transaction too (:meth:`EditStore.add_many`).

The memory map starts at :data:`_MAP_START` (or twice the file, if larger) and doubles when a
write fills it; the write is then retried. Other processes adopt the larger map on their next
transaction.
"""

from __future__ import annotations

import hashlib
import io
import json
import mmap
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np

from recall.core.edits import ANSWER_KINDS, Edit
from recall.core.errors import EditNotFoundError, SchemaVersionError, StoreCorruptError, StoreError, StoreLockedError
from recall.core.text import normalize

T = TypeVar("T")
_MAP_START = 1 << 30  # 1 GiB of address space to begin with; the file grows only as used
_MAP_MAX = 1 << 40
# meta "schema": the store's layout. 2 added the names/special sub-databases, which writers must
# keep in step, so a recall that reads only layout 1 refuses a layout-2 store instead of writing
# to it without them. Records carry their own schema (recall.core.edits.SCHEMA_VERSION).
STORE_SCHEMA = 2
# meta "lookups": the names/special sub-databases are built and kept; 2: prompt edits with a
# subject are in the lexicon (they are scoped like facts), not in ``special``
LOOKUP_VERSION = 2
_NAME_KEY_MAX = 400  # bytes; LMDB keys are limited to 511, so longer names are hashed
# LMDB errors that mean the files are damaged; anything else at open is the system refusing
# (address space, locks, permissions) and is reported as such
_CORRUPT = (lmdb.CorruptedError, lmdb.InvalidError, lmdb.PageNotFoundError, lmdb.VersionMismatchError,
            lmdb.BadChecksumError, lmdb.PanicError)


class StaleStateError(StoreError):
    """A conditional write found the store changed since its caller read it (nothing written)."""


class NumsMoved(StoreError):
    """Another writer stored edits between a batch's planning and its transaction (retry)."""


def _u64(n: int) -> bytes:
    return struct.pack(">Q", n)


def _from_u64(b: bytes) -> int:
    return struct.unpack(">Q", b)[0]


def _name_key(norm_name: str) -> bytes:
    """The ``names`` key prefix of a normalized name: its UTF-8 bytes, or for a long name a
    marked hash (a collision only adds a candidate; the gate matches the names themselves)."""
    raw = norm_name.encode()
    return raw if len(raw) <= _NAME_KEY_MAX else b"\x01#" + hashlib.blake2b(raw, digest_size=16).digest()


def _lexicon_names(edit: Edit) -> set[str] | None:
    """The normalized names under which ``edit`` is in the subject lexicon (a fact or prompt
    edit with a subject: its subject and aliases), or None for an edit that goes to ``special``
    instead."""
    if edit.kind not in ANSWER_KINDS or not edit.subject:
        return None
    return {normalize(n) for n in edit.names}


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    return buf.getvalue()


def _bytes_or_none(raw: Any) -> bytes | None:
    return None if raw is None else bytes(raw)


def _json_or_none(raw: Any) -> Any:
    return None if raw is None else json.loads(raw)


def _check_data_file(data: Path) -> None:
    """Refuse a data.mdb shorter than its own meta pages say it is.

    LMDB memory-maps the file, so reading a truncated one kills the process with SIGBUS
    instead of raising. Each of the two meta pages (page 0 and 1) records the last page in
    use (``mm_last_pg`` at byte 136 of the page: 16-byte page header, magic, version, address,
    map size, two 48-byte DB records) and a transaction id; the newer one is authoritative."""
    if not data.exists():
        return
    size = data.stat().st_size
    if size == 0:
        raise StoreCorruptError(f"store file {data} is empty (corrupt)")
    with open(data, "rb") as fh:
        head = fh.read(8192)
    if len(head) < 160:
        raise StoreCorruptError(f"store file {data} is truncated ({size} bytes)")
    magic = struct.unpack_from("<I", head, 16)[0]
    if magic != 0xBEEFC0DE:
        raise StoreCorruptError(f"store file {data} is not an LMDB file (bad magic {magic:#x})")
    page = mmap.PAGESIZE  # LMDB's page size is the OS page size
    metas = []
    for p in (0, 1):
        if p * page + 152 <= len(head) and struct.unpack_from("<I", head, p * page + 16)[0] == 0xBEEFC0DE:
            last_pg, txnid = struct.unpack_from("<QQ", head, p * page + 136)
            metas.append((txnid, last_pg))
    if metas:
        _, last_pg = max(metas)
        if size < (last_pg + 1) * page:
            raise StoreCorruptError(f"store file {data} is truncated: {size} bytes, but its meta page "
                                    f"records {last_pg + 1} pages of {page} bytes")


@dataclass
class NewEdit:
    """One edit to store, with what storing it changes: its vectors, the ids it retires (id ->
    reason), its learned tensors, and replacement tensors of other edits (num -> values)."""

    edit: Edit
    vectors: np.ndarray
    retire: dict[str, str] = field(default_factory=dict)
    tensors: dict[str, np.ndarray] | None = None
    tensor_updates: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


class EditStore:
    """Durable edit records in one LMDB environment."""

    def __init__(self, path: str | Path, *, readonly: bool = False, create: bool = True) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if self.path.exists() and not self.path.is_dir():
            raise StoreError(f"store path {self.path} exists and is not a directory")
        if not self.path.exists():
            if readonly or not create:
                raise StoreError(f"no store at {self.path}")
            self.path.mkdir(parents=True)
        data = self.path / "data.mdb"
        _check_data_file(data)
        existing = data.stat().st_size if data.exists() else 0
        try:
            self.env = lmdb.open(
                str(self.path),
                map_size=max(_MAP_START, 2 * existing),
                max_dbs=16,
                subdir=True,
                readonly=readonly,
                lock=True,
                create=not readonly,
            )
            self._edits = self.env.open_db(b"edits", create=not readonly)
            self._nums = self.env.open_db(b"nums", create=not readonly)
            self._vectors = self.env.open_db(b"vectors", create=not readonly)
            self._changes = self.env.open_db(b"changes", create=not readonly)
            self._meta = self.env.open_db(b"meta", create=not readonly)
            self._supersedes = self.env.open_db(b"supersedes", create=not readonly)
            try:
                self._tensors = self.env.open_db(b"tensors", create=not readonly)
            except lmdb.NotFoundError:  # a read-only open of a store made before tensors existed
                self._tensors = None
            try:
                self._names = self.env.open_db(b"names", create=not readonly)
                self._special = self.env.open_db(b"special", create=not readonly)
            except lmdb.NotFoundError:  # read-only open of a store older than the lookups
                self._names = self._special = None
        except _CORRUPT as exc:
            raise StoreCorruptError(f"store at {self.path} cannot be opened: {exc}") from exc
        except lmdb.Error as exc:
            raise StoreError(f"store at {self.path} cannot be opened (the system refused: {exc})") from exc
        self._scanned: tuple[int, dict[str, set[int]], Counter[int], dict[int, str]] | None = None
        try:
            self._check_schema()
            self.lookups_stored = self._ensure_lookups()
        except Exception:
            self.env.close()
            self.env = None
            raise

    # -- meta -----------------------------------------------------------------
    def _check_schema(self) -> None:
        with self._txn(db=self._meta) as txn:
            raw = txn.get(b"schema")
        if raw is None:
            if self.readonly:
                raise StoreCorruptError(f"store at {self.path} has no schema entry")
            with self._write() as txn:
                txn.put(b"schema", str(STORE_SCHEMA).encode(), db=self._meta)
            return
        try:
            schema = int(raw)
        except ValueError as exc:
            raise StoreCorruptError(f"store at {self.path} has a malformed schema entry {raw!r}") from exc
        if schema > STORE_SCHEMA:
            raise SchemaVersionError(
                f"store at {self.path} was written with schema {schema}; this recall "
                f"reads schema {STORE_SCHEMA} and older. Upgrade recall."
            )

    def get_meta(self, key: str, default: Any = None) -> Any:
        with self._txn(db=self._meta) as txn:
            raw = txn.get(key.encode())
        return default if raw is None else json.loads(raw)

    def set_meta(self, key: str, value: Any) -> None:
        self._transact(lambda txn: txn.put(key.encode(), json.dumps(value).encode(), db=self._meta))

    @property
    def generation(self) -> int:
        with self._txn(db=self._meta) as txn:
            raw = txn.get(b"generation")
        return 0 if raw is None else int(raw)

    # -- lookups: the subject lexicon and the special kinds -----------------------
    def _ensure_lookups(self) -> bool:
        """Build ``names``/``special``/``name_lengths`` once for a store written before them
        (one transaction); False for a read-only open of such a store (scanned in RAM)."""
        if self.get_meta("lookups") == LOOKUP_VERSION:
            return True
        if self.readonly:
            return False

        def body(txn: lmdb.Transaction) -> None:
            txn.drop(self._names, delete=False)
            txn.drop(self._special, delete=False)
            txn.delete(b"name_lengths", db=self._meta)
            for _, raw in txn.cursor(db=self._edits):
                edit = self._decode(raw, "during the lookup build")
                if edit.served:
                    self._set_lookups(txn, edit, True)
            txn.put(b"lookups", str(LOOKUP_VERSION).encode(), db=self._meta)
            txn.put(b"schema", str(STORE_SCHEMA).encode(), db=self._meta)

        self._transact(body)
        return True

    def _set_lookups(self, txn: lmdb.Transaction, edit: Edit, served: bool) -> None:
        names = _lexicon_names(edit)
        if names is None:
            if served:
                txn.put(_u64(edit.num), edit.kind.encode(), db=self._special)
            else:
                txn.delete(_u64(edit.num), db=self._special)
            return
        raw = txn.get(b"name_lengths", db=self._meta)
        lengths = Counter({int(k): v for k, v in json.loads(raw).items()}) if raw else Counter()
        for name in names:
            key = _name_key(name) + b"\x00" + _u64(edit.num)
            if served and txn.put(key, b"", db=self._names, overwrite=False):
                lengths[len(name.split())] += 1
            elif not served and txn.delete(key, db=self._names):
                lengths[len(name.split())] -= 1
        lengths = +lengths  # drops counts that reached zero
        txn.put(b"name_lengths", json.dumps(lengths).encode(), db=self._meta)

    def _served_change(self, txn: lmdb.Transaction, edit: Edit, served: bool) -> int:
        """Log that ``edit`` became served or stopped being served, and update the lookups."""
        self._set_lookups(txn, edit, served)
        return self._bump(txn, "add" if served else "remove", edit.num)

    def _scan(self) -> tuple[dict[str, set[int]], Counter[int], dict[int, str]]:
        """The lookups of a store without them, derived from its records (read-only opens of an
        older store only), rescanned when the store's generation moved."""
        gen = self.generation
        if self._scanned is None or self._scanned[0] != gen:
            names: dict[str, set[int]] = {}
            lengths: Counter[int] = Counter()
            special: dict[int, str] = {}
            for edit in self.iter_edits(None):
                if not edit.served:
                    continue
                edit_names = _lexicon_names(edit)
                if edit_names is None:
                    special[edit.num] = edit.kind
                for name in edit_names or ():
                    names.setdefault(name, set()).add(edit.num)
                    lengths[len(name.split())] += 1
            self._scanned = (gen, names, lengths, special)
        return self._scanned[1:]

    def lookup_names(self, norm_names: Iterable[str]) -> dict[str, set[int]]:
        """Normalized name -> nums of the served facts that have it as subject or alias, for
        those of ``norm_names`` that some served fact has."""
        if not self.lookups_stored:
            names = self._scan()[0]
            return {n: set(names[n]) for n in norm_names if names.get(n)}
        out: dict[str, set[int]] = {}
        with self._txn(db=self._names) as txn:
            cur = txn.cursor()
            for name in norm_names:
                prefix = _name_key(name) + b"\x00"
                if not cur.set_range(prefix):
                    continue
                for key in cur.iternext(keys=True, values=False):
                    if not key.startswith(prefix):
                        break
                    if len(key) == len(prefix) + 8:
                        out.setdefault(name, set()).add(_from_u64(key[-8:]))
        return out

    def name_lengths(self) -> Counter[int]:
        """Word count -> number of (name, served fact) entries of that many words."""
        if not self.lookups_stored:
            return Counter(self._scan()[1])
        raw = self.get_meta("name_lengths")
        return Counter({int(k): v for k, v in (raw or {}).items()})

    def name_count(self) -> int:
        """How many (name, served fact) entries the lexicon holds."""
        return sum(self.name_lengths().values())

    def special_edits(self) -> dict[int, str]:
        """num -> kind of the served edits that are not facts with a subject."""
        if not self.lookups_stored:
            return dict(self._scan()[2])
        with self._txn(db=self._special) as txn:
            return {_from_u64(k): bytes(v).decode() for k, v in txn.cursor()}

    # -- transactions ---------------------------------------------------------
    def _txn(self, **kwargs: Any) -> lmdb.Transaction:
        if self.env is None:
            raise StoreLockedError(f"store at {self.path} is closed")
        try:
            return self.env.begin(**kwargs)
        except lmdb.MapResizedError:  # another process grew the map: adopt its size
            self.env.set_mapsize(0)
            return self.env.begin(**kwargs)

    @contextmanager
    def _write(self) -> Iterator[lmdb.Transaction]:
        if self.readonly:
            raise StoreLockedError(f"store at {self.path} is open read-only")
        if self.env is None:
            raise StoreLockedError("store is closed")
        with self._txn(write=True) as txn:
            yield txn

    def _transact(self, body: Callable[[lmdb.Transaction], T]) -> T:
        """Run ``body`` in one write transaction; when it fills the map, double the map and run
        it again (the failed transaction was rolled back whole)."""
        while True:
            try:
                with self._write() as txn:
                    return body(txn)
            except lmdb.MapFullError:
                size = self.env.info()["map_size"]
                if size >= _MAP_MAX:
                    raise StoreError(f"store at {self.path} is full at {size} bytes") from None
                self.env.set_mapsize(min(2 * size, _MAP_MAX))

    def _bump(self, txn: lmdb.Transaction, op: str, num: int) -> int:
        raw = txn.get(b"generation", db=self._meta)
        gen = (0 if raw is None else int(raw)) + 1
        txn.put(b"generation", str(gen).encode(), db=self._meta)
        txn.put(_u64(gen), json.dumps({"op": op, "num": num}).encode(), db=self._changes)
        return gen

    # -- records --------------------------------------------------------------
    def _decode(self, raw: bytes, where: str) -> Edit:
        try:
            return Edit.from_dict(json.loads(raw))
        except (ValueError, TypeError) as exc:
            raise StoreCorruptError(f"record {where} in {self.path} is unreadable: {exc}") from exc

    def add(
        self,
        edit: Edit,
        vectors: np.ndarray,
        retire: dict[str, str] | None = None,
        *,
        tensors: dict[str, np.ndarray] | None = None,
        tensor_updates: dict[int, dict[str, np.ndarray]] | None = None,
    ) -> Edit:
        """Store a new edit (assigning its num) and retire others, in one transaction.

        ``retire`` maps edit ids to the reason they are retired (they are superseded by
        ``edit``). ``tensors`` are the new edit's learned tensors; ``tensor_updates`` maps the
        num of an existing active edit to replacement values for some of its tensors.
        Returns only after the transaction has committed."""
        self.add_many([NewEdit(edit, vectors, retire or {}, tensors, tensor_updates or {})])
        return edit

    @property
    def next_num(self) -> int:
        """The num the next stored edit gets."""
        with self._txn(db=self._meta) as txn:
            raw = txn.get(b"next_num")
        return 0 if raw is None else int(raw)

    def add_many(self, items: list[NewEdit], first_num: int | None = None) -> None:
        """Store several new edits in one transaction: all of them or none. Each item's
        ``retire`` may name edits stored earlier in the same batch. ``first_num``: the num the
        caller planned for the first item (codebook placements refer to nums); if another
        writer took it meanwhile, :class:`NumsMoved` and nothing is written."""

        def body(txn: lmdb.Transaction) -> None:
            raw = txn.get(b"next_num", db=self._meta)
            num = 0 if raw is None else int(raw)
            if first_num is not None and num != first_num:
                raise NumsMoved(f"next num is {num}, the batch was planned from {first_num}")
            for item in items:
                self._put_new(txn, item, num)
                num += 1
            txn.put(b"next_num", str(num).encode(), db=self._meta)

        self._transact(body)

    def _put_new(self, txn: lmdb.Transaction, item: NewEdit, num: int) -> None:
        edit = item.edit
        if txn.get(edit.id.encode(), db=self._edits) is not None:
            raise StoreError(f"edit id {edit.id} already exists")
        edit.num = num
        for old_id, reason in item.retire.items():
            old = self._get_in(txn, old_id)
            was_served = old.served
            old.status, old.retired_by, old.retired_reason = "retired", edit.id, reason
            txn.put(old_id.encode(), json.dumps(old.to_dict()).encode(), db=self._edits)
            if was_served:
                self._served_change(txn, old, False)
            else:
                self._bump(txn, "noop", old.num)
        txn.put(edit.id.encode(), json.dumps(edit.to_dict()).encode(), db=self._edits)
        if item.retire:
            txn.put(edit.id.encode(), json.dumps(sorted(item.retire)).encode(), db=self._supersedes)
        txn.put(_u64(num), edit.id.encode(), db=self._nums)
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(item.vectors, dtype=np.float32), allow_pickle=False)
        txn.put(_u64(num), buf.getvalue(), db=self._vectors)
        if item.tensors:
            txn.put(_u64(num), _pack(item.tensors), db=self._tensors)
        for other, changed in item.tensor_updates.items():
            current = self._tensors_in(txn, other)
            txn.put(_u64(other), _pack({**current, **changed}), db=self._tensors)
            self._bump(txn, "update", other)
        if edit.served:
            self._served_change(txn, edit, True)
        else:
            self._bump(txn, "noop", num)

    def _get_in(self, txn: lmdb.Transaction, edit_id: str) -> Edit:
        if not isinstance(edit_id, str) or not edit_id:
            raise EditNotFoundError(f"edit id must be a non-empty string, got {edit_id!r}")
        try:
            key = edit_id.encode()
        except UnicodeEncodeError:  # a lone surrogate: no stored id has one
            raise EditNotFoundError(f"no edit with id {edit_id!r}") from None
        raw = txn.get(key, db=self._edits)
        if raw is None:
            raise EditNotFoundError(f"no edit with id {edit_id!r}")
        return self._decode(raw, edit_id)

    def get(self, edit_id: str) -> Edit:
        with self._txn() as txn:
            return self._get_in(txn, edit_id)

    def get_by_num(self, num: int) -> Edit | None:
        with self._txn() as txn:
            raw = txn.get(_u64(num), db=self._nums)
            return None if raw is None else self._get_in(txn, raw.decode())

    def set_status(self, edit_id: str, status: str, reason: str | None = None) -> Edit:
        """Change an edit's status (retire, consolidate, reactivate) in one transaction."""

        def body(txn: lmdb.Transaction) -> Edit:
            edit = self._get_in(txn, edit_id)
            if edit.status == status:
                return edit
            was_served = edit.served
            edit.status = status
            edit.retired_reason = reason if status == "retired" else edit.retired_reason
            txn.put(edit_id.encode(), json.dumps(edit.to_dict()).encode(), db=self._edits)
            if was_served != edit.served:
                self._served_change(txn, edit, edit.served)
            return edit

        return self._transact(body)

    def commit_statuses(
        self,
        updates: dict[str, str],
        *,
        consolidated_in: str | dict[str, str] | None = None,
        meta: dict[str, Any] | None = None,
        expect: dict[str, str] | None = None,
        expect_meta: dict[str, Any] | None = None,
    ) -> None:
        """Change many edits' statuses and meta entries in one transaction: either all of it
        is on disk or none of it (the consolidation job and rollback rely on this).

        ``expect`` (edit id -> status) and ``expect_meta`` (key -> value) are checked inside
        the transaction: if any differs, :class:`StaleStateError` and nothing is written (a
        job that read an edit as active must not fold it after it was retired meanwhile).

        ``updates`` maps edit id -> new status; edits becoming "consolidated" record
        ``consolidated_in`` (one checkpoint id, or a mapping edit id -> checkpoint id).
        Unknown ids raise before anything is written."""
        def body(txn: lmdb.Transaction) -> None:
            for edit_id, status in (expect or {}).items():
                now = self._get_in(txn, edit_id).status
                if now != status:
                    raise StaleStateError(f"edit {edit_id} is {now} now, not {status}")
            for key, value in (expect_meta or {}).items():
                raw = txn.get(key.encode(), db=self._meta)
                now = None if raw is None else json.loads(raw)
                if now != value:
                    raise StaleStateError(f"store meta {key!r} is {now!r} now, not {value!r}")
            self._put_statuses(txn, updates, consolidated_in, meta)

        self._transact(body)

    def _put_statuses(
        self,
        txn: lmdb.Transaction,
        updates: dict[str, str],
        consolidated_in: str | dict[str, str] | None,
        meta: dict[str, Any] | None,
    ) -> None:
        edits = {edit_id: self._get_in(txn, edit_id) for edit_id in updates}
        for edit_id, status in updates.items():
            if status not in ("active", "retired", "consolidated"):
                raise StoreError(f"unknown status {status!r}")
            edit = edits[edit_id]
            was_served = edit.served
            edit.status = status
            owner = consolidated_in.get(edit_id) if isinstance(consolidated_in, dict) else consolidated_in
            edit.consolidated_in = owner if status == "consolidated" else None
            txn.put(edit_id.encode(), json.dumps(edit.to_dict()).encode(), db=self._edits)
            if was_served != edit.served:
                self._served_change(txn, edit, edit.served)
        for key, value in (meta or {}).items():
            txn.put(key.encode(), json.dumps(value).encode(), db=self._meta)

    def superseded_by(self, edit_id: str) -> list[str]:
        """Ids of the edits that ``edit_id`` retired as conflicts when it was added."""
        with self._txn(db=self._supersedes) as txn:
            raw = txn.get(edit_id.encode())
        return [] if raw is None else json.loads(raw)

    def vectors(self, num: int) -> np.ndarray:
        with self._txn(db=self._vectors) as txn:
            raw = txn.get(_u64(num))
        if raw is None:
            raise StoreCorruptError(f"vectors of edit num {num} are missing from {self.path}")
        try:
            return np.load(io.BytesIO(raw), allow_pickle=False)
        except ValueError as exc:
            raise StoreCorruptError(f"vectors of edit num {num} in {self.path} are unreadable: {exc}") from exc

    def _tensors_in(self, txn: lmdb.Transaction, num: int) -> dict[str, np.ndarray]:
        raw = None if self._tensors is None else txn.get(_u64(num), db=self._tensors)
        if raw is None:
            raise StoreCorruptError(f"tensors of edit num {num} are missing from {self.path}")
        try:
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (ValueError, OSError) as exc:
            raise StoreCorruptError(f"tensors of edit num {num} in {self.path} are unreadable: {exc}") from exc

    def tensors(self, num: int) -> dict[str, np.ndarray]:
        """The learned tensors of a prompt or codebook edit."""
        with self._txn() as txn:
            return self._tensors_in(txn, num)

    def iter_edits(self, status: str | None = "active") -> Iterator[Edit]:
        """All edits (with the given status; None for all), in insertion order."""
        with self._txn() as txn:
            for num_key, edit_id in txn.cursor(db=self._nums):
                raw = txn.get(edit_id, db=self._edits)
                if raw is None:
                    raise StoreCorruptError(f"edit num {_from_u64(num_key)} points to a missing record")
                edit = self._decode(raw, edit_id.decode())
                if status is None or edit.status == status:
                    yield edit

    def count(self) -> int:
        with self._txn(db=self._edits) as txn:
            return txn.stat(self._edits)["entries"]

    def changes_since(self, generation: int) -> list[tuple[int, str, int]]:
        """(generation, op, num) for every change after ``generation``, oldest first."""
        out = []
        with self._txn(db=self._changes) as txn:
            cur = txn.cursor()
            if cur.set_range(_u64(generation + 1)):
                for key, raw in cur:
                    change = json.loads(raw)
                    out.append((_from_u64(key), change["op"], change["num"]))
        return out

    # -- replication ----------------------------------------------------------
    def export_changes(self, after: int, limit: int = 500, meta_keys: tuple[str, ...] = ()) -> dict[str, Any]:
        """What a copy of this store at generation ``after`` needs to catch up, read in one
        transaction: the *current* record, vectors and tensors of the edits changed since
        (at most ``limit`` distinct edits, oldest change first), ``upto`` (the generation the
        copy is at once it applied them), this store's ``generation``, and the current value of
        ``meta_keys``. ``after=0`` walks the whole log: a snapshot of every edit, in pieces.
        Applying a record newer than ``upto`` is harmless: later changes resend it."""
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit}")
        with self._txn() as txn:
            raw = txn.get(b"generation", db=self._meta)
            generation = 0 if raw is None else int(raw)
            nums: dict[int, None] = {}  # distinct, in the order of their first change
            upto = after
            cur = txn.cursor(db=self._changes)
            if cur.set_range(_u64(after + 1)):
                for key, value in cur:
                    num = json.loads(value)["num"]
                    if num not in nums:
                        if len(nums) == limit:
                            break
                        nums[num] = None
                    upto = _from_u64(key)
            entries = []
            for num in nums:
                edit_id = txn.get(_u64(num), db=self._nums)
                if edit_id is None:
                    raise StoreCorruptError(f"change log names edit num {num}, which has no record")
                supersedes = txn.get(edit_id, db=self._supersedes)
                entries.append({
                    "num": num,
                    "record": bytes(txn.get(edit_id, db=self._edits)),
                    "vectors": bytes(txn.get(_u64(num), db=self._vectors)),
                    "tensors": None if self._tensors is None else _bytes_or_none(txn.get(_u64(num), db=self._tensors)),
                    "supersedes": _bytes_or_none(supersedes),
                })
            meta = {k: _json_or_none(txn.get(k.encode(), db=self._meta)) for k in meta_keys}
        return {"after": after, "upto": upto, "generation": generation, "entries": entries, "meta": meta}

    def apply_changes(self, batch: dict[str, Any]) -> int:
        """Apply :meth:`export_changes` of another store to this copy, in one transaction, and
        record its ``upto`` as ``replicated_generation``; returns it. Each edit is upserted under
        the source's num, with a local change entry that tells this copy's readers what to
        redo (add, remove, update or nothing). A batch for another starting point than this
        copy's ``replicated_generation`` is refused (:class:`StaleStateError`)."""

        def body(txn: lmdb.Transaction) -> int:
            raw = txn.get(b"replicated_generation", db=self._meta)
            at = 0 if raw is None else json.loads(raw)
            if batch["after"] != at:
                raise StaleStateError(f"batch starts after generation {batch['after']}, this copy is at {at}")
            raw = txn.get(b"next_num", db=self._meta)
            next_num = 0 if raw is None else int(raw)
            for entry in batch["entries"]:
                num, edit = entry["num"], self._decode(entry["record"], f"replicated num {entry['num']}")
                if edit.num != num:
                    raise StoreCorruptError(f"replicated record {edit.id} has num {edit.num}, sent as {num}")
                old_raw = txn.get(edit.id.encode(), db=self._edits)
                old = None if old_raw is None else self._decode(old_raw, edit.id)
                old_tensors = None if self._tensors is None else txn.get(_u64(num), db=self._tensors)
                txn.put(edit.id.encode(), entry["record"], db=self._edits)
                txn.put(_u64(num), edit.id.encode(), db=self._nums)
                txn.put(_u64(num), entry["vectors"], db=self._vectors)
                if entry["tensors"] is not None:
                    txn.put(_u64(num), entry["tensors"], db=self._tensors)
                if entry["supersedes"] is not None:
                    txn.put(edit.id.encode(), entry["supersedes"], db=self._supersedes)
                if (old is not None and old.served) != edit.served:
                    self._served_change(txn, edit, edit.served)
                elif edit.served and entry["tensors"] is not None and bytes(old_tensors or b"") != entry["tensors"]:
                    self._bump(txn, "update", num)
                else:
                    self._bump(txn, "noop", num)
                next_num = max(next_num, num + 1)
            txn.put(b"next_num", str(next_num).encode(), db=self._meta)
            for key, value in batch["meta"].items():
                if value is None:
                    txn.delete(key.encode(), db=self._meta)
                else:
                    txn.put(key.encode(), json.dumps(value).encode(), db=self._meta)
            txn.put(b"replicated_generation", json.dumps(batch["upto"]).encode(), db=self._meta)
            return batch["upto"]

        return self._transact(body)

    def disk_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())

    def close(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None
