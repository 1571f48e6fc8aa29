"""``recall bench chat``: edits asked the way people ask a chat model.

Per stream length T and editor: reset, write T edits one after another (lifelong protocol),
then ask every edited fact through the model's chat template, with real greedy generation,
and judge the replies:

- ``question``: the edit's own question as one user turn; ``paraphrase``: each paraphrase;
  ``second_turn``: the question after an unrelated exchange; ``follow_up`` (hand-written set):
  a pronoun follow-up ("What was her native language?") after a turn naming the subject.
  Success: the reply contains the new answer as whole words, ignoring case and punctuation
  (:func:`recall.evaluation.metrics.contains_answer`).
- ``unrelated``, ``same_subject`` (same subject, other relation) and ``same_relation`` (same
  relation, other subject): the reply must be byte-identical to the unedited model's.
- ``fire_<group>``: the gate alone (does the case's own edit fire on the conversation's scope
  text; keep groups: does it stay silent), cheap enough for every case at large T;
  ``replies_too=False`` (``--no-replies``) measures only this.
- ``paraphrase_<form>`` and ``fire_paraphrase_<form>`` (hand-written set): the paraphrase rates
  per form (question, instruction, chat, cloze), since each form has to fire on its own.
- ``both_answers``: of the ask replies that state the new answer, the share that also state
  the old one (the record's true answer, where it has one that differs): a reply that
  contradicts itself ("born in the city of New York, specifically in the borough Bangalore").
- ``fluency_ppl``: the unedited model's perplexity of the edited replies to the edit questions
  (geometric mean over replies; the unedited model's own replies give the reference
  ``fluency_ppl_unedited``).

Data: a zsRE/CounterFact/KnowEdit file (questions from its prompts, paraphrases and locality
prompts) or the hand-written ``bench/data/conversations_dev.jsonl`` (detected by its schema).
Everything goes through ``Runtime.render_chat`` and ``Runtime.generate_with_edits`` with the
chat turn as scope, the path ``Runtime.chat`` and the server's ``/v1/chat/completions`` take.
"""

from __future__ import annotations

import json
import math
import random
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from recall.bench.editors import EDITORS, Editor, make_editor
from recall.core.datasets import DatasetFormatError, EditCase, load_cases
from recall.core.edits import ANSWER_KINDS
from recall.core.models import load_model
from recall.core.reporting import machine_info, md_table, pick_threads, pyplot, torch_threads
from recall.core.requests import EditRequest
from recall.core.text import contains_phrase, normalize
from recall.evaluation.metrics import contains_answer, mean
from recall.index import TextEncoder
from recall.runtime import Runtime

Conversation = list[dict[str, str]]
ASK_GROUPS = ("question", "paraphrase", "second_turn", "follow_up")
KEEP_GROUPS = ("unrelated", "same_subject", "same_relation")
FORMS = ("question", "instruction", "chat", "cloze")  # the hand-written set's paraphrase forms
# the unrelated exchange a second-turn question follows (as in ../shared/tools/chat-check.py)
ASIDE = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
BATCH = 16


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


@dataclass
class ChatCase:
    """One edit and the conversations that judge it."""

    case_id: str
    prompt: str
    target: str
    subject: str | None
    asks: list[tuple[str, Conversation]] = field(default_factory=list)  # (group, conversation): reply has target
    keeps: list[tuple[str, Conversation]] = field(default_factory=list)  # (group, conversation): reply unchanged
    aliases: tuple[str, ...] = ()  # other names of the subject, given with the edit
    # hand-written set: the form of each paraphrase ask, in order ("question", "instruction",
    # "chat", "cloze"); each form's rate is reported beside the paraphrase rate
    paraphrase_forms: tuple[str, ...] = ()
    true_answer: str | None = None  # the answer before the edit, where the data has it

    def ask_forms(self) -> list[str | None]:
        """Per ask, in order: the paraphrase's form, or None (other groups, or no form known)."""
        forms = iter(self.paraphrase_forms)
        return [next(forms, None) if group == "paraphrase" else None for group, _ in self.asks]


def _as_question(prompt: str) -> str:
    """zsRE locality prompts are NQ questions without their question mark ("nq question: who ...")."""
    text = prompt.split(":", 1)[1] if prompt.startswith("nq question:") else prompt
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith("?") else "?")


def _keep_group(prompt: str, subject: str | None) -> str:
    """A locality prompt that names the edit's subject asks it another question (same_subject);
    any other is unrelated."""
    return "same_subject" if subject and contains_phrase(normalize(prompt), normalize(subject)) else "unrelated"


def _from_edit_cases(path: Path, limit: int | None) -> list[ChatCase]:
    out = []
    for case in load_cases(path, None, limit=limit, skip_invalid=True):
        if len(case.edits) != 1:
            continue
        req = case.edits[0]
        asks = [("question", [user(req.prompt)]), ("second_turn", [*ASIDE, user(req.prompt)])]
        asks += [("paraphrase", [user(p)]) for p in case.rephrase[:1]]
        # KnowEdit's locality prompts ask about the edit's own subject (relation specificity)
        keeps = [(_keep_group(p, req.subject), [user(_as_question(p))]) for p, _ in case.locality[:1]]
        out.append(ChatCase(case.case_id, req.prompt, req.target, req.subject, asks, keeps,
                            true_answer=req.target_true))
    return out


class _Line:
    """Field access on one line of a hand-written conversation file that raises
    ``DatasetFormatError`` naming the file, the line and the field."""

    def __init__(self, path: Path, number: int, text: str) -> None:
        self.where = f"{path}: line {number}"
        try:
            self.rec = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"{self.where}: not JSON ({exc.msg})") from None
        if not isinstance(self.rec, dict):
            raise DatasetFormatError(f"{self.where}: expected a JSON object")

    def text(self, obj: Any, key: str, field: str, optional: bool = False) -> str | None:
        value = obj.get(key) if isinstance(obj, dict) else None
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value.strip():
            raise DatasetFormatError(f"{self.where}: {field!r} must be a non-empty string")
        return value

    def texts(self, key: str) -> list[str]:
        """The ``text`` of each entry of the list ``key`` ({"text": ...} objects)."""
        items = self.rec.get(key)
        if not isinstance(items, list):
            raise DatasetFormatError(f"{self.where}: {key!r} must be a list")
        return [self.text(item, "text", f"{key}[{i}].text") for i, item in enumerate(items)]

    def obj(self, key: str) -> dict:
        value = self.rec.get(key)
        if not isinstance(value, dict):
            raise DatasetFormatError(f"{self.where}: {key!r} must be an object")
        return value


def _from_dev_set(path: Path, limit: int | None, use_aliases: bool = True) -> list[ChatCase]:
    out = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        rec = _Line(path, number, line)
        r, edit = rec.rec, rec.obj("edit")
        prompt, target = rec.text(edit, "prompt", "edit.prompt"), rec.text(edit, "target", "edit.target")
        subject, true_answer = rec.text(r, "subject", "subject"), rec.text(r, "true_answer", "true_answer", True)
        paraphrases = rec.texts("paraphrases")
        forms = tuple(str(p.get("form", "")) for p in r["paraphrases"])
        f = rec.obj("follow_up")
        setup, reply, question = (rec.text(f, k, f"follow_up.{k}") for k in ("setup", "reply", "question"))
        same_subject, same_relation = rec.texts("same_subject_other_relation"), rec.texts("same_relation_other_subject")
        aliases = r.get("aliases") or []
        if not isinstance(aliases, list) or not all(isinstance(a, str) and a.strip() for a in aliases):
            raise DatasetFormatError(f"{rec.where}: 'aliases' must be a list of non-empty strings")
        case_id = r.get("id", number)
        if not isinstance(case_id, (str, int)):
            raise DatasetFormatError(f"{rec.where}: 'id' must be a string or a number")
        asks = [("question", [user(prompt)]), ("second_turn", [*ASIDE, user(prompt)])]
        asks += [("paraphrase", [user(p)]) for p in paraphrases]
        asks.append(("follow_up", [user(setup), {"role": "assistant", "content": reply}, user(question)]))
        keeps = [("same_subject", [user(q)]) for q in same_subject]
        keeps += [("same_relation", [user(q)]) for q in same_relation]
        out.append(ChatCase(str(case_id), prompt, target, subject, asks, keeps,
                            tuple(aliases) if use_aliases else (), forms, true_answer))
        if limit is not None and len(out) >= limit:
            break
    return out


def load_chat_cases(
    path: str | Path | list[str | Path], limit: int | None = None, use_aliases: bool = True
) -> list[ChatCase]:
    """Chat cases from the hand-written dev set (JSON lines with ``follow_up``; ``use_aliases``:
    edits carry the record's subject aliases, as a user who knows them would give) or any edit data set.

    Several paths are read in order and concatenated (case ids prefixed with the file's stem);
    a case whose edit prompt an earlier case already has is dropped (zsRE's eval file and
    KnowEdit's ZsRE test share records)."""
    if isinstance(path, list):
        cases: list[ChatCase] = []
        seen: set[str] = set()
        for p in path:
            for case in load_chat_cases(p, None, use_aliases):
                case.case_id = f"{Path(p).stem}:{case.case_id}"  # ids restart in every file
                if case.prompt not in seen:
                    seen.add(case.prompt)
                    cases.append(case)
        return cases[:limit] if limit is not None else cases
    path = Path(path)
    with path.open(encoding="utf-8") as fh:
        first = fh.readline()
    try:
        hand_written = "follow_up" in json.loads(first)
    except (json.JSONDecodeError, TypeError):
        hand_written = False
    return _from_dev_set(path, limit, use_aliases) if hand_written else _from_edit_cases(path, limit)


def replies(rt: Runtime, convs: list[Conversation], max_new_tokens: int, use_memory: bool = True) -> list[str]:
    """Greedy replies through the chat path (as ``rt.chat`` gives them), batched by rendered length."""
    rendered = [rt.render_chat(c, max_new_tokens) for c in convs]
    order = sorted(range(len(convs)), key=lambda i: len(rendered[i][0]))
    out: list[str] = [""] * len(convs)
    for start in range(0, len(order), BATCH):
        idx = order[start : start + BATCH]
        rows = rt.generate_with_edits(
            [rendered[i][0] for i in idx],
            max_new_tokens,
            use_memory=use_memory,
            scopes=[rendered[i][1] for i in idx],
            chat=[True] * len(idx),
        )
        for i, (text, _) in zip(idx, rows):
            out[i] = text
    return out


def reply_perplexity(editor: Editor, convs: list[Conversation], texts: list[str]) -> float:
    """Geometric-mean perplexity of ``texts`` as replies to ``convs`` under the unedited model."""
    rt = editor.runtime()
    pairs = [(rt.render_chat(c)[0], t) for c, t in zip(convs, texts) if t.strip()]
    if not pairs:
        return float("nan")
    logps = []
    for start in range(0, len(pairs), BATCH):
        chunk = pairs[start : start + BATCH]
        logps += rt.score([p for p, _ in chunk], [t for _, t in chunk], use_memory=False)
    return math.exp(-sum(logps) / len(logps))


@dataclass
class GateVerdict:
    """The gate's decision on one conversation of a case, about the case's own edit."""

    case: ChatCase
    group: str
    scope: str  # the text the gate judged (``Runtime.render_chat``)
    ask: bool  # True: the edit should fire (ask groups); False: it should stay silent (keep groups)
    explained: dict[str, Any]  # ``Runtime.explain(scope)``
    own: str | None  # the case's edit id
    form: str | None = None  # a paraphrase's form (ChatCase.paraphrase_forms)

    @property
    def fired(self) -> bool:
        return self.own in self.explained["fired"]

    @property
    def ok(self) -> bool:
        return self.fired == self.ask


def gate_verdicts(rt: Runtime, cases: list[ChatCase]) -> Iterator[GateVerdict]:
    """Every conversation of ``cases`` judged on its scope text (the current turn, pronouns
    resolved against the previous one) through ``Runtime.explain``, as the chat path decides."""
    ids = {e.payload.get("prompt"): e.id for e in rt.edits() if e.kind in ANSWER_KINDS}
    for case in cases:
        own = ids.get(case.prompt)
        for ask, groups, forms in ((True, case.asks, case.ask_forms()), (False, case.keeps, [None] * len(case.keeps))):
            for (group, conv), form in zip(groups, forms):
                scope = rt.render_chat(conv)[1]
                yield GateVerdict(case, group, scope, ask, rt.explain(scope), own, form)


def firing(editor: Editor, cases: list[ChatCase]) -> dict[str, float]:
    """The gate alone, per group (:func:`gate_verdicts`): ask groups, the share of
    conversations where the case's own edit fires; keep groups, the share where it does not."""
    rates: dict[str, list[bool]] = {}
    for verdict in gate_verdicts(editor.runtime(), cases):
        rates.setdefault(f"fire_{verdict.group}", []).append(verdict.ok)
        if verdict.form:
            rates.setdefault(f"fire_{verdict.group}_{verdict.form}", []).append(verdict.ok)
    return {k: mean(v) for k, v in rates.items()}


def _old_answer(case: ChatCase) -> str | None:
    """The case's true answer when it is known and neither answer's words hold the other's."""
    old, new = normalize(case.true_answer or ""), normalize(case.target)
    if not old or contains_phrase(old, new) or contains_phrase(new, old):
        return None
    return case.true_answer


def evaluate(editor: Editor, cases: list[ChatCase], max_new_tokens: int, unedited: dict[str, str]) -> dict[str, float]:
    """The metrics of one editor after its edits; ``unedited`` caches bare replies by conversation."""
    asks = [(g, c, case.target) for case in cases for g, c in case.asks]
    olds = [_old_answer(case) for case in cases for _ in case.asks]
    forms = [form for case in cases for form in case.ask_forms()]
    keeps = [(g, c) for case in cases for g, c in case.keeps]
    key = lambda c: json.dumps(c, ensure_ascii=False)  # noqa: E731
    missing = [c for c in [c for _, c, _ in asks] + [c for _, c in keeps] if key(c) not in unedited]
    rt = editor.runtime()
    for c, text in zip(missing, replies(rt, missing, max_new_tokens, use_memory=False)):
        unedited[key(c)] = text
    got = replies(rt, [c for _, c, _ in asks], max_new_tokens, editor.use_memory)
    kept = replies(rt, [c for _, c in keeps], max_new_tokens, editor.use_memory)
    result: dict[str, float] = {}
    for group in ASK_GROUPS:
        hits = [contains_answer(t, target) for (g, _, target), t in zip(asks, got) if g == group]
        if hits:
            result[group] = mean(hits)
    for form in dict.fromkeys(f for f in forms if f):
        hits = [contains_answer(t, target) for (_, _, target), t, f in zip(asks, got, forms) if f == form]
        result[f"paraphrase_{form}"] = mean(hits)
    stated = [(t, old) for (_, _, target), t, old in zip(asks, got, olds) if old and contains_answer(t, target)]
    if stated:
        result["both_answers"] = mean([contains_answer(t, old) for t, old in stated])
    for group in KEEP_GROUPS:
        same = [t == unedited[key(c)] for (g, c), t in zip(keeps, kept) if g == group]
        if same:
            result[group] = mean(same)
    questions = [(c, t) for (g, c, _), t in zip(asks, got) if g == "question"]
    result["fluency_ppl"] = reply_perplexity(editor, [c for c, _ in questions], [t for _, t in questions])
    result["fluency_ppl_unedited"] = reply_perplexity(
        editor, [c for c, _ in questions], [unedited[key(c)] for c, _ in questions]
    )
    return result


def run(
    data: str | Path,
    out: str | Path,
    *,
    editors: list[str] = ("unedited", "recall"),
    ts: list[int] = (1, 100),
    limit: int | None = None,
    seed: int | None = 0,
    max_new_tokens: int = 24,
    model: str | None = None,
    encoder_path: str | None = None,
    device: str = "cpu",
    threads: int | None = None,
    loaded: tuple | None = None,
    encoder: TextEncoder | None = None,
    progress: bool = True,
    replies_too: bool = True,
    use_aliases: bool = True,
    ask: int | None = None,
) -> dict[str, Any]:
    """Run the chat benchmark, write ``results.json``, ``summary.md`` and ``chat.png``, return the results.

    ``seed`` shuffles the cases; ``None`` keeps the file's order. zsRE's eval file lists the
    records of one subject next to each other, often asking one question with different new
    answers, so its first T records in file order test how edits about one subject coexist
    (as ``../shared/tools/chat-check.py`` does), while a shuffle spreads them out.

    ``data`` may be a list of files (concatenated, repeated prompts dropped). ``ask``: replies
    are generated for a sample of that many of the T edits in the store (seeded, the same for
    every editor); the gate's firing is still measured on all T. A large store is then judged
    at the cost of a small one's replies."""
    unknown = [e for e in editors if e not in EDITORS]
    if unknown:
        raise ValueError(f"unknown editor(s) {unknown}; known: {', '.join(EDITORS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cases = load_chat_cases(data, limit, use_aliases)
    if seed is not None:
        random.Random(seed).shuffle(cases)
    ts = sorted({int(t) for t in ts})
    if not cases or ts[-1] > len(cases):
        raise ValueError(f"T={ts[-1]} needs {ts[-1]} cases but {data} gives {len(cases)}")
    if loaded is None or encoder is None:
        loaded = load_model(model, device)
        encoder = TextEncoder(encoder_path, device=str(loaded[0].device))
    results: dict[str, Any] = {
        "config": {
            "data": [str(d) for d in data] if isinstance(data, list) else str(data),
            "cases": len(cases),
            "T": ts,
            "ask": ask,
            "aliases": use_aliases,
            "editors": list(editors),
            "seed": seed,
            "max_new_tokens": max_new_tokens,
            "machine": machine_info(),
        },
        "rows": [],
    }
    unedited: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="recall-bench-chat-") as workdir, torch_threads(pick_threads(threads)):
        for name in editors:
            editor = make_editor(name, loaded, encoder, workdir)
            try:
                for t in ts:
                    editor.reset()
                    t0 = time.perf_counter()
                    if name != "unedited":
                        editor.apply([_edit_case(c) for c in cases[:t]])
                    write_s = time.perf_counter() - t0
                    row = firing(editor, cases[:t]) if editor.use_memory else {}
                    if replies_too:
                        row.update(evaluate(editor, asked_cases(cases[:t], ask), max_new_tokens, unedited))
                    results["rows"].append({"editor": name, "T": t, "write_s": write_s, **row})
                    if progress:
                        tqdm.write(f"{name} T={t}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items()))
            finally:
                editor.close()
    (out / "results.json").write_text(json.dumps(results, indent=1), encoding="utf-8")
    (out / "summary.md").write_text(summary(results), encoding="utf-8")
    plot(results, out / "chat.png")
    return results


def asked_cases(cases: list[ChatCase], ask: int | None) -> list[ChatCase]:
    """The cases whose replies are judged: all, or a seeded sample of ``ask`` of them in their order."""
    if ask is None or ask >= len(cases):
        return cases
    keep = sorted(random.Random(len(cases)).sample(range(len(cases)), ask))
    return [cases[i] for i in keep]


def _edit_case(case: ChatCase) -> EditCase:
    """The bench editors' input type for one chat case (one fact edit)."""
    return EditCase(case.case_id, [EditRequest(case.prompt, case.subject, case.target, aliases=case.aliases)])


def summary(results: dict[str, Any]) -> str:
    groups = (*ASK_GROUPS, *KEEP_GROUPS)
    cols = [*(f"fire_{g}" for g in groups), *groups, "both_answers", "fluency_ppl", "fluency_ppl_unedited"]
    present = [c for c in cols if any(c in r for r in results["rows"])]
    # each paraphrase form's rate (hand-written set), after the groups, gate first, in FORMS order
    by_form = [k for k in dict.fromkeys(k for r in results["rows"] for k in r) if "paraphrase_" in k]
    form_rank = {f: i for i, f in enumerate(FORMS)}
    present += sorted(
        by_form, key=lambda k: (not k.startswith("fire_"), form_rank.get(k.rsplit("_", 1)[1], len(FORMS)), k)
    )
    rows = [[r["editor"], r["T"], *[r.get(c, "") for c in present]] for r in results["rows"]]
    cfg = results["config"]
    head = (
        f"Chat benchmark on {cfg['data']} ({cfg['cases']} cases, "
        f"{'in file order' if cfg['seed'] is None else 'seed ' + str(cfg['seed'])}, greedy, "
        f"{cfg['max_new_tokens']} new tokens). Ask groups: reply contains the new answer; keep groups: reply "
        "byte-identical to the unedited model's; both_answers: replies stating the new answer that state the old one "
        "too.\n\n"
    )
    return head + md_table(["editor", "T", *present], rows) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per group: metric vs T per editor; with a single T, grouped bars instead."""
    plt = pyplot()
    rows = results["rows"]
    keys = [*ASK_GROUPS, *KEEP_GROUPS]
    keys += [f"fire_{g}" for g in keys]
    groups = [g for g in keys if any(g in r for r in rows)]
    names = list(dict.fromkeys(r["editor"] for r in rows))
    if len({r["T"] for r in rows}) == 1:
        fig, ax = plt.subplots(figsize=(1.2 * len(groups) * max(1, len(names)) / 2 + 2, 3.6))
        width = 0.8 / len(names)
        for j, name in enumerate(names):
            row = next(r for r in rows if r["editor"] == name)
            xs = [i + j * width for i, g in enumerate(groups) if g in row]
            ax.bar(xs, [row[g] for g in groups if g in row], width, label=name)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], groups, rotation=30, ha="right", fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_title(f"T = {rows[0]['T']}: ask groups want 1 (fires / states the answer), keep groups want 1 (silent)")
        ax.legend(fontsize=7)
    else:
        fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 3.2), sharey=True, squeeze=False)
        for ax, group in zip(axes[0], groups):
            for name in names:
                pts = [(r["T"], r[group]) for r in rows if r["editor"] == name and group in r]
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
            ax.set_xscale("log")
            ax.set_title(group)
            ax.set_xlabel("T (edits in the store)")
            ax.set_ylim(-0.02, 1.02)
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
