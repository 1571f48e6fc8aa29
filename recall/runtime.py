"""The runtime users touch: an edit memory consulted before every query, over a model whose
weights never change."""

from __future__ import annotations

import copy
import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recall.checkpoints import CheckpointDir, ServedWeights
from recall.consolidate import run_job
from recall.core import regex_patch
from recall.core.chat import check_messages, scope_query
from recall.core.edits import Edit, build_edit, validate_record
from recall.core.errors import (
    CheckpointError,
    ConfigError,
    EditConflictError,
    ImportFormatError,
    InvalidEditError,
    InvalidQueryError,
    RecallIOError,
    StoreCorruptError,
    StoreLockedError,
)
from recall.core.lm import RowPlan, SamplingOptions, TokenScore, context_length, generate_rows, score_tokens_rows
from recall.core.models import load_model
from recall.gate import DEFAULT_GATE, SCORER_GATES, Gate, GateParams
from recall.index import TextEncoder
from recall.inject import DEFAULT_INJECTION, Injector
from recall.learned import KnowledgeKinds
from recall.memory import EditMemory, check_queries
from recall.methods.editor import DEFAULT_EDITOR
from recall.methods.layer_stats import model_fingerprint
from recall.relation import RelationScorer

log = logging.getLogger("recall.runtime")
_NO_CHECKPOINT = object()  # distinct from None, which names the base weights

# positions of the model's context kept free for what injection adds to a row (a fact as
# context, a continuous prompt's prefix), so a query that fits is never refused for its edits
INJECTION_RESERVE = 64
MIN_TEMPERATURE = 1e-4  # below this, sampling is greedy decoding (see check_sampling)
SEED_MIN, SEED_MAX = -(1 << 63), (1 << 64) - 1  # what torch.Generator.manual_seed takes


def _check_max_new_tokens(n: object) -> int:
    if not isinstance(n, int) or not 0 < n <= 4096:
        raise InvalidQueryError(f"max_new_tokens must be an int in 1..4096, got {n!r}")
    return n


def check_sampling(do_sample: bool, temperature: float, top_p: float, top_k: int, seed: int | None) -> SamplingOptions:
    """Validated sampling settings. A temperature below :data:`MIN_TEMPERATURE` samples greedily:
    dividing logits by it overflows to infinity, and its limit is the greedy choice anyway."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
        raise InvalidQueryError(f"temperature must be a finite number, got {temperature!r}")
    if temperature <= 0 or not (isinstance(top_p, (int, float)) and 0 < top_p <= 1):
        raise InvalidQueryError("need temperature > 0 and 0 < top_p <= 1")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise InvalidQueryError(f"top_k must be an int >= 0, got {top_k!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not SEED_MIN <= seed <= SEED_MAX):
        raise InvalidQueryError(f"seed must be an int in [{SEED_MIN}, {SEED_MAX}], got {seed!r}")
    greedy = not do_sample or temperature < MIN_TEMPERATURE
    return SamplingOptions(not greedy, float(temperature), float(top_p), top_k, seed)


class Runtime:
    """Open with :meth:`open`. Query path per row: input regexes -> retrieve top-k -> gate ->
    inject -> model -> output regexes."""

    def __init__(
        self, memory: EditMemory, model, tokenizer, spec, injector: Injector, top_k: int = 8, max_fired: int = 3
    ) -> None:
        self.memory = memory
        self.model = model
        self.tokenizer = tokenizer
        self.spec = spec
        self.injector = injector
        self.top_k = top_k
        self.max_fired = max_fired
        self.served = ServedWeights(model, CheckpointDir(memory.store.path))
        self._owns_model = False
        self._base_fingerprint: str | None = None
        self._unservable_head: object = _NO_CHECKPOINT  # a head that failed to load (not retried)
        self.head_error: str | None = None

    @classmethod
    def open(
        cls,
        path: str | Path,
        model: str | Path | None = None,
        encoder: str | Path | None = None,
        device: str = "auto",
        *,
        gate: str = DEFAULT_GATE,
        injection: str = DEFAULT_INJECTION,
        bias_weight: float = 0.9,
        top_k: int = 8,
        readonly: bool = False,
        gate_params: str | Path | GateParams | None = None,
        recipe: str | Path | None = None,
        prompt_tuning: str | Path | None = None,
        relation_scorer: str | Path | None = None,
    ) -> Runtime:
        """Open (or create) a store directory and load the model and encoder.

        ``model``/``encoder`` are local paths and default to the embedded SmolLM2-135M-Instruct
        and all-MiniLM-L6-v2. Options are those of :meth:`from_loaded`."""
        lm, tok, spec = load_model(model, device)
        enc = TextEncoder(encoder, device=str(lm.device))
        return cls.from_loaded(
            path,
            (lm, tok, spec),
            enc,
            gate=gate,
            injection=injection,
            bias_weight=bias_weight,
            top_k=top_k,
            readonly=readonly,
            gate_params=gate_params,
            recipe=recipe,
            prompt_tuning=prompt_tuning,
            relation_scorer=relation_scorer,
            _owns_model=True,
        )

    @classmethod
    def from_loaded(
        cls,
        path: str | Path,
        loaded: tuple,
        encoder: TextEncoder,
        *,
        gate: str = DEFAULT_GATE,
        injection: str = DEFAULT_INJECTION,
        bias_weight: float = 0.9,
        top_k: int = 8,
        readonly: bool = False,
        gate_params: str | Path | GateParams | None = None,
        recipe: str | Path | None = None,
        prompt_tuning: str | Path | None = None,
        relation_scorer: str | Path | None = None,
        _owns_model: bool = False,
    ) -> Runtime:
        """Open a store over an already loaded ``(model, tokenizer, spec)`` and encoder, so
        several stores (tests, benchmarks) can share one model in memory.

        ``gate``: "relation" (default: a name of the subject occurs and the relation scorer says
        the query asks the edit's relation), "learned", "subject", "cosine", "sentinel" (RECIPE's
        knowledge sentinel as a dynamic threshold on the relation scorer), "krm-sentinel" (the
        sentinel in RECIPE's bi-encoder) or "always"; ``injection``: "auto" (default: "slot" for chat
        replies, "decode" for text continuations), "decode" (the answer biased at the first
        position), "slot" (biased where the model is about to state an answer), "context" or
        "both";
        ``bias_weight``: λ of memory-conditioned decoding; ``recipe``: the continuous-prompt
        checkpoint directory (default: the one shipped for the embedded model), loaded on first
        use by prompt edits or the krm-sentinel gate; ``prompt_tuning``: a JSON file of
        :class:`recall.methods.prompt_tuning.PromptTuningHyperParams` for the prefix tuned at
        each prompt edit's add (default: ``methods/hparams/prompt_tuning/<family>.json``);
        ``relation_scorer``: the relation and sentinel gates' scorer checkpoint (default: the shipped one,
        ``recall/data/relation_scorer.pt``; ``recall gate train-relation`` writes others); a
        ``ConfigError`` with any other gate.

        A store whose consolidation left a checkpoint serves it: the runtime then works on
        its own copy of the model, so the shared one is never modified."""
        lm, tok, spec = loaded
        if relation_scorer is not None and gate not in SCORER_GATES:
            gates = " and ".join(SCORER_GATES)
            raise ConfigError(f"relation_scorer is read by the {gates} gates only; this runtime's gate is {gate!r}")
        params = gate_params if isinstance(gate_params, GateParams) else GateParams.load(gate_params)
        knowledge = KnowledgeKinds(lm, tok, spec, recipe, prompt_tuning)
        relation = RelationScorer(relation_scorer, device=str(lm.device)) if gate in SCORER_GATES else None
        memory = EditMemory(path, encoder, Gate(gate, params), readonly=readonly, knowledge=knowledge,
                            relation=relation)
        rt = cls(memory, lm, tok, spec, Injector(tok, injection, bias_weight), top_k=top_k)
        rt._owns_model = _owns_model
        try:
            head = memory.store.get_meta("checkpoint_head")
            if head:
                rt._serve_checkpoint(head)
        except BaseException:
            memory.close()
            raise
        return rt

    # -- edits ----------------------------------------------------------------
    def add_edit(self, kind: str = "fact", *, provenance: str | None = None, **fields: Any) -> Edit:
        """Validate and store an edit; returns after the LMDB transaction has committed.

        A fact or prompt edit with the same subject and relation as an active one retires the
        older. ``kind="prompt"`` costs one knowledge-encoder pass and a few prefix-tuning steps
        of the model (``methods/hparams/prompt_tuning``); ``kind="codebook"`` trains one GRACE
        value (up to ``n_iter`` steps of the model)."""
        edit = build_edit(kind, provenance=provenance, **fields)
        self.check_special_tokens(edit)
        return self.memory.add(edit)

    def check_special_tokens(self, edit: Edit) -> None:
        """Refuse an edit whose text holds one of the tokenizer's special tokens (``<|im_end|>``
        and the like): injected into a prompt, it would end a chat turn or open a new one in
        another user's conversation."""
        specials = [t for t in self.tokenizer.all_special_tokens if t and len(t) > 1]
        texts = [edit.subject or "", *(v for v in edit.payload.values() if isinstance(v, str))]
        texts += [a for f in ("aliases", "short_names") for a in edit.payload.get(f) or [] if isinstance(a, str)]
        for text in texts:
            for token in specials:
                if token in text:
                    raise InvalidEditError(f"edit text contains the special token {token!r}")

    def remove_edit(self, edit_id: str) -> Edit:
        """Retire an edit (it stays in the store, visible with ``edits(status="retired")``).

        A consolidated edit lives in the weights: removing it rolls the served weights back to
        the checkpoint before the one that holds it, in the same transaction that retires it.
        The other edits of that checkpoint (and of later ones) become active again, answered
        from memory, so removing one edit loses no other (:meth:`rollback`)."""
        edit = self.memory.store.get(edit_id)
        if edit.status != "consolidated":
            return self.memory.set_status(edit_id, "retired", "removed")
        parent = self.served.dir.manifest(edit.consolidated_in).get("parent") if edit.consolidated_in else None
        self.rollback(parent, retire=[edit_id])
        return self.memory.store.get(edit_id)

    def get_edit(self, edit_id: str) -> Edit:
        return self.memory.store.get(edit_id)

    def edits(self, status: str | None = "active") -> list[Edit]:
        """Edits with the given status ("active", "retired", "consolidated"; None for all)."""
        return list(self.memory.store.iter_edits(status))

    def export_jsonl(self, path: str | Path) -> int:
        """Write every edit (all statuses) as one JSON object per line; returns the count."""
        n = 0
        tmp = Path(str(path) + ".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                for edit in self.memory.store.iter_edits(None):
                    record = edit.to_dict()
                    record.pop("num")
                    fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                    n += 1
            tmp.replace(path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise RecallIOError(f"cannot write the export to {path}: {exc.strerror or exc}") from exc
        return n

    def import_jsonl(self, path: str | Path, progress: bool = False) -> dict[str, int]:
        """Import edits from JSONL in one transaction: all of them or none, even if the process
        is killed half-way. Every line is validated before anything is written, so a bad line
        leaves the store unchanged. Lines whose id already exists with the same content are
        skipped; the same id with other content is an EditConflictError. A record without an
        id gets one derived from its content, so retrying an import never stores it twice."""
        edits = []
        try:
            raw = Path(path).read_bytes()
        except OSError as exc:
            raise RecallIOError(f"cannot read the import file {path}: {exc.strerror or exc}") from exc
        for lineno, line in enumerate(raw.split(b"\n"), 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise ImportFormatError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
            except json.JSONDecodeError as exc:
                raise ImportFormatError(f"{where}: not valid JSON ({exc.msg})") from exc
            except (ValueError, RecursionError) as exc:  # a 5,000-digit number, nesting past the parser's depth
                raise ImportFormatError(f"{where}: not valid JSON ({type(exc).__name__}: {str(exc)[:100]})") from exc
            edit = validate_record(data, where, derive_id=True)
            try:
                self.check_special_tokens(edit)
            except InvalidEditError as exc:
                raise ImportFormatError(f"{where}: {exc}") from exc
            edits.append(edit)
        first: dict[str, Edit] = {}
        for edit in edits:
            seen = first.setdefault(edit.id, edit)
            if seen is not edit and seen.content() != edit.content():
                raise ImportFormatError(f"{path}: id {edit.id!r} appears more than once with different content")
        fresh, skipped = [], len(edits) - len(first)  # a record repeated word for word counts once
        for edit in first.values():
            try:
                old = self.memory.store.get(edit.id)
            except KeyError:
                fresh.append(edit)
                continue
            if old.content() != edit.content():
                raise EditConflictError(f"{path}: id {edit.id!r} exists with different content")
            skipped += 1
        if fresh:
            self.memory.add_many(sorted(fresh, key=lambda e: e.created_at), progress=progress)
        return {"imported": len(fresh), "skipped": skipped}

    # -- queries --------------------------------------------------------------
    def _rewrite_input(self, prompt: str) -> tuple[str, list[str]]:
        """The prompt after the input regexes, and the ids of those that changed it. A rewrite
        that would leave nothing to condition on (empty or whitespace) is not applied."""
        applied = []
        for edit, compiled in self.memory.regex_edits("input"):
            new, hit = regex_patch.apply(compiled, edit.payload["replacement"], prompt)
            if hit and new.strip():
                prompt = new
                applied.append(edit.id)
        return prompt, applied

    def _plans(
        self, prompts: list[str], scopes: list[str] | None = None, chat: list[bool] | None = None, dense: bool = False
    ) -> tuple[list[RowPlan], list[list], list[list[str]], list]:
        """Per row: the plan, the retrieved candidates, the input regexes applied, and the
        continuous-prompt edit whose prefix the row got (or None). ``scopes``: per row, the text retrieval and
        the gate judge when it is not the prompt itself (a chat turn inside a rendered template);
        ``chat``: per row, whether the prompt is a rendered conversation awaiting its reply;
        ``dense``: retrieve by key similarity even where no verdict needs it (explain shows it)."""
        rewritten = [self._rewrite_input(p) for p in prompts]
        queries = [q for q, _ in rewritten]
        judged = queries if scopes is None else [self._rewrite_input(s)[0] for s in scopes]
        knowledge_q = self.memory.query_knowledge(judged)
        cands = self.memory.retrieve(judged, self.top_k, knowledge_q, dense=dense)
        plans, prompt_edits = [], []
        for i, (q, row) in enumerate(zip(queries, cands)):
            fired = [c.edit for c in row if c.fired][: self.max_fired]
            plan = self.injector.plan(q, fired, chat=bool(chat and chat[i]))
            # the best-scored fired prompt edit gives the row its prefix (one prefix per row:
            # a prompt edit fires in place of a fact, and conflicts keep one per subject)
            prompt_edit = next((e for e in fired if e.kind == "prompt" and e.num in self.memory.prompts.entries), None)
            if prompt_edit is not None:
                prefix = self.memory.prompts.prefix(prompt_edit.num).to(self.model.device, self.model.dtype)
                self.injector.attach_prefix(plan, prompt_edit, prefix)
            plans.append(plan)
            prompt_edits.append(prompt_edit)
        return plans, cands, [a for _, a in rewritten], prompt_edits

    def _run_partitioned(self, fn, plans: list[RowPlan], prompts: list[str], *extra, **options) -> list:
        """Rows whose model input the memory leaves as it is run as one batch: rows where
        nothing fired, and rows whose fired facts only bias decoding (memory-conditioned
        decoding changes a row's log-probabilities after the shared forward pass). That batch
        has the shapes the same rows have with ``use_memory=False``, so a row the memory does
        not touch gets exactly the result the same batch gets without memory. Rows whose input
        changed (a context note, a patch sentence, a continuous prompt) run as a second group.
        The codebook hook (when the store has codebook edits) is installed for both groups: it
        rewrites only the rows whose key hits an entry, and records which."""
        plain = [i for i, (pl, p) in enumerate(zip(plans, prompts)) if pl.prefix is None and pl.prompt == p]
        taken = set(plain)
        other = [i for i in range(len(plans)) if i not in taken]
        groups = [plain, other] if plain and other else [list(range(len(plans)))]
        out: list = [None] * len(plans)
        with self.memory.codebook_hook() as hook:
            for group in groups:
                if group:
                    args = [[x[i] for i in group] if isinstance(x, list) else x for x in extra]
                    rows = fn(self.model, self.tokenizer, [plans[i] for i in group], *args, hook=hook, **options)
                    for i, v in zip(group, rows):
                        out[i] = v
        return out

    def _codebook_ids(self, plan: RowPlan) -> list[str]:
        """The id of the codebook entry's edit that rewrote a row, if one did (a fired prompt
        edit is among the row's fired candidates)."""
        num = self.memory.codebook.entry_for(plan.codebook_hit)
        edit = self.memory.store.get_by_num(num) if num is not None else None
        return [edit.id] if edit is not None else []

    def check_fit(self, texts: list[str], reserve: list[int], what: str = "a prompt") -> list[int]:
        """Refuse, before any work, a row whose tokens plus ``reserve`` (tokens to generate, or
        the continuation's) plus :data:`INJECTION_RESERVE` exceed the model's context. Rows are
        limited in characters first (``check_queries``), so tokenizing them is cheap. Returns
        each row's token count (a server packs its batches by them)."""
        counts = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        limit = context_length(self.model)
        room = limit - INJECTION_RESERVE if limit is not None else None
        for n, extra in zip(counts, reserve):
            if room is not None and n + extra > room:
                raise InvalidQueryError(
                    f"{what} has {n} tokens; with {extra} more to score or generate it does not fit "
                    f"the model's context of {limit} tokens ({INJECTION_RESERVE} kept for injected edits)"
                )
        return counts

    def score(self, prompts: list[str] | str, continuations: list[str] | str, use_memory: bool = True) -> list[float]:
        """Mean log-probability per continuation token (a space joins the two when neither side
        has one). Goes through the same retrieve/gate/inject path as ``generate``."""
        rows = self.score_tokens(prompts, continuations, use_memory)
        return [sum(t.logprob for t in row) / len(row) for row in rows]

    def score_tokens(
        self, prompts: list[str] | str, continuations: list[str] | str, use_memory: bool = True
    ) -> list[list[TokenScore]]:
        """Per-token teacher-forced scores (log-prob, and whether the token was the argmax) of
        each continuation, through the same path as ``score``. Token accuracy metrics use it."""
        prompts = check_queries(prompts)
        continuations = check_queries(continuations, "continuations")
        if len(prompts) != len(continuations):
            raise InvalidQueryError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        self.check_fit(prompts, [len(ids) for ids in self.tokenizer(continuations)["input_ids"]])
        self.follow_head()
        if not use_memory:
            return score_tokens_rows(self.model, self.tokenizer, [RowPlan(p) for p in prompts], continuations)
        plans, _, _, _ = self._plans(prompts)
        return self._run_partitioned(score_tokens_rows, plans, prompts, continuations)

    def generate(
        self,
        prompts: list[str] | str,
        max_new_tokens: int = 20,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        use_memory: bool = True,
    ) -> list[str]:
        """Continue each prompt (greedy by default). Returns the new text of each row."""
        rows = self.generate_with_edits(
            prompts,
            max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            use_memory=use_memory,
        )
        return [text for text, _ in rows]

    def generate_with_edits(
        self,
        prompts: list[str] | str,
        max_new_tokens: int = 20,
        *,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        use_memory: bool = True,
        scopes: list[str] | None = None,
        chat: list[bool] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[tuple[str, list[str]]]:
        """``generate`` that also returns, per row, the ids of the edits applied to that row:
        input regexes that matched, facts and patches that fired, output regexes that changed
        the text. One retrieval serves both (a second ``explain`` could see a newer store), so
        a server can report exactly the edits a request received. ``scopes``: per row, the text
        that decides which edits are in scope, when it is not the prompt (see :meth:`chat`);
        ``chat``: per row, whether the prompt is a rendered conversation whose reply is being
        generated (answer-slot decoding under ``injection="auto"``; default: none is);
        ``should_stop``: asked before each decoding step, True ends decoding (rows keep the text
        they have; a server passes it so that abandoned or expired requests stop early)."""
        prompts = check_queries(prompts)
        if scopes is not None and len(check_queries(scopes, "scopes")) != len(prompts):
            raise InvalidQueryError(f"{len(prompts)} prompts but {len(scopes)} scopes")
        if chat is not None and len(chat) != len(prompts):
            raise InvalidQueryError(f"{len(prompts)} prompts but {len(chat)} chat flags")
        _check_max_new_tokens(max_new_tokens)
        sampling = check_sampling(do_sample, temperature, top_p, top_k, seed)
        self.check_fit(prompts, [max_new_tokens] * len(prompts))
        self.follow_head()
        if not use_memory:
            bare = generate_rows(self.model, self.tokenizer, [RowPlan(p) for p in prompts], max_new_tokens, sampling,
                                 should_stop=should_stop)
            return [(text, []) for text in bare]
        plans, cands, regex_ids, _ = self._plans(prompts, scopes, chat)
        texts = self._run_partitioned(generate_rows, plans, prompts, max_new_tokens, sampling, should_stop=should_stop)
        outputs = self.memory.regex_edits("output")
        rows = []
        for text, row_cands, applied, plan in zip(texts, cands, regex_ids, plans):
            ids = list(applied) + [c.edit.id for c in row_cands if c.fired][: self.max_fired]
            ids += self._codebook_ids(plan)
            for edit, compiled in outputs:
                text, hit = regex_patch.apply(compiled, edit.payload["replacement"], text)
                if hit:
                    ids.append(edit.id)
            rows.append((text, ids))
        return rows

    def render_chat(self, messages: list[dict[str, str]], max_new_tokens: int = 0) -> tuple[str, str]:
        """Validate a conversation and return (the prompt rendered with the model's chat template,
        ready for the reply; the text that decides scope: see :func:`recall.core.chat.scope_query`).
        The rendered prompt plus ``max_new_tokens`` must fit the model's context."""
        messages = check_messages(messages)
        if not getattr(self.tokenizer, "chat_template", None):
            raise InvalidQueryError("this model has no chat template; use generate() with a plain prompt")
        try:
            prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja raises TemplateError for roles or orders a template refuses
            raise InvalidQueryError(f"the model's chat template refused this conversation: {exc}") from exc
        self.check_fit([prompt], [max_new_tokens], "the conversation")
        return prompt, scope_query(messages, self.memory.names_in)

    def chat(
        self,
        messages: list[dict[str, str]],
        max_new_tokens: int = 64,
        *,
        use_memory: bool = True,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
    ) -> str:
        """The reply to a conversation (a list of ``{"role", "content"}`` messages ending with a
        user turn), rendered with the model's chat template; greedy by default. Retrieval and
        the gate judge the current user turn (with the previous one when it refers back with a
        pronoun), never the system prompt or template tokens. ``use_memory=False``: unedited."""
        prompt, scope = self.render_chat(messages, _check_max_new_tokens(max_new_tokens))
        ((text, _),) = self.generate_with_edits(
            [prompt],
            max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            use_memory=use_memory,
            scopes=[scope],
            chat=[True],
        )
        return text

    def explain(self, prompt: str) -> dict[str, Any]:
        """Which edits were retrieved for ``prompt``, their scores, and which fired."""
        (prompt,) = check_queries([prompt], "prompt")
        self.follow_head()
        plans, cands, regex_ids, prompt_edits = self._plans([prompt], dense=True)
        rows = []
        for c in cands[0]:
            rows.append(
                {
                    "id": c.edit.id,
                    "kind": c.edit.kind,
                    "subject": c.edit.subject,
                    "key": c.edit.keys[0] if c.edit.keys else None,
                    "target": c.edit.payload.get("target"),
                    "retrieval_score": round(c.features.cos_key, 4),
                    "gate_score": round(c.gate_score, 4),
                    "fired": c.fired,
                    "shadowed_by": c.shadowed_by,
                    "features": {
                        k: round(float(v), 4)
                        for k, v in vars(c.features).items()
                        if k not in ("rel_product", "relation_view") and v is not None
                    },
                    "relation_view": c.features.relation_view,
                    "supersedes": self.memory.store.superseded_by(c.edit.id),
                }
            )
        return {
            "query": prompt,
            "gate": self.memory.gate.kind,
            "injection": self.injector.mode,
            "input_regexes": regex_ids[0],
            "candidates": rows,
            "fired": [r["id"] for r in rows if r["fired"]][: self.max_fired],
            "model_prompt": plans[0].prompt,
            "prompt_edit": None if prompt_edits[0] is None else prompt_edits[0].id,
            "codebook": self.memory.codebook_explain(self.model, self.tokenizer, plans[0].prompt),
        }

    # -- consolidation --------------------------------------------------------
    def own_model(self) -> None:
        """Make ``self.model`` private to this runtime (a copy, when it came shared through
        :meth:`from_loaded`) before its weights change."""
        if not self._owns_model:
            self.base_fingerprint()  # of the shared, unmodified weights
            self.model = copy.deepcopy(self.model)
            self.served.model = self.model
            if self.memory.knowledge is not None:  # prompt tuning and codebooks work on the served model
                self.memory.knowledge.use_model(self.model)
            self._owns_model = True

    def base_fingerprint(self) -> str:
        """Identity of the base model (config, embeddings, final norm: tensors no editor changes)."""
        if self._base_fingerprint is None:
            self._base_fingerprint = model_fingerprint(self.model, self.spec)
        return self._base_fingerprint

    def _check_fingerprint(self, ckpt_id: str) -> None:
        expected = self.served.dir.manifest(ckpt_id).get("base_fingerprint")
        if expected and expected != self.base_fingerprint():
            raise CheckpointError(
                f"checkpoint {ckpt_id} was made for another base model (fingerprint {expected}, "
                f"loaded model {self.base_fingerprint()})"
            )

    def follow_head(self) -> str | None:
        """Serve the store's head checkpoint if another process (a consolidation job, a
        rollback) moved it since this runtime loaded its weights; returns the checkpoint
        served (None: the base model). One LMDB read when nothing moved. Every query entry
        point calls it first, so a running server switches weights between calls, never
        inside one. A head that cannot be served (a checkpoint made for another base model,
        a corrupt file) leaves the current weights in place; :attr:`head_error` says why, and
        the edits the head folded are still answered from their memory copies."""
        if self.memory.store.env is None:  # closed: the bare model still answers use_memory=False
            return self.served.head
        head = self.memory.store.get_meta("checkpoint_head")
        if head != self.served.head and head != self._unservable_head:
            try:
                self._serve_checkpoint(head)
                self.head_error = None
            except (CheckpointError, StoreCorruptError) as exc:
                self._unservable_head, self.head_error = head, str(exc)
                log.warning("cannot serve checkpoint %s: %s", head, exc)
        return self.served.head

    def _serve_checkpoint(self, ckpt_id: str | None, tensors: dict | None = None) -> None:
        if ckpt_id is not None:
            self._check_fingerprint(ckpt_id)
            tensors = self.served.dir.weights(ckpt_id) if tensors is None else tensors
        self.own_model()
        self.served.load(ckpt_id, tensors)

    def consolidate(
        self,
        method: str = DEFAULT_EDITOR,
        batch_size: int = 100,
        limit: int | None = None,
        *,
        hparams: str | Path | None = None,
        params=None,
        progress: bool = True,
    ):
        """Fold active fact edits into the weights (``rome``, ``memit`` or ``alphaedit``), verify
        each with retrieval off, and checkpoint; see :mod:`recall.consolidate`. ``hparams``: a
        hyper-parameter JSON (default: the model family's file); ``params``: acceptance bounds
        (:class:`recall.methods.consolidation.ConsolidationParams`). Returns a
        :class:`recall.consolidate.ConsolidationReport`."""

        if self.memory.store.readonly:
            raise StoreLockedError("cannot consolidate a store opened read-only")
        with self.memory.exclusive():
            return run_job(self, method, batch_size, limit, hparams, params, progress)

    def checkpoints(self) -> list[dict[str, Any]]:
        """Accepted checkpoints, oldest first: id, parent, method, edits, metrics, and which is served."""
        head = self.memory.store.get_meta("checkpoint_head")
        out = []
        for ckpt_id in self.memory.store.get_meta("checkpoints", []):
            m = self.served.dir.manifest(ckpt_id)
            out.append(
                {
                    "id": ckpt_id,
                    "parent": m.get("parent"),
                    "created_at": m.get("created_at"),
                    "method": m.get("method"),
                    "edits": len(m.get("edit_ids", [])),
                    "metrics": m.get("metrics", {}),
                    "head": ckpt_id == head,
                }
            )
        return out

    def rollback(self, checkpoint_id: str | None, *, retire: list[str] | None = None) -> dict[str, Any]:
        """Serve ``checkpoint_id`` (None: the base model) with byte-identical weights. In the same
        transaction that moves the head, edits consolidated by checkpoints outside its lineage
        become active again (injected from memory, so no edit is lost), and active edits that
        its lineage holds in the weights become consolidated again (rolling forward).
        ``retire``: edit ids retired in that transaction too (:meth:`remove_edit`). Holds the
        store's weight lock; the checkpoint's base-model fingerprint is checked before anything
        moves."""
        store = self.memory.store
        retire = list(retire or [])
        if store.readonly:
            raise StoreLockedError("cannot roll back a store opened read-only")
        known = store.get_meta("checkpoints", [])
        if checkpoint_id is not None and checkpoint_id not in known:
            raise CheckpointError(f"unknown checkpoint {checkpoint_id!r}; known: {known}")
        with self.served.dir.job_lock(), self.memory.exclusive():
            if checkpoint_id is not None:
                self._check_fingerprint(checkpoint_id)
            tensors = self.served.dir.weights(checkpoint_id) if checkpoint_id else None
            keep = self.served.dir.lineage(checkpoint_id)
            owner = {e: c for c in reversed(keep) for e in self.served.dir.manifest(c).get("edit_ids", [])}
            revive = [e.id for e in store.iter_edits("consolidated") if e.consolidated_in not in keep]
            fold = {e.id: owner[e.id] for e in store.iter_edits("active") if e.id in owner}
            updates = {**{i: "active" for i in revive}, **{i: "consolidated" for i in fold}}
            updates.update({i: "retired" for i in retire})
            store.commit_statuses(updates, consolidated_in=fold, meta={"checkpoint_head": checkpoint_id})
            self._serve_checkpoint(checkpoint_id, tensors)
            self.memory.sync()
        revived = [i for i in revive if i not in retire]
        return {"head": checkpoint_id, "reactivated": revived, "consolidated": sorted(fold), "retired": retire}

    # -- lifecycle ------------------------------------------------------------
    def close(self) -> None:
        self.memory.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Runtime(store={str(self.memory.store.path)!r}, model={self.spec.model_type}, "
            f"gate={self.memory.gate.kind}, injection={self.injector.mode})"
        )
