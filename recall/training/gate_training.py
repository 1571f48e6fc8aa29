"""Train the learned gate and tune the thresholds of the other gates on the train splits,
then evaluate all three on the dev split. ``recall gate train`` runs this.

Data recipe (train, from ``../shared/data``):
- CounterFact train (``counterfact-train.json``, MEND schema): positives are the edit prompt
  and its rephrase; negatives are the neighborhood prompt (same relation, other subject) and
  a "distracting neighborhood" prompt (the edited fact stated, then the neighborhood prompt).
  Where the edit's template is a ParaRel template listed in ``rome_known_1000.json`` (which
  carries relation ids), we also add a same-subject prompt built from a template of another
  relation (negative, "distracting") and from another template of the same relation (positive).
- zsRE train (``zsre_mend_train-1k.json``): positives src and rephrase; negative the NQ question.

Dev evaluation: the first ``n_dev`` records of ``counterfact-edit.json`` built the same way,
plus the real distracting prompts of ``counterfact_distracting_neighbor.json``
(``unrelated_relation.question``: same subject, other relation; and its
``distracting_neighborhood_prompts``).
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from recall.core.edits import build_edit
from recall.core.text import normalize, relation_text
from recall.gate import FEATURES, Gate, GateParams, PairFeatures
from recall.index import TextEncoder
from recall.inject import fact_sentence
from recall.memory import pair_features, query_relation_text, scorer_margins
from recall.methods.recipe import load, statement
from recall.relation import RelationScorer


@dataclass
class Pair:
    edit_fields: dict
    query: str
    label: int
    group: str  # what kind of query this is, for the report


def _templates(data_dir: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    known = json.loads((data_dir / "counterfact" / "rome_known_1000.json").read_text())
    by_rel: dict[str, set[str]] = defaultdict(set)
    for r in known:
        by_rel[r["relation_id"]].add(r["template"])
    t2r = {t: rel for rel, ts in by_rel.items() for t in ts}
    return t2r, {rel: sorted(ts) for rel, ts in by_rel.items()}


def counterfact_pairs(records: list[dict], data_dir: Path, rng: random.Random) -> list[Pair]:
    t2r, by_rel = _templates(data_dir)
    rels = sorted(by_rel)
    pairs = []
    for r in records:
        fields = {"prompt": r["prompt"], "target": r["target_new"], "subject": r["subject"]}
        try:
            edit = build_edit("fact", **fields)
        except Exception:
            continue
        pairs += [Pair(fields, r["prompt"], 1, "prompt"), Pair(fields, r["rephrase_prompt"], 1, "rephrase"),
                  Pair(fields, r["locality_prompt"], 0, "neighborhood"),
                  Pair(fields, f"{fact_sentence(edit)} {r['locality_prompt']}", 0, "distracting_neighborhood")]
        rel = t2r.get(r["prompt"].replace(r["subject"], "{}", 1))
        if rel is not None:
            other = rng.choice([x for x in rels if x != rel])
            pairs.append(Pair(fields, rng.choice(by_rel[other]).format(r["subject"]), 0, "same_subject_other_relation"))
            same = [t for t in by_rel[rel] if t.format(r["subject"]) != r["prompt"]]
            if same:
                pairs.append(Pair(fields, rng.choice(same).format(r["subject"]), 1, "same_relation_other_template"))
    return pairs


def zsre_pairs(records: list[dict], rng: random.Random) -> list[Pair]:
    """Positives src and rephrase; negatives the NQ question and a question about the same
    subject built from another record's question (almost always another relation)."""
    usable = [r for r in records if r["subject"] in r["src"]]
    pairs = []
    for r in records:
        fields = {"prompt": r["src"], "target": r["alt"], "subject": r["subject"]}
        try:
            build_edit("fact", **fields)
        except Exception:
            continue
        pairs += [
            Pair(fields, r["src"], 1, "zsre_prompt"),
            Pair(fields, r["rephrase"], 1, "zsre_rephrase"),
            Pair(fields, r["loc"], 0, "zsre_nq"),
        ]
        other = rng.choice(usable)
        question = other["src"].replace(other["subject"], r["subject"], 1)
        if other["src"].replace(other["subject"], "{}", 1) != r["src"].replace(r["subject"], "{}", 1):
            pairs.append(Pair(fields, question, 0, "zsre_same_subject_other_question"))
    return pairs


def distracting_pairs(records: list[dict]) -> list[Pair]:
    pairs = []
    for r in records:
        rw = r["requested_rewrite"]
        prompt = rw["prompt"].format(rw["subject"])
        fields = {"prompt": prompt, "target": rw["target_new"]["str"], "subject": rw["subject"]}
        q = (r.get("unrelated_relation") or {}).get("question")
        if q:
            pairs.append(Pair(fields, q, 0, "real_same_subject_other_relation"))
        for p in r.get("distracting_neighborhood_prompts", [])[:2]:
            pairs.append(Pair(fields, p, 0, "real_distracting_neighborhood"))
        for p in r.get("paraphrase_prompts", [])[:2]:
            pairs.append(Pair(fields, p, 1, "rome_paraphrase"))
    return pairs


def conversation_gate_pairs(records: list[dict], rng: random.Random) -> list[Pair]:
    """Gate pairs from hand-written conversations (``recall/training/conversations_train.jsonl``;
    :func:`recall.training.relation_training.conversation_queries`): chat, question and
    instruction paraphrases and resolved follow-ups (+), same subject asked another relation and
    longer names that contain the subject's (-)."""
    from recall.training.relation_training import conversation_queries

    pairs = []
    for r in records:
        for side, query, label, group in conversation_queries(r, rng):
            fields = {"prompt": side, "target": r["edit"]["target"], "subject": r["subject"]}
            pairs.append(Pair(fields, query, label, group))
    return pairs


def prefixed_paraphrase_pairs(records: list[dict], rng: random.Random) -> list[Pair]:
    """Positives in the form of CounterFact's generation prompts (ROME's paraphrases): an
    unrelated sentence, then the edit's paraphrase. The sentence is another record's fact
    stated, so scope has to follow the question at the end, not any fact the text mentions
    (the mirror of the "distracting neighborhood" negatives)."""
    pairs = []
    for r in records:
        other = rng.choice(records)
        if other is r or not r.get("rephrase_prompt"):
            continue
        fields = {"prompt": r["prompt"], "target": r["target_new"], "subject": r["subject"]}
        sentence = f"{other['prompt']} {other['target_new']}."
        pairs.append(Pair(fields, f"{sentence} {r['rephrase_prompt']}", 1, "prefixed_rephrase"))
    return pairs


def sentinel_train_pairs(data_dir: Path, n_counterfact: int, rng: random.Random) -> list[Pair]:
    """What the knowledge sentinel learns scope from (train splits only): the gate's CounterFact
    and zsRE pairs (:func:`counterfact_pairs`, :func:`zsre_pairs`), paraphrases after an
    unrelated sentence (:func:`prefixed_paraphrase_pairs`) and the hand-written training
    conversations (:func:`conversation_gate_pairs`)."""
    from recall.training.relation_training import load_conversations

    cf = json.loads((data_dir / "counterfact/easyedit_mend_format/counterfact-train.json").read_text())
    zs = json.loads((data_dir / "zsre/zsre_mend_train-1k.json").read_text())
    sample = rng.sample(cf, min(n_counterfact, len(cf)))
    pairs = counterfact_pairs(sample, data_dir, rng)
    pairs += prefixed_paraphrase_pairs(sample, rng)
    pairs += zsre_pairs(zs, rng)
    pairs += conversation_gate_pairs(load_conversations(), rng)
    return pairs


def featurize(pairs: list[Pair], encoder, batch: int = 256, cache: dict | None = None) -> list[PairFeatures]:
    """Features exactly as the runtime computes them (same helpers, same encoder)."""
    edits = [build_edit("fact", **p.edit_fields) for p in pairs]
    texts, index = [], {}

    def slot(t: str) -> int:
        if t not in index:
            index[t] = len(texts)
            texts.append(t)
        return index[t]


    plan = []
    for p, e in zip(pairs, edits):
        norm_subj = normalize(e.subject)
        k = slot(e.payload["prompt"])
        rel = slot(relation_text(e.payload["prompt"], e.subject))
        q = slot(p.query)
        qr = slot(query_relation_text(p.query, norm_subj))
        plan.append((k, rel, q, qr))
    cache = {} if cache is None else cache
    todo = [t for t in texts if t not in cache]
    for i in tqdm(range(0, len(todo), batch), desc="encoding", unit="batch"):
        cache.update(zip(todo[i:i + batch], encoder.encode(todo[i:i + batch])))
    vecs = np.stack([cache[t] for t in texts])
    out = []
    for p, e, (k, rel, q, qr) in zip(pairs, edits, plan):
        out.append(pair_features(p.query, vecs[q], vecs[qr], e, vecs[[k, rel]]))
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> tuple[np.ndarray, float]:
    """Class-balanced L2 logistic regression by Newton's method."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    sw = np.where(y == 1, 0.5 / max(y.mean(), 1e-9), 0.5 / max(1 - y.mean(), 1e-9))
    for _ in range(iters):
        p = 1 / (1 + np.exp(-xb @ w))
        g = xb.T @ (sw * (p - y)) / len(y) + l2 * np.r_[w[:-1], 0]
        h = (xb * (sw * p * (1 - p))[:, None]).T @ xb / len(y) + l2 * np.diag(np.r_[np.ones(len(w) - 1), 0])
        step = np.linalg.solve(h, g)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], float(w[-1])


def _best_threshold(scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold maximizing balanced accuracy (mean of firing rate on positives and
    non-firing rate on negatives)."""
    best, best_t = -1.0, 0.5
    for t in np.unique(np.round(scores, 3)):
        fire = scores >= t
        bal = (fire[y == 1].mean() + (~fire[y == 0]).mean()) / 2
        if bal > best:
            best, best_t = bal, float(t)
    return best_t


def tune(features: list[PairFeatures], labels: np.ndarray, dim: int, l2: float = 1e-3) -> GateParams:
    """Fit the learned gate (``dim`` > 0 adds relation-product features) and pick thresholds."""
    x = np.stack([f.vector(dim) for f in features])
    w, b = fit_logistic(x, labels, l2=l2)
    cos = x[:, FEATURES.index("cos_key")]
    rel = np.where(x[:, FEATURES.index("subj_focus")] > 0, x[:, FEATURES.index("cos_rel")], -1.0)
    return GateParams(cosine_threshold=_best_threshold(cos, labels), subject_rel_threshold=_best_threshold(rel, labels),
                      learned_weights=[round(float(v), 6) for v in w], learned_bias=round(b, 6))


def evaluate(params: GateParams, pairs: list[Pair], features: list[PairFeatures]) -> dict[str, dict[str, float]]:
    """Firing rate per query group and gate (positives want 1.0, negatives 0.0)."""
    table: dict[str, dict[str, float]] = {}
    for kind in ("cosine", "subject", "learned"):
        gate = Gate(kind, params)
        table[kind] = _rates(pairs, np.array([gate.score(f)[1] for f in features]))
    return table


def _rates(pairs: list[Pair], fired: np.ndarray) -> dict[str, float]:
    groups = defaultdict(list)
    for p, fi in zip(pairs, fired):
        groups[p.group].append(fi)
    row = {g: float(np.mean(v)) for g, v in groups.items()}
    labels = np.array([p.label for p in pairs])
    row["balanced_accuracy"] = float((fired[labels == 1].mean() + (~fired[labels == 0]).mean()) / 2)
    return row


@torch.no_grad()
def sentinel_fired(pairs: list[Pair], model, batch: int = 128) -> np.ndarray:
    """The knowledge sentinel as a gate, per pair: fires when the query's representation is
    closer to the edit's knowledge statement than to the sentinel (as ``gate="krm-sentinel"``)."""

    model.eval()
    queries = sorted({p.query for p in pairs})
    texts = sorted({statement(p.edit_fields["prompt"], p.edit_fields["target"]) for p in pairs})
    q_rep = {t: r for i in range(0, len(queries), batch)
             for t, r in zip(queries[i:i + batch], model.query(queries[i:i + batch]))}
    k_rep = {t: r for i in range(0, len(texts), batch)
             for t, r in zip(texts[i:i + batch], model.knowledge(texts[i:i + batch]))}
    ks = model.sentinel_rep()[0]
    gate = Gate("krm-sentinel", GateParams())
    out = []
    for p in pairs:
        q = q_rep[p.query]
        k = k_rep[statement(p.edit_fields["prompt"], p.edit_fields["target"])]
        margin = float(model.similarity(q[None], k[None])) - float(model.similarity(q[None], ks[None]))
        out.append(gate.score(PairFeatures(cos_key=0.0, sentinel_margin=margin))[1])
    return np.array(out)


def scorer_gates_fired(pairs: list[Pair], scorer: RelationScorer) -> dict[str, np.ndarray]:
    """The relation and sentinel gates' verdicts per pair, computed as the runtime computes them
    (:func:`recall.memory.pair_features` for the name match, :func:`recall.memory.scorer_margins`)."""
    edits = [[build_edit("fact", **p.edit_fields)] for p in pairs]
    queries = [p.query for p in pairs]
    features = [[pair_features(q, None, None, row[0])] for q, row in zip(queries, edits)]
    scorer_margins(scorer, scorer.has_sentinel, queries, edits, features)
    gates = [Gate(kind, GateParams()) for kind in (("relation", "sentinel") if scorer.has_sentinel else ("relation",))]
    return {gate.kind: np.array([gate.score(row[0])[1] for row in features]) for gate in gates}


def compare_with_sentinel(data_dir: str | Path, out_report: str | Path | None = None, n_dev: int = 600,
                          seed: int = 0, encoder=None, recipe_dir: str | Path | None = None,
                          scorer: str | Path | None = None) -> dict:
    """The shipped gates (``gate.json``), the relation and sentinel gates (the relation scorer
    ``scorer``, default shipped) and RECIPE's own knowledge sentinel (the shipped
    continuous-prompt checkpoint) on the same dev pairs as :func:`train`'s report."""

    t0 = time.time()
    data_dir = Path(data_dir)
    encoder = encoder or TextEncoder()
    cf_dev = json.loads((data_dir / "counterfact/easyedit_mend_format/counterfact-edit.json").read_text())[:n_dev]
    distract_path = data_dir / "counterfact/easyedit_locality/counterfact_distracting_neighbor.json"
    distract = json.loads(distract_path.read_text())
    pairs = counterfact_pairs(cf_dev, data_dir, random.Random(seed + 1)) + distracting_pairs(distract)
    table = evaluate(GateParams.load(), pairs, featurize(pairs, encoder))
    for kind, fired in scorer_gates_fired(pairs, RelationScorer(scorer)).items():
        table[kind] = _rates(pairs, fired)
    table["krm-sentinel"] = _rates(pairs, sentinel_fired(pairs, load(recipe_dir)))
    recipe = (f"dev = first {n_dev} counterfact-edit records + {len(distract)} distracting-neighbor records "
              f"({len(pairs)} pairs); learned/cosine/subject from gate.json, relation and sentinel from "
              f"{scorer or 'recall/data/relation_scorer.pt'}, krm-sentinel from {recipe_dir or 'recall/data/recipe'}")
    md = report_markdown(table, pairs, recipe)
    if out_report:
        Path(out_report).write_text(md + f"\nWall time {time.time() - t0:.0f} s (`recall gate compare`).\n")
    return {"table": table, "report": md, "seconds": time.time() - t0}


def report_markdown(table: dict[str, dict[str, float]], pairs: list[Pair], recipe: str) -> str:
    label = {p.group: p.label for p in pairs}
    groups = sorted(label, key=lambda g: (-label[g], g))
    lines = [f"Gate evaluation on the dev split ({recipe}).", "",
             "Firing rate per query group: rows marked (+) should fire (want 1.0), rows marked (-) should not "
             "(want 0.0).", "", "| query group | " + " | ".join(table) + " |",
             "|---|" + "---|" * len(table)]
    for g in groups:
        n = sum(1 for p in pairs if p.group == g)
        cells = " | ".join(f"{table[k][g]:.3f}" for k in table)
        lines.append(f"| {g} ({'+' if label[g] else '-'}, n={n}) | {cells} |")
    lines.append("| **balanced accuracy** | " + " | ".join(f"**{table[k]['balanced_accuracy']:.3f}**"
                                                      for k in table) + " |")
    return "\n".join(lines) + "\n"


def train(data_dir: str | Path, out_params: str | Path, out_report: str | Path | None = None,
          n_train: int = 3000, n_dev: int = 600, seed: int = 0, encoder=None) -> dict:

    t0 = time.time()
    data_dir = Path(data_dir)
    rng = random.Random(seed)
    encoder = encoder or TextEncoder()
    cf_train = json.loads((data_dir / "counterfact/easyedit_mend_format/counterfact-train.json").read_text())
    zs_train = json.loads((data_dir / "zsre/zsre_mend_train-1k.json").read_text())
    train_pairs = counterfact_pairs(rng.sample(cf_train, min(n_train, len(cf_train))), data_dir, rng)
    train_pairs += zsre_pairs(zs_train, rng)
    train_feats = featurize(train_pairs, encoder)
    params = tune(train_feats, np.array([p.label for p in train_pairs]), encoder.dim)
    cf_dev = json.loads((data_dir / "counterfact/easyedit_mend_format/counterfact-edit.json").read_text())[:n_dev]
    distract_path = data_dir / "counterfact/easyedit_locality/counterfact_distracting_neighbor.json"
    distract = json.loads(distract_path.read_text())
    dev_pairs = counterfact_pairs(cf_dev, data_dir, random.Random(seed + 1)) + distracting_pairs(distract)
    dev_feats = featurize(dev_pairs, encoder)
    table = evaluate(params, dev_pairs, dev_feats)
    recipe = (f"trained on {n_train} CounterFact-train records + {len(zs_train)} zsRE-train records "
              f"({len(train_pairs)} pairs, seed {seed}); dev = first {n_dev} counterfact-edit records + "
              f"{len(distract)} distracting-neighbor records ({len(dev_pairs)} pairs)")
    params.trained_on = recipe
    params.save(out_params)
    md = report_markdown(table, dev_pairs, recipe)
    if out_report:
        Path(out_report).write_text(md + f"\nParameters: `{Path(out_params).name}`. Wall time "
                                    f"{time.time() - t0:.0f} s.\n")
    return {"params": params, "table": table, "report": md, "seconds": time.time() - t0}
