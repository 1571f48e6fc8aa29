"""The consolidation job over a store: :meth:`Runtime.consolidate` and ``recall consolidate``.

1. Take the active fact edits, oldest first (at most ``limit``).
2. With the base weights in place, measure the probe set and compute what the method needs
   (second moments, AlphaEdit projectors): statistics always describe the base model.
3. Write the edits batch by batch into the served weights (the
   :class:`recall.methods.editor.ParameterEditor` named by ``method``); after each batch,
   probe: token agreement with the base model and the perplexity ratio on held-out generic
   text must stay within bounds. The batch that would break them is undone and the job stops
   there (its edits and the rest stay active).
4. Verify every written edit with retrieval off.
5. Accepted (at least one edit passed): write a checkpoint (changed tensors only), then in one
   LMDB transaction make it the head and mark the passing edits consolidated (they are no
   longer injected); failing and unwritten edits stay active in the memory. Otherwise put the
   previous weights back; nothing changes.

The whole job holds the store's weight lock (:meth:`CheckpointDir.job_lock`): a second job or a
rollback in any process is refused while it runs. The final transaction commits only if every
edit it folds is still active and the head is still the one the job started from; an edit
retired meanwhile (by a client of another process) makes the job put the weights back and
report that nothing was folded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from recall.checkpoints import new_checkpoint_id
from recall.core.edits import ANSWER_KINDS
from recall.core.errors import ConsolidationError
from recall.index.store import StaleStateError
from recall.methods.consolidation import ConsolidationParams, previous_answers, probe, verify
from recall.methods.editor import DEFAULT_EDITOR, EditRequest, ParameterEditor, editor_class, make_editor
from recall.methods.layer_stats import generic_texts
from recall.methods.weights import restore

if TYPE_CHECKING:
    from recall.runtime import Runtime


@dataclass
class ConsolidationReport:
    method: str
    accepted: bool
    checkpoint: str | None
    consolidated: list[str] = field(default_factory=list)
    still_active: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_job(
    rt: Runtime,
    method: str = DEFAULT_EDITOR,
    batch_size: int = 100,
    limit: int | None = None,
    hparams: str | None = None,
    params=None,
    progress: bool = True,
) -> ConsolidationReport:
    editor_class(method)  # UnknownEditorError (a ConsolidationError) before anything is touched
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConsolidationError(f"batch_size must be a positive int, got {batch_size!r}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConsolidationError(f"limit must be a positive int or None, got {limit!r}")
    if params is not None and not isinstance(params, ConsolidationParams):
        raise ConsolidationError(f"params must be a ConsolidationParams, got {type(params).__name__}")
    params = params or ConsolidationParams()
    started = time.time()
    edits = [e for e in rt.edits("active") if e.kind in ANSWER_KINDS]
    edits = edits[:limit] if limit else edits
    if not edits:
        return ConsolidationReport(method, False, rt.served.head, reason="no active fact or prompt edits")

    with rt.served.dir.job_lock():
        return _run_locked(rt, method, edits, batch_size, params, hparams, progress, started)


def _run_locked(
    rt: Runtime, method, edits, batch_size: int, params, hparams, progress: bool, started: float
) -> ConsolidationReport:
    rt.own_model()
    served, store = rt.served, rt.memory.store
    rt.memory.sync()  # another process may have moved the head or retired an edit before the lock
    edits = [e for e in edits if store.get(e.id).status == "active"]
    if not edits:
        return ConsolidationReport(method, False, served.head, reason="no active fact or prompt edits")
    if store.get_meta("checkpoint_head") != served.head:
        raise ConsolidationError(
            f"this process serves checkpoint {served.head}, the store's head is {store.get_meta('checkpoint_head')}: "
            "reopen the store (or roll back) before consolidating"
        )
    known = set(store.get_meta("checkpoints", []))
    served.dir.remove_unreferenced(known)
    try:
        editor = make_editor(method, rt.model, rt.tokenizer, rt.spec, hparams)
    except ValueError as exc:  # unreadable or invalid hyper-parameters
        raise ConsolidationError(str(exc)) from exc
    # the state a stateful editor carried out of the served checkpoint (same method only)
    if editor.stateful and served.head and served.dir.manifest(served.head).get("method") == editor.name:
        editor.load_state(served.dir.state(served.head))
    probe_texts = generic_texts("probe")[: params.probe_texts]
    touched = editor.parameter_names
    served.remember_base(touched)
    before = {
        n: p.detach().clone() for n, p in rt.model.named_parameters() if n in set(touched) | set(served.changed())
    }
    with served.base_weights():
        base_probe = probe(rt.model, rt.tokenizer, probe_texts, params.probe_tokens)
        editor.prepare()
    requests = [EditRequest.from_edit(e) for e in edits]
    try:
        applied, previous, new_probe, stop = _write_within_bounds(
            rt, editor, requests, batch_size, params, probe_texts, base_probe, progress
        )
        passed = verify(rt.model, rt.tokenizer, requests[:applied], previous)
    except BaseException:
        restore(rt.model, before)
        raise
    agreement = new_probe.agreement(base_probe)
    ratio = new_probe.ppl / base_probe.ppl
    ok_ids = [e.id for e, ok in zip(edits, passed) if ok]
    failed_ids = [e.id for e in edits if e.id not in set(ok_ids)]
    metrics = {
        "edits": len(edits),
        "written": applied,
        "batch_size": batch_size,
        "efficacy": len(ok_ids) / applied if applied else 0.0,
        "probe_agreement": round(agreement, 4),
        "probe_ppl_base": round(base_probe.ppl, 4),
        "probe_ppl_new": round(new_probe.ppl, 4),
        "probe_ppl_ratio": round(ratio, 4),
        "seconds": round(time.time() - started, 1),
    }
    metrics |= editor.state_metrics()
    if not ok_ids:
        restore(rt.model, before)
        reason = stop or "no edit passed verification"
        return ConsolidationReport(method, False, served.head, [], [e.id for e in edits], metrics, reason)

    ckpt_id = new_checkpoint_id()
    params_by_name = dict(rt.model.named_parameters())
    weights = {name: params_by_name[name].detach() for name in served.changed()}
    manifest = {
        "parent": served.head,
        "created_at": time.time(),
        "method": method,
        "hparams": editor.hparams.to_dict(),
        "edit_ids": ok_ids,
        "failed_ids": failed_ids,
        "metrics": metrics,
        "base_fingerprint": rt.base_fingerprint(),
    }
    carried = editor.state_tensors() or None
    served.dir.write(ckpt_id, weights, manifest, carried)
    try:
        store.commit_statuses(
            {i: "consolidated" for i in ok_ids},
            consolidated_in=ckpt_id,
            meta={"checkpoints": [*store.get_meta("checkpoints", []), ckpt_id], "checkpoint_head": ckpt_id},
            expect={i: "active" for i in ok_ids},  # retired while the job ran: do not fold it back
            expect_meta={"checkpoint_head": served.head},
        )
    except StaleStateError as exc:
        restore(rt.model, before)
        served.dir.remove_unreferenced(set(store.get_meta("checkpoints", [])))
        reason = f"the store changed while the job ran ({exc}); nothing was folded, run it again"
        return ConsolidationReport(method, False, served.head, [], [e.id for e in edits], metrics, reason)
    served.head = ckpt_id
    rt.memory.sync()
    return ConsolidationReport(method, True, ckpt_id, ok_ids, failed_ids, metrics, stop)


def _bounds_broken(params, base_probe, new_probe) -> str:
    agreement = new_probe.agreement(base_probe)
    ratio = new_probe.ppl / base_probe.ppl
    reasons = []
    if agreement < params.min_probe_agreement:
        reasons.append(f"probe agreement {agreement:.3f} < {params.min_probe_agreement}")
    if ratio > params.max_ppl_ratio:
        reasons.append(f"probe perplexity ratio {ratio:.3f} > {params.max_ppl_ratio}")
    return "; ".join(reasons)


def _write_within_bounds(
    rt: Runtime, editor: ParameterEditor, requests, batch_size: int, params, probe_texts, base_probe, progress: bool
):
    """Write batch after batch; after each, probe, and undo the batch (weights and the
    editor's carried state, e.g. AlphaEdit's accumulated keys) that would break the bounds,
    stopping there. Returns (edits written, the weights' answers before each written edit,
    the probe of the kept weights, why it stopped early or "")."""
    previous: list[str] = []
    current = None
    applied, stop = 0, ""
    bar = tqdm(total=len(requests), desc=f"consolidate ({editor.name})", unit="edit", disable=not progress)
    for start in range(0, len(requests), batch_size):
        batch = requests[start : start + batch_size]
        answers = previous_answers(rt.model, rt.tokenizer, batch)
        result = editor.apply(batch)
        trial = probe(rt.model, rt.tokenizer, probe_texts, params.probe_tokens)
        broken = _bounds_broken(params, base_probe, trial)
        if broken:
            editor.undo(result)
            stop = f"stopped before edit {start + 1} of {len(requests)}: {broken}"
            break
        previous += answers
        applied += len(batch)
        current = trial
        bar.update(len(batch))
    bar.close()
    if current is None and rt.served.head is None:  # nothing written, and the base weights serve
        current = base_probe
    elif current is None:  # nothing written: the weights are the checkpoint served before the job
        current = probe(rt.model, rt.tokenizer, probe_texts, params.probe_tokens)
    return applied, previous, current, stop
