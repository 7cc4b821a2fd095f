"""How a question is worded, apart from what it asks: politeness stripped, scripts split,
references back to the papers under discussion recognised.

"Hi! Could you please explain to me in simple terms what POMP is?" and "What is POMP?" should
search and score the same: the framing words ("explain", "simple", "terms") are not about any
paper, yet they weigh in keyword search and in how much of a question a paper covers.
"""

from __future__ import annotations

import re
from collections.abc import Callable

# Openers and request frames, removed from the start of a question (repeatedly: "Hi! I'm new
# here, could you please help me understand ..." peels off in three steps).
_FRAMES = [
    r"(?:hi|hello|hey|hiya|greetings|good (?:morning|afternoon|evening)|dear \w+)"
    r"(?:\s+there|\s+(?:all|everyone|team))?\s*[,!.:;-]*",
    r"(?:thanks|thank you)(?: (?:so|very) much)?(?: in advance)?\s*[,!.:;-]*",
    r"i(?:'m| am) (?:new|a beginner|a newcomer|not an expert|a student|curious)"
    r"[^,.!?;:]{0,40}[,.!;:-]+",
    r"(?:please|pls|plz|kindly)\s*,?",
    r"(?:could|can|would|will) (?:you|u|ya)(?: (?:please|pls|plz|kindly|maybe|possibly))?"
    r"(?: (?:help|assist) me"
    r"(?: to)?)?",
    r"(?:i(?:'d| would) like to|i want to|i wish to|i need to|i(?:'m| am) trying to|"
    r"i(?:'d| would) love to|i was wondering|i wonder|help me|let me|do you)"
    r"(?: (?:know|understand|learn|find out|get))?(?: (?:more )?about)?",
    r"(?:explain|describe|summari[sz]e|clarify|tell|show|walk|teach|give)"
    r"(?: (?:to )?(?:me|us))?(?: through)?(?: (?:a|an|some) (?:overview|summary|brief "
    r"overview|explanation|introduction)(?: of)?)?(?: about)?",
    r"(?:in (?:simple|plain|layman'?s?|easy|simple English) (?:terms|words|language)|"
    r"briefly|quickly|in a nutshell|in short|simply)\s*[,:]?",
    r"(?:understand|know|learn)(?: (?:more )?about)?",
]
_LEADING = re.compile(r"^\s*(?:" + "|".join(_FRAMES) + r")(?!\w)\s*[,:]?\s*", re.IGNORECASE)
_TRAILING = re.compile(
    r"[\s,;.]*(?<![\w'-])(?:(?:please\s+|(?<=[.!?]))\s*"
    r"(?:explain|describe|elaborate|summari[sz]e)(?: (?:it|this|that))?"
    r"(?: (?:briefly|simply|in detail|in simple terms))?"
    r"|(?:,\s*)?(?:please|pls|plz|thanks|thank you(?: (?:so|very) much)?|thx|ty|cheers)"
    r"|in (?:simple|plain|layman'?s?|easy) (?:terms|words|language)|for (?:a )?beginners?"
    r"|for (?:a )?newcomers?|for me)[\s!.?]*$",
    re.IGNORECASE,
)
_INNER_FRAME = re.compile(
    r"\b(?:to me|for me|in (?:simple|plain|layman'?s?|easy) (?:terms|words|language)|"
    r"please|kindly)\b\s*,?",
    re.IGNORECASE,
)

# A CJK (or other non-Latin, unspaced) run glued to a Latin word: split them so "什么是POMP"
# yields "POMP" as its own token.
_CJK = (
    r"\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f"
    r"\u0e00-\u0e7f"
)
_SCRIPT_EDGE = re.compile(rf"(?<=[{_CJK}])(?=[^{_CJK}\s])|(?<=[^{_CJK}\s])(?=[{_CJK}])")

_REFERS_BACK = re.compile(
    r"\b(they|them|their|theirs|it|its|this|that|these|those|he|she|his|her|above|previous|"
    r"same|former|latter|earlier|mentioned|both|each of them|"
    r"the (?:papers?|methods?|approach(?:es)?|models?|authors?|works?|stud(?:y|ies)|"
    r"technique|framework|system|attack|defen[cs]e|results?|experiments?|datasets?|"
    r"benchmarks?|triggers?|proposed|first|second|last|one))\b",
    re.IGNORECASE,
)


_BRITISH = (
    (re.compile(r"(?<=\w{3})is(e|ed|es|ing|ation|ations|er|ers)\b"), r"iz\1"),
    (re.compile(r"(?<=\w{3})ys(e|ed|es|ing)\b"), r"yz\1"),
    (re.compile(r"(?<=\w{3})our(s|ed|ing)?\b"), r"or\1"),
)


def american_spelling(text: str) -> str:
    """Fold British -ise/-yse/-our spellings into -ize/-yze/-or ("initialise" finds
    "initialize"). Applied to documents and questions alike, so an over-eager fold
    ("otherwise" → "otherwize") still matches itself."""
    for pattern, repl in _BRITISH:
        text = pattern.sub(repl, text)
    return text


def split_scripts(text: str) -> str:
    """Insert a space wherever an unspaced script (CJK, Thai) meets another: `什么是POMP` →
    `什么是 POMP`, so tokenisers that split on word boundaries see the Latin term."""
    return _SCRIPT_EDGE.sub(" ", text)


def normalize_question(question: str) -> str:
    """The question without greetings, self-introductions and request frames.

    Returns the original text when stripping would leave nothing (a bare "hello" stays a
    greeting for the chit-chat check).
    """
    text = " ".join(split_scripts(question).split())
    for _ in range(8):
        stripped = _LEADING.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    text = _TRAILING.sub("", text)
    text = _INNER_FRAME.sub(" ", text)
    text = " ".join(text.split()).strip(" ,;:-")
    if not re.search(r"\w", text):
        return " ".join(question.split())
    return text[0].upper() + text[1:]


# Alternatives a question lists rather than requires: "(hard negatives, in-batch negatives)",
# "e.g. one- or few-step sampling", "backdoor or data-poisoning attacks". A paper answering one
# of them answers the question, so a listed word a paper lacks is not a concept it misses.
_EXAMPLES = re.compile(
    r"\(([^)]*)\)|\b(?:e\.g\.?|i\.e\.?|such as|for (?:example|instance)|including)\s*,?"
    r"([^,;:()?!]*)",
    re.IGNORECASE,
)
_LISTED_WORD = r"[\w'-]+"
_OR = re.compile(rf"({_LISTED_WORD})\s*,?\s+(?:or|and/or)\s+({_LISTED_WORD})", re.IGNORECASE)
_LIST_ITEM = re.compile(rf"(?:^|,)\s*((?:{_LISTED_WORD}\s+){{0,2}}{_LISTED_WORD})\s*(?=,)")


def listed_words(question: str) -> set[str]:
    """Lower-cased words the question offers as alternatives or examples (in parentheses,
    after "e.g."/"such as", either side of "or", and the short items of a list ending in
    "or ...")."""
    words: set[str] = set()
    for match in _EXAMPLES.finditer(question):
        words.update(re.findall(_LISTED_WORD, (match.group(1) or match.group(2) or "").lower()))
    for sentence in re.split(r"[?.!;]\s", question):
        pairs = _OR.findall(sentence)
        if not pairs:
            continue
        for before, after in pairs:
            words.update((before.lower(), after.lower()))
        for item in _LIST_ITEM.findall(sentence + ","):
            words.update(re.findall(_LISTED_WORD, item.lower()))
    return words


def refers_back(question: str) -> bool:
    """Does a follow-up point at the papers under discussion ("they", "the method", "it")?"""
    return bool(_REFERS_BACK.search(question))


# Words a question uses for what abstracts say otherwise ("create the triggers" / "generate
# the trigger"; "what results" / "experiments show"): each group counts as one word when
# matching a question against an abstract.
SYNONYM_GROUPS = (
    "create generate produce construct craft build design synthesize make",
    "result experiment evaluation show demonstrate achieve outperform performance accuracy",
    "select choose pick",
    "dataset data benchmark corpus",
    "limitation drawback weakness problem challenge issue",
    "method approach technique framework algorithm",
    "fast speed efficient efficiency cheap",
    "improve boost enhance",
    "reduce decrease lower",
    "use employ utilize leverage",
)


def synonym_table(stem: Callable[[list[str]], list[str]]) -> dict[str, str]:
    """Stem → its group's first stem, for a given stemmer (callers cache the table)."""
    table: dict[str, str] = {}
    for group in SYNONYM_GROUPS:
        stems = stem(group.split())
        table.update({s: stems[0] for s in stems})
    return table


# Irregular past forms → base form, for words a corpus never uses ("jailbroken" where
# abstracts write "jailbreak"; a stemmer leaves them apart). Longer forms also end compounds.
_IRREGULAR_FORMS = (
    "broken:break broke:break spoken:speak spoke:speak written:write wrote:write "
    "taken:take took:take given:give gave:give chosen:choose chose:choose driven:drive "
    "drove:drive shown:show known:know knew:know grown:grow grew:grow drawn:draw "
    "drew:draw thrown:throw threw:throw stolen:steal stole:steal frozen:freeze "
    "froze:freeze hidden:hide hid:hide forgotten:forget forgot:forget fallen:fall "
    "fell:fall beaten:beat bitten:bite ridden:ride risen:rise rose:rise woken:wake "
    "sought:seek taught:teach thought:think brought:bring bought:buy caught:catch "
    "fought:fight built:build sent:send spent:spend held:hold led:lead fed:feed met:meet "
    "left:leave lost:lose made:make found:find told:tell sold:sell understood:understand "
    "ran:run began:begin begun:begin went:go gone:go saw:see seen:see done:do came:come "
    "became:become"
)
_IRREGULAR = dict(pair.split(":") for pair in _IRREGULAR_FORMS.split())


def base_form(word: str) -> str | None:
    """The base form of an irregular past form, alone or ending a compound of at least two
    more letters ("jailbroken" → "jailbreak", "rewritten" → "rewrite"); None otherwise."""
    low = word.lower()
    if low in _IRREGULAR:
        return _IRREGULAR[low]
    for form, base in _IRREGULAR.items():
        if len(form) >= 5 and len(low) >= len(form) + 2 and low.endswith(form):
            return low[: -len(form)] + base
    return None
