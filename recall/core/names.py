"""Whether a text names an edit's subject, or only a longer name that contains it.

The subject lexicon matches names word for word, so an edit about "Paris" is found in "Where
was Paris Hilton born?", one about Karl Marx (alias "Marx") in "Where is Groucho Marx buried?",
and one about Vietnam in "What currency did South Vietnam use?". In written English a name
continues through the capitalised words around it: an occurrence of a name that a capitalised
word joins (one space apart, after it, or before it when the name is one word: a full name such
as "Hermann Hesse" is rarely the tail of another) belongs to a longer name, i.e. to another
entity, unless that word is

- a capitalised common word: a sentence's first word, a question word, a pronoun ("Did", "Is",
  "Tell", "I");
- a title before a name ("President Obama", "Dr. Watson") or a company or generation suffix
  after it ("Apple Inc", "Martin Luther King Jr");
- a nationality ("the Brazilian Pelé");
- a word that runs on from the name in the edit's own prompt ("Barack" when the prompt says
  "Where was Barack Obama born?" but the subject is "Obama").

Texts written mostly in capitals (title case, shouting) carry no such signal; there every
occurrence counts. Scripts without case never form longer names this way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from recall.core.text import FUNCTION_WORDS, name_spans

# capitalised, these words start no name: the function words, and articles, negation, greetings
# and the small words of a request
_COMMON = FUNCTION_WORDS | frozenset("""
a an the so yet if then not no yes mine like near toward towards upon according any some all every each
think remind compare find hi hello hey ok okay thanks thank also just quick question wait actually really well
""".split())

_TITLES = frozenset("""
mr mrs ms miss mx dr doctor prof professor sir dame lord lady king queen prince princess emperor empress
president vice prime minister chancellor senator governor mayor premier general gen colonel col captain capt
admiral commander sergeant sgt lieutenant lt major pope saint st father sister brother reverend rev rabbi
imam sheikh sultan tsar czar kaiser duke duchess count countess baron judge justice chief chairman ceo
coach uncle aunt grandma grandpa mom mum dad mother mama papa agent officer detective nurse archbishop
bishop cardinal ayatollah maharaja shah khan emir crown
""".split())

_SUFFIXES = frozenset("""
inc corp corporation ltd llc plc co company group fc cf afc sc ag sa gmbh nv bv jr sr ii iii iv
""".split())

# Nationalities that stand before a name ("the Brazilian Pelé"); most end in these letters.
_DEMONYM_ENDINGS = ("ian", "ean", "ese", "ish")
_DEMONYMS = frozenset("""
american mexican african korean german cuban moroccan kenyan chilean dominican venezuelan tibetan roman
european asian arab french dutch czech swiss greek thai welsh filipino argentine icelandic soviet
israeli iraqi pakistani saudi kuwaiti qatari yemeni bangladeshi nepali somali omani emirati
swede dane finn pole brit scot turk spaniard frenchman englishman dutchman irishman scotsman welshman
""".split())

_WINDOW = 64  # characters read on either side of a name: longer words are no part of names
_WORD_BEFORE = re.compile(r"([^\W\d_][\w'’.]*)[ \t]+$")
_WORD_AFTER = re.compile(r"^[ \t]+([^\W\d_][\w'’.]*)")
_WORDS = re.compile(r"[^\W\d_][\w'’]*")


def _capitalised(word: str) -> bool:
    return word[:1].isupper()


def _plain(word: str) -> str:
    return word.casefold().replace(".", "").replace("’", "'").removesuffix("'s")


def is_nationality(word: str) -> bool:
    """Whether ``word`` is one of the listed nationalities ("Welsh", "Swede"); the endings that
    :func:`_foreign` also reads ("-ian") are left out, since given names share them ("Julian")."""
    return _plain(word) in _DEMONYMS


def _foreign(word: str, allowed: frozenset[str], own: frozenset[str]) -> bool:
    """Whether a capitalised neighbour makes the name part of a longer one. Acronyms ("the RPG
    Disco Elysium", "WWII") describe the name rather than extend it."""
    plain = _plain(word)
    if not _capitalised(word) or plain in own or plain in _COMMON or plain in allowed:
        return False
    if sum(c.isalpha() for c in word) >= 2 and word.replace(".", "").isupper():
        return False
    return not (plain in _DEMONYMS or plain.endswith(_DEMONYM_ENDINGS))


def _describes(prefix: str, word: str) -> bool:
    """Whether a capitalised word before a name is no part of it because of where it stands:
    first in its sentence ("Classify Upper Sorbian ..."), after the previous sentence's period
    ("... Paris. Obama ..."), a possessive ("Kenya's Faith Kipyegon"), or a description after an
    article ("the Swede Ingvar Kamprad", "the Metroidvania Hollow Knight")."""
    if word.endswith((".", "'s", "’s")):
        return True
    rest = prefix.rstrip()
    if not rest or rest[-1] in ".!?:;\"'“”‘(\n-–—,":
        return True
    last = rest.split()[-1].casefold()
    return last in ("the", "a", "an")


def mostly_capitalised(text: str) -> bool:
    """Title case or capitals throughout ("Where Was Frida Kahlo Born?"): capitals mark no names
    there. Told by the common words after the first: at least half of them capitalised."""
    common = [w for w in _WORDS.findall(text)[1:] if _plain(w) in _COMMON and _plain(w) != "i"]
    return bool(common) and 2 * sum(_capitalised(w) for w in common) >= len(common)


def own_words(prompt: str | None, names: Sequence[str]) -> frozenset[str]:
    """The capitalised words that run on from the subject's names in the edit's own prompt
    ("Barack" in "Where was Barack Obama born?" when the subject is "Obama"): part of the name as
    the edit writes it. Other words of the prompt or the names do not count ("Jong" of an edit
    about Kim Jong-un, alias "Kim", is foreign in "Kim Jong-il")."""
    own: set[str] = set()
    for start, end in _spans(prompt or "", names):
        pos = start
        while (m := _WORD_BEFORE.search(prompt[max(0, pos - _WINDOW) : pos])) and _capitalised(m.group(1)):
            own.add(_plain(m.group(1)))
            pos = max(0, pos - _WINDOW) + m.start()
        pos = end
        while (m := _WORD_AFTER.match(prompt[pos : pos + _WINDOW])) and _capitalised(m.group(1)):
            own.add(_plain(m.group(1)))
            pos += m.end()
    return frozenset(own)


def _spans(text: str, names: Iterable[str]) -> list[tuple[int, int]]:
    """Every whole-word occurrence of any name (any case, any punctuation between its words),
    without those inside a longer occurrence."""
    spans = {span for name in names for span in name_spans(text, name)}
    kept, reach = [], -1
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        if end > reach:  # not inside a span that starts earlier (or at the same place, longer)
            kept.append((start, end))
            reach = end
    return kept


def inside_longer_name(text: str, names: Sequence[str], prompt: str | None = None) -> bool:
    """Whether every occurrence of ``names`` in ``text`` is part of a longer name: a foreign
    capitalised word extends each one (see the module's docstring). False when none occurs.
    ``prompt``: the edit's own prompt, whose capitalised words belong to its subject's name."""
    spans = _spans(text, names)
    if not spans or mostly_capitalised(text):
        return False
    own = own_words(prompt, names)
    for start, end in spans:
        # neighbours are read in a window, so a long text costs linear time, not quadratic
        lead = max(0, start - _WINDOW)
        before = _WORD_BEFORE.search(text[lead:start])
        after = _WORD_AFTER.match(text[end : end + _WINDOW])
        one_word = not any(c.isspace() for c in text[start:end])
        if one_word and before and _foreign(before.group(1), _TITLES, own) and not _describes(
                text[max(0, lead + before.start() - _WINDOW) : lead + before.start()], before.group(1)):
            continue
        possessive = text[start:end].endswith(("'s", "’s"))  # "Tunnock's Teacakes": a thing of the name's
        if after and not possessive and _foreign(after.group(1), _SUFFIXES, own):
            continue
        return False
    return True
