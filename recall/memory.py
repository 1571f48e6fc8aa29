"""The edit memory as the query path sees it: the LMDB store plus the structures derived from
it (FAISS key index, compiled regex patches, learned kinds' tables), kept in step through the
store's change log so that readers in other processes see a writer's edits. The subject
lexicon is not held here: it is an LMDB sub-database looked up per query
(:meth:`EditStore.lookup_names`), so opening a large store reads neither its records nor a
lexicon."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from recall.core import regex_patch
from recall.core.edits import ANSWER_KINDS, LEARNED_KINDS, Edit, check_utf8
from recall.core.errors import ConfigError, InvalidQueryError, InvalidRegexError, StoreError
from recall.core.limits import LIMITS
from recall.core.names import inside_longer_name
from recall.core.query_views import query_views
from recall.core.text import (
    find_phrase,
    focus,
    name_spans,
    names_occur,
    normalize,
    refers_back,
    relation_text,
    word_ngrams,
)
from recall.gate import SCORER_GATES, Gate, PairFeatures
from recall.index import EditStore, TextEncoder, VectorIndex
from recall.index.store import NewEdit, NumsMoved
from recall.learned import CodebookTable, KnowledgeKinds, PromptTable
from recall.methods import grace
from recall.relation import RelationScorer, pair_texts, probability

log = logging.getLogger("recall.memory")

SLOTS = 16  # FAISS id = num * SLOTS + key slot
ENCODE_CHUNK = 4096  # texts per encoder call in a bulk add (the unit of its progress bar)
# the derived index file; renamed when what it holds changes, so an older file is rebuilt once
# (v2: consolidated edits are indexed too, see recall.core.edits.SERVED_STATUSES)
INDEX_FILE = "index.v2.faiss"
LEGACY_INDEX_FILES = ("index.faiss", "index.json")  # the files before v2 and their sidecar


@dataclass
class Candidate:
    """A retrieved edit with the gate's features, score and verdict for one query."""

    edit: Edit
    features: PairFeatures
    gate_score: float = 0.0
    fired: bool = False
    # set when the gate fired but another fired fact about the same subject won (see
    # resolve_conflicts): the winner's id
    shadowed_by: str | None = None


def resolve_conflicts(cands: list[Candidate]) -> None:
    """One fired fact per subject. Facts the gate fired for one query that share a name (subject
    or alias) answer the same question differently (a subject-and-relation duplicate is retired
    when it is added; these are the ones whose relations could not be told the same, such as
    "What architect designed X?" and "Who is the architect of X?"). Biasing toward several
    answers at once blends them ("Babur-Lahima"), so the fact whose key is closest to the query
    keeps firing, the newest when keys tie to two decimals, and the others are marked
    ``shadowed_by`` it."""
    fired = [c for c in cands if c.fired and c.edit.kind in ANSWER_KINDS and c.edit.subject]
    if len(fired) < 2:
        return
    fired.sort(key=lambda c: (round(c.features.cos_key, 2), c.edit.num), reverse=True)
    kept: list[tuple[set[str], Candidate]] = []
    for c in fired:
        names = {normalize(n) for n in c.edit.names}
        winner = next((w for w_names, w in kept if names & w_names), None)
        if winner is None:
            kept.append((names, c))
        else:
            c.fired, c.shadowed_by = False, winner.edit.id


def settle(cands: list[Candidate]) -> list[Candidate]:
    """One query's candidates after :func:`resolve_conflicts`, fired first, then by gate score."""
    resolve_conflicts(cands)
    cands.sort(key=lambda c: (c.fired, c.gate_score), reverse=True)
    return cands


class EditMemory:
    def __init__(
        self,
        path: str | Path,
        encoder: TextEncoder,
        gate: Gate,
        *,
        readonly: bool = False,
        knowledge: KnowledgeKinds | None = None,
        relation: RelationScorer | None = None,
    ) -> None:
        if gate.kind in SCORER_GATES and relation is None:
            raise ConfigError(f"the {gate.kind} gate needs a RelationScorer")
        if gate.kind == "sentinel" and not relation.has_sentinel:
            raise ConfigError("the sentinel gate needs a relation scorer checkpoint with a sentinel")
        self.store = EditStore(path, readonly=readonly)
        self.relation = relation  # the relation and sentinel gates' cross-encoder
        self.encoder = encoder
        self.gate = gate
        self.knowledge = knowledge  # the learned kinds' models (prompt edits, krm-sentinel gate, codebook)
        self._statement_reps: dict[int, np.ndarray] = {}  # krm-sentinel gate: knowledge rep per fact/patch
        self._lock = threading.RLock()
        stored_dim = self.store.get_meta("encoder_dim")
        if stored_dim is None and not readonly:
            self.store.set_meta("encoder", encoder.name)
            self.store.set_meta("encoder_dim", encoder.dim)
        elif stored_dim is not None and stored_dim != encoder.dim:
            raise StoreError(
                f"store was built with a {stored_dim}-d encoder "
                f"({self.store.get_meta('encoder')}); this encoder is {encoder.dim}-d"
            )
        self._reset_derived()
        self._open_derived()

    # -- derived state --------------------------------------------------------
    def _reset_derived(self) -> None:
        self._index: VectorIndex | None = None  # loaded on first use, see index
        self._index_generation = 0  # the change-log generation the loaded index reflects
        self.regexes: dict[int, tuple[Edit, object]] = {}
        # active facts without a subject and patches: the gate decides them on key similarity,
        # so only they need the query's embedding under the relation gate (see needs_dense)
        self.key_only: set[int] = set()
        self.prompts = PromptTable()
        self.codebook = CodebookTable()
        self.generation = 0

    def _open_derived(self) -> None:
        """Open in time that does not grow with the store: read the few served edits that are
        not facts with a subject. The key index is loaded on first use (:attr:`index`), except
        for a store without edits, whose index starts empty and is kept from the first write."""
        self.generation = self.store.generation
        for num in self.store.special_edits():
            edit = self.store.get_by_num(num)
            if edit is not None and edit.served:
                self._add_lookup(edit)
        if self.generation == 0:
            self._index, self._index_generation = VectorIndex(self.encoder.dim), 0

    @property
    def index(self) -> VectorIndex:
        """The FAISS key index, at the memory's generation. Loaded on first use: from its file
        plus the changes logged since it was saved, or rebuilt from every served edit's vectors
        when the file is missing, stale or corrupt. A query path that needs no embedding (the
        relation gate over facts with subjects) never loads it."""
        with self._lock:
            if self._index is None:
                self._index, self._index_generation = self._load_or_rebuild_index()
            if self._index_generation < self.generation:
                for gen, op, num in self.store.changes_since(self._index_generation):
                    if gen > self.generation:
                        break
                    self._change_vectors(op, self.store.get_by_num(num))
                    self._index_generation = gen
            return self._index

    @property
    def index_loaded(self) -> bool:
        """Whether the key index is in RAM (it is loaded on first use)."""
        return self._index is not None

    def _load_or_rebuild_index(self) -> tuple[VectorIndex, int]:
        loaded = VectorIndex.load(self.store.path / INDEX_FILE, self.encoder.dim, self.encoder.name)
        if loaded is not None and loaded[1] <= self.store.generation:
            return loaded
        index = VectorIndex(self.encoder.dim)
        generation = self.store.generation  # the rebuild reads the records as of now or later
        served = (e for e in self.store.iter_edits(None) if e.served and e.keys)
        for edit in tqdm(served, desc="rebuilding the key index", unit="edit", disable=None, leave=False):
            vecs = self.store.vectors(edit.num)[: len(edit.keys)]
            index.add(np.arange(len(edit.keys)) + edit.num * SLOTS, vecs, grow=False)
        index.grow()
        return index, generation

    def _add_lookup(self, edit: Edit) -> None:
        if edit.kind == "patch" or (edit.kind in ANSWER_KINDS and not edit.subject):
            self.key_only.add(edit.num)
        if edit.kind == "regex":
            flags = regex_patch.regex.IGNORECASE if edit.payload.get("ignore_case") else 0
            try:
                self.regexes[edit.num] = (edit, regex_patch.load_pattern(edit.payload["pattern"], flags))
            except InvalidRegexError as exc:  # stored before the size bound existed: skip it, keep serving
                log.warning("regex edit %s is not applied: %s", edit.id, exc)
        elif edit.kind == "prompt":
            self.prompts.put(edit.num, self.store.tensors(edit.num))
        elif edit.kind == "codebook":
            self.codebook.put(edit.num, self.store.tensors(edit.num))

    def _drop_lookup(self, edit: Edit) -> None:
        self.regexes.pop(edit.num, None)
        self.key_only.discard(edit.num)
        self.prompts.drop(edit.num)
        self.codebook.drop(edit.num)

    def _change_vectors(self, op: str, edit: Edit | None) -> None:
        """Apply one logged change (of ``edit``, None if unknown) to the loaded index."""
        if edit is None or not edit.keys or op not in ("add", "remove"):
            return
        ids = np.arange(len(edit.keys)) + edit.num * SLOTS
        if op == "add":
            self._index.add(ids, self.store.vectors(edit.num)[: len(edit.keys)])
        else:
            self._index.remove(ids)

    def _apply_changes(self, changes: list[tuple[int, str, int]]) -> None:
        """Bring the in-RAM state (and the index, when loaded and current) to the newest change."""
        for gen, op, num in changes:
            edit = self.store.get_by_num(num)
            if self._index is not None and self._index_generation == self.generation:
                self._change_vectors(op, edit)
                self._index_generation = gen
            if edit is not None and op == "add":
                self._add_lookup(edit)
            elif edit is not None and op == "remove":
                self._drop_lookup(edit)
            elif edit is not None and op == "update" and edit.served:
                self._add_lookup(edit)  # its tensors changed (a codebook radius)
            self.generation = gen

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[EditMemory]:
        """Hold the memory's write lock for a multi-step job (consolidation, rollback) that
        reads edits, changes statuses and re-syncs, so no add/remove interleaves with it.
        Re-entrant: the memory's own methods can be called inside."""
        with self._lock:
            yield self

    def sync(self) -> None:
        """Bring derived state up to the store's latest generation (cheap when nothing changed)."""
        with self._lock:
            if self.store.generation != self.generation:
                self._apply_changes(self.store.changes_since(self.generation))

    # -- writes ---------------------------------------------------------------
    @staticmethod
    def edit_texts(edit: Edit) -> list[str]:
        """What an edit's vector rows encode: one per retrieval key, then the relation text
        (facts and prompt edits with a subject)."""
        texts = list(edit.keys)
        if edit.kind in ANSWER_KINDS and edit.keys:
            texts.append(relation_text(edit.payload["prompt"], edit.subject))
        return texts

    def encode_edit(self, edit: Edit) -> np.ndarray:
        """The edit's vector rows (see :meth:`edit_texts`)."""
        texts = self.edit_texts(edit)
        return self.encoder.encode(texts) if texts else np.zeros((0, self.encoder.dim), np.float32)

    def conflicts(
        self, edit: Edit, vectors: np.ndarray, pending: Sequence[tuple[Edit, np.ndarray]] = ()
    ) -> dict[str, str]:
        """Active facts the new fact supersedes: same subject and the same question.

        The question is the same when both edits name their relation and the names agree, or,
        when either does not, when their relation texts (subject masked) are the same words:
        equal once normalized, or at cosine ``conflict_rel_threshold`` (.97) or more. Facts
        whose questions are only similar ("What architect designed X?", "Who is the architect
        of X?") both stay: each keeps answering its own question, and a query that fires
        several of them takes the closest (:func:`resolve_conflicts`). A client that means a
        correction of the same relation in other words says so with ``relation=``, or retires
        the old fact. ``pending``: active facts (with their vectors) of the same batch, stored
        before this one in the same transaction, that have this edit's subject as a name."""
        if edit.kind not in ANSWER_KINDS or not edit.subject:
            return {}
        subject = normalize(edit.subject)
        olds = [(self.store.get_by_num(num), None) for num in self.store.lookup_names([subject]).get(subject, ())]
        olds += list(pending)
        out = {}
        words = normalize(relation_text(edit.payload["prompt"], edit.subject))
        for old, old_vecs in olds:
            if old is None or old.status != "active" or old.id == edit.id:
                continue
            rel_new, rel_old = edit.payload.get("relation"), old.payload.get("relation")
            if rel_new and rel_old:
                same = rel_new == rel_old
            else:
                prompt = edit.payload["prompt"]
                f = pair_features(prompt, vectors[0], vectors[-1], old,
                                  self.store.vectors(old.num) if old_vecs is None else old_vecs)
                same = bool(f.subj_focus) and (
                    f.cos_rel >= self.gate.params.conflict_rel_threshold
                    or words == normalize(relation_text(old.payload["prompt"], old.subject))
                )
            if same:
                out[old.id] = (
                    f"superseded by {edit.id}: same subject {edit.subject!r} and relation "
                    f"({edit.payload['prompt']!r} -> {edit.payload['target']!r})"
                )
        return out

    def add(self, edit: Edit) -> Edit:
        """Store an edit (see :meth:`add_many`)."""
        self.add_many([edit])
        return edit

    def add_many(self, edits: list[Edit], progress: bool = False) -> None:
        """Store edits, in order, in one LMDB transaction: all of them or none (a bulk import
        killed half-way leaves nothing). Keys are encoded in batches (each distinct text once;
        a tqdm bar per ``ENCODE_CHUNK`` texts with ``progress``). A later edit of the batch
        supersedes an earlier one like a separate add would. Learned kinds get their tensors
        computed here, under the lock, since a codebook edit's placement depends on the
        entries already present (earlier edits of the batch included)."""
        texts = [self.edit_texts(e) for e in edits]
        # each distinct text once: a bulk import repeats its relation texts (subject masked)
        unique = list(dict.fromkeys(t for row in texts for t in row))
        chunks = range(0, len(unique), ENCODE_CHUNK)
        encoded = np.concatenate(
            [
                self.encoder.encode(unique[i : i + ENCODE_CHUNK])
                for i in tqdm(chunks, desc="encoding keys", unit="chunk", disable=not progress or len(chunks) < 2)
            ]
            or [np.zeros((0, self.encoder.dim), np.float32)]
        )
        where = {t: i for i, t in enumerate(unique)}
        vectors = [encoded[[where[t] for t in row]] for row in texts]
        with self._lock:
            for attempt in range(3):
                self.sync()
                first = self.store.next_num
                try:
                    self.store.add_many(self._plan_batch(edits, vectors, first), first_num=first)
                except BaseException as exc:
                    if any(e.kind == "codebook" for e in edits):
                        self._reload_codebook()  # planning placed entries the store does not hold
                    if not isinstance(exc, NumsMoved) or attempt == 2:
                        raise
                    continue  # another process wrote meanwhile: plan again from its state
                finally:
                    self.sync()
                return

    def _reload_codebook(self) -> None:
        """The codebook table as the store holds it (after a batch planned entries into it)."""
        self.codebook = CodebookTable()
        for num, kind in self.store.special_edits().items():
            edit = self.store.get_by_num(num) if kind == "codebook" else None
            if edit is not None and edit.served:
                self.codebook.put(edit.num, self.store.tensors(edit.num))

    def _plan_batch(self, edits: list[Edit], vectors: list[np.ndarray], first: int) -> list[NewEdit]:
        items: list[NewEdit] = []
        retired: set[str] = set()  # by earlier edits of the batch: not retired twice
        named: dict[str, list[tuple[Edit, np.ndarray]]] = {}  # the batch's active facts, keyed as the lexicon
        for k, (edit, vecs) in enumerate(zip(edits, vectors)):
            subject = normalize(edit.subject) if edit.kind in ANSWER_KINDS and edit.subject else None
            pending = [(e, v) for e, v in named.get(subject, ()) if e.id not in retired]
            found = self.conflicts(edit, vecs, pending) if edit.status == "active" else {}
            retire = {old: why for old, why in found.items() if old not in retired}
            retired |= set(retire)
            if subject is not None and edit.status == "active":
                for name in {normalize(n) for n in edit.names}:
                    named.setdefault(name, []).append((edit, vecs))
            tensors, updates = None, {}
            if edit.kind in LEARNED_KINDS:
                if self.knowledge is None:
                    raise ConfigError(f"{edit.kind} edits need a runtime with a loaded model")
                if edit.kind == "prompt":
                    tensors = self.knowledge.prompt_tensors(edit)
                else:
                    tensors, updates, info = self.knowledge.codebook_tensors(edit, self.codebook)
                    tensors["placement"] = np.array(info["placement"])
                    if edit.status == "active":  # later edits of the batch are placed against it
                        for num, changed in updates.items():
                            self.codebook.put(num, {**self.codebook.entries[num], **changed})
                        self.codebook.put(first + k, tensors)
            items.append(NewEdit(edit, vecs, retire, tensors, updates or {}))
        return items

    def set_status(self, edit_id: str, status: str, reason: str | None = None) -> Edit:
        with self._lock:
            edit = self.store.set_status(edit_id, status, reason)
            self.sync()
        return edit

    # -- queries --------------------------------------------------------------
    def _features(
        self, query: str, q_vec: np.ndarray, rel_vecs: dict[str, np.ndarray], edit: Edit
    ) -> PairFeatures:
        # the relation text masks whichever of the edit's names the query uses (subject or alias)
        rel_vec = next((rel_vecs[n] for n in map(normalize, edit.names) if n in rel_vecs), None)
        return pair_features(query, q_vec, rel_vec, edit, self.store.vectors(edit.num))

    def query_knowledge(self, queries: list[str]) -> tuple | None:
        """The queries' knowledge-encoder representations and sentinel similarities, when the
        krm-sentinel gate needs them (else None: no encoder pass)."""
        self.sync()
        if self.knowledge is None or self.gate.kind != "krm-sentinel":
            return None
        return self.knowledge.query_reps(queries)

    def _sentinel_margins(self, queries: list[str], retrieved: list[list[Edit]], knowledge_q: tuple | None):
        """Per query and retrieved fact or patch: sim(query, its knowledge statement) minus
        sim(query, sentinel), the feature the krm-sentinel gate fires on when positive."""
        if knowledge_q is None:
            knowledge_q = self.query_knowledge(queries)
        if knowledge_q is None:
            raise ConfigError("the krm-sentinel gate needs the continuous-prompt model (open through Runtime)")
        r_q, sentinel = knowledge_q
        todo = {e.num: e for row in retrieved for e in row if e.num not in self._statement_reps}
        if todo:
            reps = self.knowledge.statement_reps(list(todo.values())).cpu().numpy()
            self._statement_reps.update(zip(todo, reps))
        margins = []
        for i, row in enumerate(retrieved):
            if not row:
                margins.append([])
                continue
            reps = torch.from_numpy(np.stack([self._statement_reps[e.num] for e in row])).to(r_q.device)
            sims = self.knowledge.recipe.similarity(r_q[i : i + 1], reps)[0]
            margins.append([float(x) - float(sentinel[i]) for x in sims])
        return margins

    def names_in(self, text: str) -> list[str]:
        """The names of active facts' subjects (and aliases) that ``text`` mentions, as written
        there, longest first: what a pronoun in the next turn most likely refers to. A name
        inside another entity's longer name ("Paris" in "Paris Hilton") is not listed."""
        self.sync()
        grams = list(self.store.lookup_names(word_ngrams(normalize(text), self.store.name_lengths())))
        found = []
        for g in sorted(grams, key=len, reverse=True):
            written = find_phrase(text, g)
            if written and inside_longer_name(text, [written]):
                continue
            if written and not any(name_spans(f, g) for f in found):
                found.append(written)
        return found

    @property
    def needs_dense(self) -> bool:
        """Whether a query's verdicts depend on its embedding. Under the relation gate a fact
        fires only when one of its names occurs in the query, so when every active fact has a
        subject and no patch is active, the name lexicon finds every edit that can fire and the
        retrieval encoder is not run (key similarity is computed only to settle a conflict)."""
        return self.gate.kind not in SCORER_GATES or bool(self.key_only)

    def retrieve(
        self, queries: list[str], k: int = 8, knowledge_q: tuple | None = None, dense: bool = False
    ) -> list[list[Candidate]]:
        """Top-k by key similarity plus every fact whose subject occurs in the query, each with
        the gate's verdict (``knowledge_q`` from :meth:`query_knowledge` for the sentinel gate).

        When no verdict depends on the embedding (:attr:`needs_dense` is false), only the facts
        whose names occur are retrieved and ``cos_key`` stays None; ``dense=True`` (explain)
        always adds the top-k and key similarities. The verdicts are the same either way."""
        self.sync()
        lengths = self.store.name_lengths()
        subject_hits = [self.store.lookup_names(word_ngrams(normalize(q), lengths)) for q in queries]
        if not dense and not self.needs_dense:
            return self._retrieve_by_name(queries, subject_hits)
        if self.index.ntotal == 0 and not any(subject_hits):
            return [[] for _ in queries]  # no fact or patch could be retrieved: skip the encoder
        rel_texts = [(i, s, query_relation_text(queries[i], s)) for i, hits in enumerate(subject_hits) for s in hits]
        if not self.gate.uses_relation_cosine:
            rel_texts = []  # no encoder pass for a feature the gate does not read
        vecs = self.encoder.encode(list(queries) + [t for _, _, t in rel_texts])
        q_vecs, r_vecs = vecs[: len(queries)], vecs[len(queries) :]
        rel_by_query: list[dict[str, np.ndarray]] = [{} for _ in queries]
        for (i, s, _), v in zip(rel_texts, r_vecs):
            rel_by_query[i][s] = v
        _, ids = self.index.search(q_vecs, k)
        retrieved = []
        for i in range(len(queries)):
            nums = {int(x) // SLOTS for x in ids[i] if x >= 0}
            for hit in subject_hits[i].values():
                nums |= hit
            edits = (self.store.get_by_num(num) for num in sorted(nums))
            retrieved.append([e for e in edits if e is not None and e.served])
        margins = self._sentinel_margins(queries, retrieved, knowledge_q) if self.gate.kind == "krm-sentinel" else None
        features = [[self._features(query, q_vecs[i], rel_by_query[i], edit) for edit in retrieved[i]]
                    for i, query in enumerate(queries)]
        if self.gate.kind in SCORER_GATES:
            self._relation_margins(queries, retrieved, features)
        if margins is not None:
            for i in range(len(queries)):
                for j in range(len(retrieved[i])):
                    features[i][j].sentinel_margin = margins[i][j]
        return [settle(row) for row in self._verdicts(retrieved, features)]

    def _retrieve_by_name(
        self, queries: list[str], subject_hits: list[dict[str, set[int]]]
    ) -> list[list[Candidate]]:
        """The relation gate's candidates when no verdict reads key similarity: the active facts
        one of whose names occurs in the query. Queries where several fired facts share a name
        are encoded afterwards, so that :func:`resolve_conflicts` settles them as in the dense path."""
        retrieved = []
        for hits in subject_hits:
            edits = (self.store.get_by_num(num) for num in sorted(set().union(*hits.values())))
            retrieved.append([e for e in edits if e is not None and e.served])
        features = [[pair_features(q, None, None, e) for e in row] for q, row in zip(queries, retrieved)]
        self._relation_margins(queries, retrieved, features)
        rows = self._verdicts(retrieved, features)
        todo = [i for i, row in enumerate(rows) if sum(c.fired for c in row) > 1]
        if todo:
            for i, q_vec in zip(todo, self.encoder.encode([queries[i] for i in todo])):
                for c in rows[i]:
                    c.features.cos_key = key_similarity(q_vec, c.edit, self.store.vectors(c.edit.num))
        return [settle(row) for row in rows]

    def _verdicts(self, retrieved: list[list[Edit]], features: list[list[PairFeatures]]) -> list[list[Candidate]]:
        """Per query: every candidate with the gate's score and verdict (conflicts not yet settled)."""
        return [
            [Candidate(edit, f, *self.gate.score(f, edit.kind)) for edit, f in zip(row, feats)]
            for row, feats in zip(retrieved, features)
        ]

    def _relation_margins(self, queries: list[str], retrieved: list[list[Edit]],
                          features: list[list[PairFeatures]]) -> None:
        scorer_margins(self.relation, self.gate.kind == "sentinel", queries, retrieved, features)

    def codebook_hook(self):
        """Context manager yielding the installed codebook hook, or None when no codebook edit
        is active."""
        self.sync()
        if self.knowledge is None or not self.codebook.entries:
            return contextlib.nullcontext(None)
        return self.knowledge.codebook_hook(self.codebook)

    def codebook_explain(self, model, tokenizer, prompt: str) -> dict | None:
        """The nearest codebook entry to the prompt's key: its edit, distance, radius, and hit."""

        self.sync()
        keys, radii, _, _, nums = self.codebook.arrays()
        if keys is None:
            return None
        q = grace.query_keys(model, tokenizer, [prompt], self.knowledge.grace_hp)
        idx, hit = grace.lookup(keys, radii, q)
        j = int(idx[0])
        edit = self.store.get_by_num(nums[j])
        return {
            "id": edit.id if edit else None,
            "distance": round(float(torch.dist(q[0], keys[j])), 4),
            "radius": round(float(radii[j]), 4),
            "hit": bool(hit[0]),
        }

    def regex_edits(self, scope: str) -> list[tuple[Edit, object]]:
        self.sync()
        return [(e, c) for e, c in self.regexes.values() if e.payload["scope"] == scope]

    def close(self) -> None:
        with self._lock:
            if self.store.env is None:
                return
            if not self.store.readonly and self._index is not None and self._index.dirty:
                try:
                    self._index.save(self.store.path / INDEX_FILE, self._index_generation, self.encoder.name)
                    for name in LEGACY_INDEX_FILES:
                        (self.store.path / name).unlink(missing_ok=True)
                except OSError:
                    pass  # derived data: rebuilt on next open
            self.store.close()


def query_relation_text(query: str, norm_subject: str) -> str:
    """The query's focus sentence with the subject (as written in the query) masked."""
    return relation_text(focus(query), find_phrase(query, norm_subject) or norm_subject)


def key_similarity(q_vec: np.ndarray, edit: Edit, edit_vecs: np.ndarray) -> float:
    """The best cosine between the query's embedding and the edit's keys (0 without keys)."""
    n_keys = len(edit.keys)
    return float(np.max(edit_vecs[:n_keys] @ q_vec)) if n_keys else 0.0


def scorer_margins(relation: RelationScorer, sentinel: bool, queries: list[str], retrieved: list[list[Edit]],
                   features: list[list[PairFeatures]]) -> None:
    """Set ``relation_margin`` on every pair whose query names the edit's subject (or an
    alias): one batched pass of the relation scorer over those pairs only. With ``sentinel``
    (the sentinel gate) also ``sentinel_margin``: the pair's logit minus the sentinel's logit
    against the same masked query (one more pair per distinct masked query). The scorer also
    reads the query's shorter readings without descriptions of the subject
    (:func:`recall.core.query_views.query_views`) in the same batch; the best reading decides, and
    ``relation_view`` names it when it is not the query itself."""
    slots, views, texts = [], [], []  # slots[k]: the pair that texts[k] reads (one text per view)
    for i, row in enumerate(retrieved):
        for j, edit in enumerate(row):
            if features[i][j].subj_any:
                answer = edit.payload.get("target") if relation.reads_answer else None
                for view in (None, *query_views(queries[i], edit.names, edit.payload["prompt"])):
                    slots.append((i, j))
                    views.append(view)
                    texts.append(pair_texts(edit.payload["prompt"], view or queries[i], edit.names, answer))
    if not texts:
        return
    logits = relation.logits(texts)
    probs = probability(logits)
    thresholds: dict[str, float] = {}
    if sentinel:
        masked = sorted({q for _, q in texts})
        thresholds = dict(zip(masked, relation.sentinel_logits(masked).tolist()))
    for (i, j), view, (_, query), z, p in zip(slots, views, texts, logits, probs):
        f = features[i][j]  # the best reading decides; the query itself comes first
        margin = float(p) - relation.threshold
        if f.relation_margin is None or margin > f.relation_margin:
            f.relation_margin, f.relation_view = margin, view
        if sentinel:
            margin = float(z) - thresholds[query]
            f.sentinel_margin = margin if f.sentinel_margin is None else max(f.sentinel_margin, margin)


def pair_features(
    query: str,
    q_vec: np.ndarray | None,
    query_rel_vec: np.ndarray | None,
    edit: Edit,
    edit_vecs: np.ndarray | None = None,
) -> PairFeatures:
    """Gate features of one (query, edit) pair. ``edit_vecs`` rows: the edit's keys, then
    (facts with a subject) its relation text; ``query_rel_vec`` encodes
    ``query_relation_text(query, subject)`` when the subject occurs in the query; ``q_vec``
    None: the query was not encoded (``cos_key`` None), and with both vectors None the edit's
    vectors are not needed."""
    n_keys = len(edit.keys)
    cos_key = key_similarity(q_vec, edit, edit_vecs) if q_vec is not None else None
    # a prompt edit stored before prompt edits had keys has no vectors: it is never in scope
    if edit.kind not in ANSWER_KINDS or not edit.subject or not n_keys:
        return PairFeatures(cos_key=cos_key)
    query_focus = focus(query)
    # a name inside a longer one ("Paris" in "Paris Hilton") names another entity
    subj_any = names_occur(query, edit.names) and not inside_longer_name(query, edit.names, edit.prompt)
    subj_focus = subj_any and names_occur(query_focus, edit.names) and not inside_longer_name(
        query_focus, edit.names, edit.prompt)
    matched = subj_any and query_rel_vec is not None
    cos_rel = float(edit_vecs[n_keys] @ query_rel_vec) if matched else 0.0
    return PairFeatures(cos_key=cos_key, subj_focus=float(subj_focus), subj_any=float(subj_any), cos_rel=cos_rel,
                        focus_refers_back=subj_focus or refers_back(query_focus),
                        has_subject=True, rel_product=edit_vecs[n_keys] * query_rel_vec if matched else None)


def check_queries(prompts: object, name: str = "prompts") -> list[str]:
    """Validate a batch of query texts; raise InvalidQueryError naming the bad row."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise InvalidQueryError(f"{name} must be a string or a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise InvalidQueryError(f"{name} is empty")
    if len(prompts) > LIMITS.max_batch:
        raise InvalidQueryError(f"{name} has {len(prompts)} rows; the limit is {LIMITS.max_batch}")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise InvalidQueryError(f"{name}[{i}] must be a string, got {type(p).__name__}")
        if not p.strip():
            raise InvalidQueryError(f"{name}[{i}] is empty or whitespace only")
        check_utf8(p, f"{name}[{i}]", InvalidQueryError)
        if len(p) > LIMITS.max_query_chars:
            raise InvalidQueryError(f"{name}[{i}] has {len(p)} characters; the limit is {LIMITS.max_query_chars}")
    return list(prompts)
