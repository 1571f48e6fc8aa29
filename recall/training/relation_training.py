"""Train the relation scorer (:mod:`recall.relation`) on the train splits and hand-written forms.
``recall gate train-relation`` runs this.

Pairs are (edit text, query text) with the subject masked as ``X``; label 1 when the query
asks for the edit's relation about the edit's subject. Sources, train splits only:

- ``relation_forms.json`` (next to this module): hand-written cloze, question, instruction and
  chat phrasings of ~100 relations, written for this purpose and independent of every
  evaluation set; ``rome_known_1000`` ParaRel templates and MQuAKE question/cloze templates
  join them by Wikidata id. Positives: two phrasings of one relation. Negatives: a phrasing of
  another relation (half of them the nearest relation by encoder cosine: birthplace vs place of
  death); the relation asked about another name after a sentence that mentions the subject
  ("X was born in Honolulu. Where was Joe Biden born?"); the subject inside a longer name
  ("Where was X Hilton born?"). A share of the queries of both labels describe the subject
  ("the animated film X", "X, the physicist,") or date it ("X was created in 1991 by";
  :data:`DESCRIPTIONS`), so that neither reads as another relation.
- CounterFact train: prompt vs rephrase (+); prompt vs a same-subject prompt of another
  ParaRel relation (-).
- zsRE train: question vs rephrase (+); question vs another record's question put on this
  subject (-). The file's last ``zsre_held_out`` records stay out, to check a choice on.
- KnowEdit ``wiki_counterfact`` and ``wiki_recent`` train: prompt vs its relation-specificity
  prompts (same subject, other relation, -).
- The hand-written training conversations (``conversations_train.jsonl``; :func:`conversation_pairs`).

With ``with_answer`` (an option, off by default: tried in stop 28, not shipped) the edit's side ends with its answer
(:func:`recall.relation.edit_text`): for the forms, a typical answer of the relation
(``relation_answers.json``, hand-written, plus the ``rome_known_1000`` attributes of the
relation's Wikidata id); for the data sets, the record's new target. The label still says
only whether the query asks the edit's relation; the answer tells the scorer what kind of
thing that relation's object is.

A fraction of the hand-written relations is held out of training entirely; the report gives
the scorer's accuracy on them (relations it never saw) beside the in-training ones, and the
threshold is chosen on the held-out pairs (balanced accuracy).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import AutoModel, AutoTokenizer

from recall.core.chat import scope_query
from recall.core.errors import ConfigError
from recall.core.models import default_encoder_path, pick_device
from recall.core.text import SUBJECT_MASK
from recall.index import TextEncoder
from recall.relation import MeanPoolHead, edit_text, mask_names, pair_logits, pair_texts, probability, tokenize_pairs

FORMS_FILE = Path(__file__).with_name("relation_forms.json")
ANSWERS_FILE = Path(__file__).with_name("relation_answers.json")
# hand-written conversations (the dev set's schema), written for training only
CONVERSATIONS_FILE = Path(__file__).with_name("conversations_train.jsonl")
# the linear layers of a BERT-style encoder that get low-rank updates (templates over layers)
TARGETS = ("encoder.layer.{}.attention.self.query", "encoder.layer.{}.attention.self.key",
           "encoder.layer.{}.attention.self.value", "encoder.layer.{}.attention.output.dense",
           "encoder.layer.{}.intermediate.dense", "encoder.layer.{}.output.dense")

FILLERS = ("Quick question.", "Hi!", "Hey there.", "I'm studying for an exam.", "Settle a bet for me.",
           "Thanks for your help earlier.", "Sorry, one more thing.", "My friend and I were arguing about this.",
           "This is for a school project.", "I was reading an article earlier today.", "Okay, next one.",
           "Random question, but", "Help me out here.", "I need this for a quiz tomorrow.")
MENTIONS = ("I just read a long article about X.", "X came up in class today.", "My teacher mentioned X.",
            "I watched a documentary about X last night.", "We were talking about X at dinner.",
            "I'm writing a report on X.", "Tell me a bit about X.", "X is fascinating.")
OTHER_NAMES = ("Joe Biden", "Marie Curie", "Toyota", "the Danube", "Portugal", "Taylor Swift", "Lionel Messi",
               "Microsoft", "Nairobi", "The Godfather", "Pablo Picasso", "Mount Fuji", "Real Madrid", "Python",
               "Angela Merkel", "Samsung", "Frida Kahlo", "Lake Victoria", "Radiohead", "Stanford University")
EXTENSIONS = ("X Hilton", "X Airport", "University of X", "X FC", "X Street", "New X", "X Jr.", "X Records",
              "X Tower", "Saint X", "X Museum", "X County")
PRONOUNS = {"person": ("he", "his"), "default": ("it", "its")}
# How people describe the subject they ask about, by its type ("the animated film X", "X, the
# country's highest peak,"): put on queries of both labels, so that a description is no cue
# either way. ``{year}`` is filled with a year. Written for this purpose, not from any data set.
DESCRIPTIONS = {
    "person": ("the French painter X", "the American writer X", "the late X", "the Japanese novelist X",
               "the singer X", "X, the physicist,", "the footballer X", "X, who won a Nobel Prize,",
               "the former prime minister X", "the actor X", "the famous composer X", "the chess player X",
               "the rapper X", "X, the tech executive,", "the poet X", "the Brazilian striker X"),
    "place": ("the city of X", "X, the largest city in the region,", "the ancient town of X", "X, the capital,",
              "the river X", "X, the country's highest peak,", "the island of X", "the region of X",
              "X, a popular tourist destination,", "the lake X", "the historic city of X", "the mountain X"),
    "work": ("the {year} film X", "the novel X", "the album X", "the animated film X", "the painting X",
             "the song X", "the video game X", "X, released in {year},", "the Korean film X", "the TV series X",
             "the classic book X", "the opera X"),
    "organization": ("the tech company X", "the carmaker X", "X, the German company,", "the conglomerate X",
                     "the retailer X", "X, founded in {year},", "the bank X", "the airline X", "the brand X",
                     "the university X", "the record label X"),
    "product": ("the {year} model X", "the smartphone X", "the programming language X", "X, launched in {year},",
                "the game console X", "the software X", "the drug X", "the car X"),
    "team": ("the football club X", "the rugby side X", "X, the national team,", "the basketball team X",
             "the cricket team X", "the club X"),
    "other": ("the well-known X", "X, as it is known,", "the famous X", "X, first described in {year},",
              "the so-called X"),
}
ADJUNCT_BEFORE = ("by", "in", "of", "to", "for", "at", "from", "as", "on", "with")


def load_settings(cls, source: str | Path | dict | None):
    """An instance of the settings dataclass ``cls`` from a JSON file or an already read dict
    (a checkpoint's recorded settings); its defaults for None. Keys that are not fields are ignored."""
    if source is None:
        return cls()
    data = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    return cls(**{k: v for k, v in data.items() if k in {f.name for f in fields(cls)}})


@dataclass
class RelationHParams:
    """Training settings (defaults are what shipped; see the experiment log)."""

    rank: int = 16
    scale: float = 2.0  # the update is scale * B @ A
    lr: float = 5e-4
    head_lr: float = 2e-3
    batch_size: int = 32
    steps: int = 3000
    held_out_frac: float = 0.15
    n_counterfact: int = 3000
    n_form_pairs: int = 40000
    # the edit's side ends with its answer (recall.relation.edit_text); tried in stop 28 and not
    # shipped (docs/experiments.md section 17), so off: the default reproduces the shipped scorer
    with_answer: bool = False
    # pairs from the hand-written training conversations (CONVERSATIONS_FILE), each used this
    # many times; a held-out fraction of the conversations joins the threshold's pairs (stop 34
    # tried 2 alone: zsRE chat paraphrases fell to .82; shipped since stop 36 with the
    # descriptions below, docs/experiments.md section 26)
    conversation_repeat: int = 2
    conversation_held_out_frac: float = 0.15
    # further conversation files beside CONVERSATIONS_FILE (names in recall/training), treated
    # the same way; stop 37 wrote conversations_train2.jsonl (harder same-subject questions),
    # shipped since stop 38 (v10, docs/experiments.md section 28); () reproduces v8a
    extra_conversations: tuple[str, ...] = ("conversations_train2.jsonl",)
    # the share of the forms' queries whose subject is described ("the animated film X") or
    # dated ("X was created in 1991 by"): the scorer before them (v4) read such queries as another relation
    describe_frac: float = 0.3
    # zsRE train records (the file's last N) kept out of training, to check a choice on
    # zsRE-style questions (``recall bench chat --data`` on them) without the evaluation split
    zsre_held_out: int = 150
    # the zsRE train pairs used this many times: terse machine rephrasings beside the
    # conversations' wordings (stop 38 found more conversations trade them away, section 29)
    zsre_repeat: int = 1
    # a fixed threshold instead of the one chosen on the held-out pairs: for a final run on
    # every relation (held_out_frac 0), the threshold an otherwise equal run chose on held-out ones
    threshold: float | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("conversation_repeat", "zsre_repeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be a whole number >= 0, not {value!r}")

    @classmethod
    def load(cls, path: str | Path | None) -> RelationHParams:
        return load_settings(cls, path)


@dataclass
class RelPair:
    edit: str  # masked
    query: str  # masked
    label: int
    group: str
    relation: str | None = None  # the edit's relation, for pairs from the inventory


# -- the relation inventory ----------------------------------------------------------------------
def load_inventory(data_dir: Path, forms_file: Path = FORMS_FILE) -> dict[str, dict]:
    """relation name -> {"forms": [...with X], "type": subject type}; data-set templates are merged
    into the hand-written relation with the same Wikidata id (else their own entry)."""
    raw = json.loads(forms_file.read_text(encoding="utf-8"))["relations"]
    inv = {name: {"forms": list(r["forms"]), "type": r.get("subject_type", "other"), "pid": r.get("wikidata") or name}
           for name, r in raw.items()}
    by_pid = {r["wikidata"]: name for name, r in raw.items() if r.get("wikidata")}

    def add(pid: str, form: str) -> None:
        name = by_pid.get(pid, pid)
        entry = inv.setdefault(name, {"forms": [], "type": "other", "pid": pid})
        if form not in entry["forms"]:
            entry["forms"].append(form)

    for r in json.loads((data_dir / "counterfact/rome_known_1000.json").read_text()):
        add(r["relation_id"], r["template"].replace("{}", SUBJECT_MASK))
    for name in ("question_templates.json", "cloze_templates.json"):
        path = data_dir / "mquake/templates" / name
        if path.exists():
            for pid, t in json.loads(path.read_text()).items():
                for form in [t] if isinstance(t, str) else t:
                    add(pid, form.replace("[X]", SUBJECT_MASK).replace("{}", SUBJECT_MASK))
    return {k: v for k, v in inv.items() if len(v["forms"]) >= 2}


def load_answers(inv: dict[str, dict], known: list[dict], answers_file: Path = ANSWERS_FILE) -> dict[str, list[str]]:
    """relation name -> typical answers: the hand-written ones, plus the attributes of the
    ``rome_known_1000`` records ``known`` with the relation's Wikidata id."""
    out: dict[str, list[str]] = defaultdict(list)
    for name, values in json.loads(answers_file.read_text(encoding="utf-8"))["answers"].items():
        if name in inv:
            out[name].extend(values)
    by_pid = {entry["pid"]: name for name, entry in inv.items()}
    for r in known:
        name = by_pid.get(r["relation_id"])
        if name is not None and r["attribute"] not in out[name]:
            out[name].append(r["attribute"])
    return dict(out)


def _noisy(text: str, rng: random.Random) -> str:
    """How people type: lowercase, no final punctuation, a filler sentence before."""
    r = rng.random()
    if r < 0.2:
        text = re.sub(r"\bx\b", SUBJECT_MASK, text.lower())
    elif r < 0.35:
        text = text.rstrip("?.!")
    if rng.random() < 0.25:
        text = f"{rng.choice(FILLERS)} {text}"
    return text


def _describe(text: str, kind: str, rng: random.Random) -> str:
    """The subject's mask replaced by a description of it (:data:`DESCRIPTIONS`), when the mask
    stands alone (not after "the", not lower-cased by :func:`_noisy`)."""
    m = re.search(rf"(?<![\w-])(?<!the )(?<!The ){re.escape(SUBJECT_MASK)}(?!\w)", text)
    if m is None:
        return text
    phrase = rng.choice(DESCRIPTIONS.get(kind, DESCRIPTIONS["other"])).format(year=rng.randint(1850, 2020))
    if m.start() == 0:
        phrase = phrase[:1].upper() + phrase[1:]
    if phrase.endswith(",") and re.match(r"\s*[?.!,;:']", text[m.end():]):
        phrase = phrase[:-1]  # "X, the singer,?" -> "X, the singer?"
    return text[: m.start()] + phrase + text[m.end():]


def _with_adjunct(text: str, rng: random.Random) -> str:
    """A time adjunct where it reads naturally: before a cloze's final preposition ("X was
    created in 1991 by"), or before a question's mark ("Where did X die in 1986?")."""
    year = rng.randint(1850, 2020)
    words = text.rstrip().split(" ")
    if len(words) > 2 and words[-1].lower() in ADJUNCT_BEFORE:
        return " ".join(words[:-1] + [f"in {year}", words[-1]])
    if text.rstrip().endswith("?") and words[-1].rstrip("?").lower() not in ADJUNCT_BEFORE:
        return text.rstrip()[:-1] + f" in {year}?"
    return text


def _decorated(text: str, kind: str, rng: random.Random, frac: float) -> str:
    """With probability ``frac`` a description of the subject, with ``frac / 2`` a time adjunct."""
    if frac <= 0:
        return text
    if rng.random() < frac:
        text = _describe(text, kind, rng)
    if rng.random() < frac / 2:
        text = _with_adjunct(text, rng)
    return text


def _pronoun_form(form: str, kind: str) -> str:
    subj, poss = PRONOUNS.get(kind, PRONOUNS["default"])
    form = re.sub(r"\bX's\b", poss, form, count=1)
    return re.sub(rf"\b{SUBJECT_MASK}\b", subj, form, count=1)


def form_pairs(inv: dict[str, dict], relations: list[str], n: int, rng: random.Random,
               near: dict[str, list[str]], statements: dict[str, list[str]],
               answers: dict[str, list[str]] | None = None, describe: float = 0.0) -> list[RelPair]:
    """Pairs from the inventory, restricted to ``relations`` (both sides); with ``answers``, the
    edit's side ends with one of its relation's answers (none where the relation has none).
    ``describe``: the share of same- and other-relation queries whose subject is described
    (:func:`_decorated`; a third of that share on the edit's side)."""
    pairs = []
    rel_set = set(relations)
    for _ in range(n):
        r = rng.choice(relations)
        forms = inv[r]["forms"]
        kind = inv[r]["type"]
        form = rng.choice(forms)
        if describe > 0 and rng.random() < describe / 3:
            form = _describe(form, kind, rng)
        edit = edit_text(form, rng.choice(answers[r])) if answers and answers.get(r) else form
        u = rng.random()
        if u < 0.40:
            q = _decorated(rng.choice([f for f in forms if f != form] or forms), kind, rng, describe)
            pairs.append(RelPair(edit, _noisy(q, rng), 1, "forms_same_relation", r))
        elif u < 0.47:
            q = _pronoun_form(rng.choice(forms), kind)
            pairs.append(RelPair(edit, f"{rng.choice(MENTIONS)} {q}", 1, "forms_pronoun", r))
        elif u < 0.80:
            # Same-subject questions are about a subject of one type, so the other relation is one
            # of the same subject type ("Who leads X?" is a CEO question for a company and a head
            # of government question for a country: across types it would be a false negative),
            # never one with the same Wikidata property (mayor / head of government).
            usable = [x for x in relations if _negative_for(inv, r, x)]
            pool = [x for x in near.get(r, []) if x in rel_set and x in usable] if rng.random() < 0.5 else []
            other = rng.choice(pool or usable or [x for x in relations if x != r])
            q = _decorated(rng.choice(inv[other]["forms"]), kind, rng, describe)
            pairs.append(RelPair(edit, _noisy(q, rng), 0, "forms_other_relation", r))
        elif u < 0.92:
            q = rng.choice(forms).replace(SUBJECT_MASK, rng.choice(OTHER_NAMES), 1)
            lead = rng.choice(statements.get(r) or MENTIONS)
            pairs.append(RelPair(edit, f"{lead} {q}", 0, "forms_distracting", r))
        else:
            q = rng.choice(forms).replace(SUBJECT_MASK, rng.choice(EXTENSIONS), 1)
            pairs.append(RelPair(edit, _noisy(q, rng), 0, "forms_longer_name", r))
    return pairs


def _negative_for(inv: dict[str, dict], r: str, x: str) -> bool:
    """Whether relation ``x`` may stand as "another relation" of ``r``'s subject."""
    return inv[x]["pid"] != inv[r]["pid"] and inv[x]["type"] in (inv[r]["type"], "other")


def nearest_relations(inv: dict[str, dict], encoder: TextEncoder, k: int = 5) -> dict[str, list[str]]:
    """Each relation's k nearest other relations by the mean encoding of their forms."""
    names = sorted(inv)
    cents = np.stack([encoder.encode(inv[n]["forms"]).mean(0) for n in names])
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    sims = cents @ cents.T
    np.fill_diagonal(sims, -1)
    return {n: [names[j] for j in np.argsort(-sims[i])[:k]] for i, n in enumerate(names)}


# -- pairs from the data sets' train splits ------------------------------------------------------
def counterfact_rel_pairs(records: list[dict], inv: dict[str, dict], t2r: dict[str, str],
                          rng: random.Random, with_answer: bool = False) -> list[RelPair]:
    pairs = []
    rels = sorted(inv)
    for r in records:
        s = r["subject"]
        if s not in r["prompt"]:
            continue
        edit = edit_text(mask_names(r["prompt"], [s]), r["target_new"] if with_answer else None)
        if s in r["rephrase_prompt"]:
            pairs.append(RelPair(edit, mask_names(r["rephrase_prompt"], [s]), 1, "cf_rephrase"))
        rel = t2r.get(r["prompt"].replace(s, "{}", 1))
        if rel is not None and rel not in inv:
            continue  # a relation held out of training
        if rel is not None:
            other = rng.choice([x for x in rels if x != rel])
            pairs.append(RelPair(edit, rng.choice(inv[other]["forms"]), 0, "cf_other_relation"))
    return pairs


def zsre_rel_pairs(records: list[dict], rng: random.Random, with_answer: bool = False) -> list[RelPair]:
    usable = [r for r in records if r["subject"] in r["src"]]
    pairs = []
    for r in usable:
        question = mask_names(r["src"], [r["subject"]])
        edit = edit_text(question, r["alt"] if with_answer else None)
        if r["subject"] in r["rephrase"]:
            pairs.append(RelPair(edit, mask_names(r["rephrase"], [r["subject"]]), 1, "zsre_rephrase"))
        other = rng.choice(usable)
        q = mask_names(other["src"], [other["subject"]])
        if q != question:
            pairs.append(RelPair(edit, q, 0, "zsre_other_question"))
    return pairs


def knowedit_rel_pairs(records: list[dict], with_answer: bool = False) -> list[RelPair]:
    pairs = []
    for r in records:
        s = r["subject"]
        if s not in r["prompt"]:
            continue
        edit = edit_text(mask_names(r["prompt"], [s]), r["target_new"] if with_answer else None)
        for loc in (r.get("locality") or {}).get("Relation_Specificity", []):
            if s in loc["prompt"]:
                pairs.append(RelPair(edit, mask_names(loc["prompt"], [s]), 0, "knowedit_relation_specificity"))
    return pairs


def conversation_queries(r: dict, rng: random.Random) -> list[tuple[str, str, int, str]]:
    """(edit side, query, label, group) from one hand-written conversation (the schema of
    ``bench/data/conversations_dev.jsonl``), names not masked. The edit's side is its prompt or
    one of its paraphrases (users state corrections in any form). Positives: another
    paraphrase, and the pronoun follow-up as the chat path resolves it
    (:func:`recall.core.chat.scope_query`). Negatives: the same subject asked another relation,
    and the same relation asked about a longer name that contains the subject's ("X Hilton")."""
    names = conversation_names(r)
    sides = [r["edit"]["prompt"]] + [p["text"] for p in r["paraphrases"]]
    turn = r["follow_up"]
    found = [n for n in names if mask_names(turn["setup"], [n]) != turn["setup"]]
    follow = scope_query([{"role": "user", "content": turn["setup"]},
                          {"role": "assistant", "content": turn["reply"]},
                          {"role": "user", "content": turn["question"]}],
                         lambda text, found=found: [n for n in found if mask_names(text, [n]) != text])
    others = [q["text"] for q in r["same_subject_other_relation"]]
    traps = [q["text"] for q in r["same_relation_other_subject"]]
    wanted = [(sides[0], q, 1, "conv_paraphrase") for q in sides[1:] + [follow]]
    wanted += [(sides[0], q, 0, "conv_same_subject") for q in others]
    wanted += [(sides[0], q, 0, "conv_longer_name") for q in traps]
    for i, side in enumerate(sides[1:], 1):
        rest = [x for j, x in enumerate(sides) if j != i] + [follow]
        wanted.append((side, rng.choice(rest), 1, "conv_paraphrase"))
        wanted.append((side, rng.choice(others), 0, "conv_same_subject"))
    return wanted


def conversation_names(record: dict) -> list[str]:
    """A hand-written conversation's subject and its aliases: the names its edit is filed under."""
    return [record["subject"], *record.get("aliases", [])]


def conversation_pairs(records: list[dict], rng: random.Random, with_answer: bool = False) -> list[RelPair]:
    """Relation-scorer pairs from hand-written conversations (:func:`conversation_queries`),
    names masked. Only queries in which a name of the edit occurs are kept: the gate asks the
    scorer nothing else."""
    pairs: list[RelPair] = []
    for r in records:
        names = conversation_names(r)
        answer = r["edit"]["target"] if with_answer else None
        for edit, query, label, group in conversation_queries(r, rng):
            e, q = pair_texts(edit, query, names, answer)
            if _MASKED.search(e) and _MASKED.search(q):
                pairs.append(RelPair(e, q, label, group))
    return pairs


_MASKED = re.compile(rf"(?<!\w){re.escape(SUBJECT_MASK)}(?!\w)")


def load_conversations(path: Path = CONVERSATIONS_FILE) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def build_pairs(data_dir: Path, hp: RelationHParams, encoder: TextEncoder,
                inv: dict[str, dict]) -> tuple[list[RelPair], list[RelPair], list[str]]:
    """(train pairs, held-out-relation validation pairs, held-out relation names) from the
    relation inventory ``inv`` (:func:`load_inventory`) and the data sets' train splits."""
    extra = [CONVERSATIONS_FILE.with_name(name) for name in hp.extra_conversations]
    missing = [str(path) for path in extra if not path.exists()]
    if missing:
        raise ConfigError(f"extra_conversations: no such file {', '.join(missing)}")
    rng = random.Random(hp.seed)
    names = sorted(inv)
    held = sorted(rng.sample(names, max(2, int(len(names) * hp.held_out_frac)))) if hp.held_out_frac > 0 else []
    train_rels = [n for n in names if n not in held]
    near = nearest_relations(inv, encoder)
    known = json.loads((data_dir / "counterfact/rome_known_1000.json").read_text())
    statements: dict[str, list[str]] = defaultdict(list)
    by_pid = {entry["pid"]: name for name, entry in inv.items()}
    t2r = {}
    for r in known:
        rel = by_pid.get(r["relation_id"], r["relation_id"])
        t2r[r["template"]] = rel
        statements[rel].append(mask_names(f"{r['prompt']} {r['attribute']}.", [r["subject"]]))
    answers = load_answers(inv, known) if hp.with_answer else None
    train = form_pairs(inv, train_rels, hp.n_form_pairs, rng, near, statements, answers, hp.describe_frac)
    # validation mixes held-out relations with negatives from any relation
    val = form_pairs(inv, held + rng.sample(train_rels, len(held)), max(2000, hp.n_form_pairs // 10),
                     random.Random(hp.seed + 1), near, statements, answers, hp.describe_frac) if held else []
    held_set = set(held)
    val = [p for p in val if p.relation in held_set]
    cf = json.loads((data_dir / "counterfact/easyedit_mend_format/counterfact-train.json").read_text())
    train += counterfact_rel_pairs(rng.sample(cf, min(hp.n_counterfact, len(cf))),
                                   {n: inv[n] for n in train_rels}, t2r, rng, hp.with_answer)
    zsre = json.loads((data_dir / "zsre/zsre_mend_train-1k.json").read_text())
    for _ in range(hp.zsre_repeat):
        train += zsre_rel_pairs(zsre[: len(zsre) - hp.zsre_held_out], rng, hp.with_answer)
    for name in ("wiki_counterfact/train_cf.json", "wiki_recent/recent_train.json"):
        path = data_dir / "knowedit" / name
        if path.exists():
            train += knowedit_rel_pairs(json.loads(path.read_text()), hp.with_answer)
    sources = ([CONVERSATIONS_FILE] if CONVERSATIONS_FILE.exists() else []) + extra
    for k, path in enumerate(sources if hp.conversation_repeat > 0 else []):
        convs = load_conversations(path)
        random.Random(hp.seed + 2 + 2 * k).shuffle(convs)
        n_held = int(len(convs) * hp.conversation_held_out_frac)
        for _ in range(hp.conversation_repeat):
            train += conversation_pairs(convs[n_held:], rng, hp.with_answer)
        val += conversation_pairs(convs[:n_held], random.Random(hp.seed + 3 + 2 * k), hp.with_answer)
    rng.shuffle(train)
    return train, val, held


# -- training ------------------------------------------------------------------------------------
class LowRankLinear(torch.nn.Module):
    """A frozen linear layer plus a trainable ``scale * B @ A`` update (B starts at zero)."""

    def __init__(self, base: torch.nn.Linear, rank: int, scale: float) -> None:
        super().__init__()
        self.base = base
        self.scale = scale
        self.A = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features ** 0.5)
        self.B = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * (x @ self.A.T) @ self.B.T


def add_low_rank(encoder: torch.nn.Module, rank: int, scale: float) -> dict[str, LowRankLinear]:
    """Swap every target linear layer for a :class:`LowRankLinear` around it; returns them by name."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    n_layers = encoder.config.num_hidden_layers
    wrapped = {}
    for template in TARGETS:
        for i in range(n_layers):
            name = template.format(i)
            parent_name, _, attr = name.rpartition(".")
            parent = encoder.get_submodule(parent_name)
            wrapped[name] = LowRankLinear(getattr(parent, attr), rank, scale)
            setattr(parent, attr, wrapped[name])
    return wrapped


@torch.no_grad()
def predict(encoder, head, tokenizer, pairs: list[RelPair], device, batch: int = 128) -> np.ndarray:
    encoder.eval()
    out = []
    for i in range(0, len(pairs), batch):
        b = tokenize_pairs(tokenizer, [(p.edit, p.query) for p in pairs[i:i + batch]], device)
        out.append(torch.sigmoid(pair_logits(encoder, head, b)).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def balanced_accuracy(probs: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """Mean of the firing rate on positives and the silence rate on negatives (0 with no pairs)."""
    if len(labels) == 0:
        return 0.0
    fire = probs >= threshold
    return float((fire[labels == 1].mean() + (~fire[labels == 0]).mean()) / 2)


def best_threshold(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(threshold, balanced accuracy) maximizing balanced accuracy."""
    best = (0.5, -1.0)
    for t in np.arange(0.05, 0.96, 0.01):
        bal = balanced_accuracy(probs, labels, t)
        if bal > best[1] + 1e-9:
            best = (float(round(t, 2)), float(bal))
    return best


def group_rates(pairs: list[RelPair], fired: np.ndarray) -> dict[str, float]:
    groups = defaultdict(list)
    for p, f in zip(pairs, fired):
        groups[p.group].append(f)
    return {g: float(np.mean(v)) for g, v in sorted(groups.items())}


def train(data_dir: str | Path, out: str | Path, report: str | Path | None = None,
          hparams: RelationHParams | None = None, device: str = "auto", forms_file: Path = FORMS_FILE) -> dict:
    """Build pairs, train the low-rank updates and head, pick the threshold on held-out
    relations, save the checkpoint and a markdown report."""
    t0 = time.time()
    hp = hparams or RelationHParams()
    torch.manual_seed(hp.seed)
    dev = pick_device(device)
    base = default_encoder_path()
    text_encoder = TextEncoder()
    inv = load_inventory(Path(data_dir), forms_file)
    train_pairs, val_pairs, held = build_pairs(Path(data_dir), hp, text_encoder, inv)
    n_relations = len(inv)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    encoder = AutoModel.from_pretrained(str(base), local_files_only=True).to(dev)
    wrapped = add_low_rank(encoder, hp.rank, hp.scale)
    encoder.to(dev)
    head = MeanPoolHead(encoder.config.hidden_size).to(dev)
    low_rank = [p for m in wrapped.values() for p in (m.A, m.B)]
    opt = torch.optim.AdamW([{"params": low_rank, "lr": hp.lr}, {"params": head.parameters(), "lr": hp.head_lr}],
                            weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[hp.lr, hp.head_lr], total_steps=hp.steps,
                                                pct_start=0.1)
    labels = torch.tensor([p.label for p in train_pairs], dtype=torch.float32)
    pos_weight = (labels == 0).sum() / (labels == 1).sum().clamp_min(1)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(dev))
    rng = random.Random(hp.seed)
    order = list(range(len(train_pairs)))
    losses = []
    encoder.train()
    for step in tqdm(range(hp.steps), desc="relation scorer", unit="step"):
        if step * hp.batch_size % len(order) < hp.batch_size:
            rng.shuffle(order)
        start = step * hp.batch_size % len(order)
        idx = order[start:start + hp.batch_size]
        batch = tokenize_pairs(tokenizer, [(train_pairs[i].edit, train_pairs[i].query) for i in idx], dev)
        loss = loss_fn(pair_logits(encoder, head, batch), labels[idx].to(dev))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    val_probs = predict(encoder, head, tokenizer, val_pairs, dev)
    val_labels = np.array([p.label for p in val_pairs])
    if hp.threshold is not None:
        threshold = hp.threshold
        val_bal = balanced_accuracy(val_probs, val_labels, threshold)
        chosen = f"threshold {threshold:.2f} given (hparams); checked"
    else:
        threshold, val_bal = best_threshold(val_probs, val_labels)
        chosen = "threshold"
    recipe = (f"{len(train_pairs)} train pairs ({hp.n_form_pairs} from the forms of {n_relations - len(held)} "
              f"relations, the rest from the CounterFact/zsRE/KnowEdit train splits and the hand-written training "
              f"conversations); {chosen} on {len(val_pairs)} pairs: those whose edit relation was held out "
              f"({', '.join(held) or 'none'}) and those of the held-out training conversations")
    state = {
        "deltas": {f"{n}.{k}": getattr(m, k).detach().cpu().to(torch.float16).contiguous()
                   for n, m in wrapped.items() for k in ("A", "B")},
        "scale": hp.scale,
        "head": {k: v.detach().cpu() for k, v in head.state_dict().items()},
        "threshold": threshold,
        "trained_on": recipe,
        "reads_answer": hp.with_answer,
        "hparams": asdict(hp),
    }
    torch.save(state, out)
    rates = group_rates(val_pairs, val_probs >= threshold)
    md = ["Relation scorer, trained by `recall gate train-relation`.", "", recipe + ".", "",
          f"Threshold {threshold:.2f}; balanced accuracy on held-out relations {val_bal:.3f}.", "",
          "| held-out group | label | firing rate |", "|---|---|---|"]
    lab = {p.group: p.label for p in val_pairs}
    md += [f"| {g} | {'+' if lab[g] else '-'} | {r:.3f} |" for g, r in rates.items()]
    md += ["", f"Final training loss (mean of last 100 steps) {np.mean(losses[-100:]):.3f}; "
               f"wall time {time.time() - t0:.0f} s on {dev}."]
    if report:
        Path(report).write_text("\n".join(md) + "\n")
    return {"threshold": threshold, "val_balanced_accuracy": val_bal, "rates": rates, "report": "\n".join(md),
            "seconds": time.time() - t0}


# -- the sentinel --------------------------------------------------------------------------------
@dataclass
class SentinelHParams:
    """Settings of ``recall gate train-sentinel`` (defaults are what shipped)."""

    tokens: int = 8  # sentinel vectors on the edit's side of a pair
    steps: int = 600
    batch_size: int = 64
    lr: float = 3e-3
    n_pairs: int = 16000  # train pairs drawn from the scorer's own (train splits only)
    seed: int = 0

    @classmethod
    def load(cls, path: str | Path | None) -> SentinelHParams:
        return load_settings(cls, path)


def sentinel_logit_fn(scorer, vectors: torch.nn.Parameter):
    """queries -> the sentinel's logits against them, differentiable in ``vectors`` (the scorer's
    weights frozen): the placeholder tokens' embeddings are replaced by ``vectors``."""
    from recall.relation import encode_sentinel_pairs

    k = vectors.shape[0]
    embed = scorer.encoder.get_input_embeddings()

    def logits(queries: list[str]) -> torch.Tensor:
        batch = {key: v.to(scorer.device) for key, v in encode_sentinel_pairs(scorer.tokenizer, queries, k).items()}
        emb = embed(batch["input_ids"])
        # the sentinel's tokens stand right after [CLS] (encode_sentinel_pairs)
        emb = torch.cat([emb[:, :1], vectors.unsqueeze(0).expand(len(queries), -1, -1), emb[:, k + 1 :]], 1)
        states = scorer.encoder(inputs_embeds=emb, token_type_ids=batch["token_type_ids"],
                                attention_mask=batch["attention_mask"]).last_hidden_state
        return scorer.head(states, batch["attention_mask"])

    return logits


def train_sentinel(data_dir: str | Path, out: str | Path, scorer_path: str | Path | None = None,
                   report: str | Path | None = None, hparams: SentinelHParams | None = None,
                   device: str = "auto") -> dict:
    """Learn a sentinel for a frozen relation scorer (the shipped one by default) and save the
    scorer's checkpoint with it. The pairs are the scorer's own (:func:`build_pairs` with the
    scorer's training settings, so the same relations stay held out): the loss is the logistic
    loss of logit(edit, query) - logit(sentinel, query) on train pairs; the report compares the
    sentinel's rule with the scorer's fixed threshold on the held-out pairs."""
    from recall.core import resources
    from recall.relation import RelationScorer

    t0 = time.time()
    sp = hparams or SentinelHParams()
    torch.manual_seed(sp.seed)
    source = Path(scorer_path) if scorer_path is not None else resources.data_file(resources.RELATION_SCORER)
    state = torch.load(source, map_location="cpu", weights_only=True)
    if "hparams" not in state:
        raise ConfigError(f"{source} does not record its training settings; the sentinel needs its pairs")
    hp = load_settings(RelationHParams, state["hparams"])
    scorer = RelationScorer(source, device=device, backend="torch")
    for p in [*scorer.encoder.parameters(), *scorer.head.parameters()]:
        p.requires_grad_(False)
    scorer.encoder.eval()
    train_pairs, val_pairs, _ = build_pairs(Path(data_dir), hp, TextEncoder(), load_inventory(Path(data_dir)))
    rng = random.Random(sp.seed)
    train_pairs = rng.sample(train_pairs, min(sp.n_pairs, len(train_pairs)))
    edit_z = torch.from_numpy(scorer.logits([(p.edit, p.query) for p in train_pairs])).float()
    labels = torch.tensor([p.label for p in train_pairs], dtype=torch.float32)
    embed = scorer.encoder.get_input_embeddings().weight
    start = embed[scorer.tokenizer.convert_tokens_to_ids("x")].detach().cpu().float()
    noise = 0.01 * torch.randn(sp.tokens, start.numel())
    vectors = torch.nn.Parameter((start.repeat(sp.tokens, 1) + noise).to(scorer.device))
    sentinel = sentinel_logit_fn(scorer, vectors)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=((labels == 0).sum() / (labels == 1).sum().clamp_min(1)))
    opt = torch.optim.Adam([vectors], lr=sp.lr)
    order = list(range(len(train_pairs)))
    losses = []
    for step in tqdm(range(sp.steps), desc="sentinel", unit="step"):
        if step * sp.batch_size % len(order) < sp.batch_size:
            rng.shuffle(order)
        first = step * sp.batch_size % len(order)
        idx = order[first:first + sp.batch_size]
        z = edit_z[idx] - sentinel([train_pairs[i].query for i in idx]).cpu()
        loss = loss_fn(z, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        val_edit = scorer.logits([(p.edit, p.query) for p in val_pairs])
        val_sent = np.concatenate([sentinel([p.query for p in val_pairs[i:i + 128]]).cpu().numpy()
                                   for i in range(0, len(val_pairs), 128)]) if val_pairs else np.zeros(0)
    val_labels = np.array([p.label for p in val_pairs])
    fixed = probability(val_edit) >= scorer.threshold
    dynamic = val_edit > val_sent
    bal = {"fixed": balanced_accuracy(fixed.astype(float), val_labels, 0.5),
           "sentinel": balanced_accuracy(dynamic.astype(float), val_labels, 0.5)}
    recipe = (f"{sp.tokens} sentinel vectors, {sp.steps} steps of {sp.batch_size} on {len(train_pairs)} of the "
              f"scorer's train pairs (train splits only), the scorer ({source.name}) frozen")
    out_state = dict(state)
    out_state["sentinel"] = vectors.detach().cpu().float().contiguous()
    out_state["sentinel_trained_on"] = recipe
    out_state["sentinel_hparams"] = asdict(sp)
    torch.save(out_state, out)
    fixed_rates, sent_rates = group_rates(val_pairs, fixed), group_rates(val_pairs, dynamic)
    lab = {p.group: p.label for p in val_pairs}
    md = ["Relation scorer sentinel, trained by `recall gate train-sentinel`.", "", recipe + ".", "",
          f"Held-out pairs ({len(val_pairs)}; the scorer's threshold pairs): balanced accuracy {bal['fixed']:.3f} with "
          f"the fixed threshold {scorer.threshold:.2f}, {bal['sentinel']:.3f} with the sentinel; the sentinel's logit "
          f"has mean {val_sent.mean():.3f} and standard deviation {val_sent.std():.3f} over these queries.", "",
          "| held-out group | label | fixed threshold | sentinel |", "|---|---|---|---|"]
    md += [f"| {g} | {'+' if lab[g] else '-'} | {fixed_rates[g]:.3f} | {sent_rates[g]:.3f} |" for g in fixed_rates]
    md += ["", f"Final loss (mean of last 100 steps) {np.mean(losses[-100:]):.3f}; wall time {time.time() - t0:.0f} s "
               f"on {scorer.device}."]
    if report:
        Path(report).write_text("\n".join(md) + "\n")
    return {"balanced_accuracy": bal, "report": "\n".join(md), "seconds": time.time() - t0}
