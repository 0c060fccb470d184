"""The labeler's rules, no I/O: cue phrases, mention finding, negation/uncertainty scopes, sentences, labelling.

MedCLIP trains its text side on report sentences with CheXpert labels (``sentence-label.csv``). This module
produces them without a parser: each finding has mention phrases; a mention is classified, in CheXpert's order,
by (1) "pre-negation uncertainty" cues (``cannot exclude``, ``not ruled out``, ``no new``), (2) negation cues
(``no``, ``without``, ``negative for``, ``free of``, ``clear of``, ``resolved``, ``removed``, ``X is not seen``,
``X is normal``), (3) uncertainty cues (``may``, ``possible``, ``probable``, ``suspicious for``, ``suggestive
of``, ``concern for``, ``versus``, ``X or Y``, ``?``), otherwise positive. Cue scope: a cue before a mention
reaches it across a comma/``and``/``or`` list inside one clause (``no effusion, pneumothorax, or edema``) but not
past ``but``/``however``/``;``/``which`` nor into a list item that starts a new statement (``..., the heart is
enlarged``, ``..., mild atelectasis``); a cue after a mention must sit in the mention's own statement.

Decisions, following CheXpert's published rules unless noted:
- Several mentions of one finding combine as CheXpert does: positive beats uncertain beats negative (a sentence
  or a whole report); a finding never mentioned is 0 (CheXpert's blank).
- ``likely X`` is positive (CheXpert has no "likely" uncertainty rule); ``less likely``/``unlikely`` are uncertain.
- ``no new X`` is uncertain (CheXpert: the finding may persist); ``no change in X`` leaves X positive.
- ``rule out X`` / ``evaluate for X`` / ``to exclude X`` are uncertain (a clinical question; CheXpert counts
  "rule out" as negation); ``X is ruled out`` / ``X excluded`` are negative.
- Vascular congestion / prominence / cephalization are uncertain Edema; "CHF"/"heart failure" is Edema and makes
  Cardiomegaly uncertain; blunted costophrenic angles are uncertain Pleural Effusion.
- Heart/mediastinal size words ("heart size", "cardiac silhouette", "mediastinal contours") count only with a
  qualifier: normal/not enlarged -> 0, enlarged/widened -> 1, stable/unchanged/borderline -> -1.
- No Finding is 1 when no finding other than Support Devices (including other abnormalities such as emphysema,
  scoliosis, granuloma) is positive or uncertain -- also for sentences that mention nothing at all.

Cost is linear in a report's length: cue scopes are looked up in per-sentence indexes instead of re-scanned for every
mention.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_left, bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1
_L = {name: i for i, name in enumerate(CHEXPERT_LABELS)}
_OTHER = -1
"""Label slot of abnormalities outside the 14 (emphysema, scoliosis, ...): they only block No Finding."""


def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern, re.IGNORECASE)


@dataclass(frozen=True)
class _Concept:
    """One way of mentioning a finding: its label slot, regex, kind and phrases that look alike but are not it."""

    label: int
    pattern: re.Pattern[str]
    kind: str = "direct"  # "direct", "hedged" (positive -> uncertain) or the name of an attribute group
    unmention: re.Pattern[str] | None = None


@dataclass(frozen=True)
class _Qualifiers:
    """Words that turn a size/shape mention ("heart size") into a negative, positive or uncertain finding."""

    negative: re.Pattern[str]
    positive: re.Pattern[str]
    uncertain: re.Pattern[str]


_NEVER = re.compile(r"(?!x)x")
_ATTRIBUTES: dict[str, _Qualifiers] = {
    "heart": _Qualifiers(
        negative=_rx(
            r"\b(?:normal|unremarkable|within normal limits|not (?:\w+ )?enlarged|top[- ]normal|"
            r"upper (?:limits?|range) of normal|upper normal)\b"
        ),
        positive=_rx(r"\b(?:enlarg\w*|large|increased|prominent|cardiomegaly)\b"),
        uncertain=_rx(r"\b(?:borderline|stable|unchanged|similar|not changed)\b"),
    ),
    "mediastinum": _Qualifiers(
        negative=_rx(r"\b(?:normal|unremarkable|within normal limits|not (?:\w+ )?(?:widened|enlarged))\b"),
        positive=_rx(r"\b(?:widen\w*|wide|enlarg\w*|prominen\w*|increased)\b"),
        uncertain=_rx(r"\b(?:borderline|stable|unchanged|similar|not changed)\b"),
    ),
    "costophrenic": _Qualifiers(
        negative=_rx(r"\b(?:sharp\w*|clear|normal|preserved|well[- ]defined)\b"),
        positive=_NEVER,
        uncertain=_rx(r"\b(?:blunt\w*|obscur\w*)\b"),
    ),
}


def _concept(label: str | int, pattern: str, kind: str = "direct", unmention: str | None = None) -> _Concept:
    slot = _L[label] if isinstance(label, str) else label
    return _Concept(slot, _rx(pattern), kind, _rx(unmention) if unmention else None)


_CONCEPTS: tuple[_Concept, ...] = (
    _concept(
        "Enlarged Cardiomediastinum",
        r"\bwiden(?:ed|ing) (?:of (?:the )?)?(?:superior )?mediastin\w*|\bmediastinal (?:widening|enlargement)|"
        r"\benlarged cardiomediastin\w*|\bcardiomediastinal enlargement|\bwide mediastinum",
    ),
    _concept(
        "Enlarged Cardiomediastinum",
        r"\bcardiomediastinal(?: (?:silhouettes?|contours?|size|shadow|structures|width))?\b|"
        r"\bmediastinal (?:silhouettes?|contours?|configuration|structures|width|shadow)\b|\bmediastinum\b",
        kind="mediastinum",
    ),
    _concept(
        "Cardiomegaly",
        r"\bcardiomegaly\b|\benlarged (?:heart|cardiac silhouette)\b|\bcardiac enlargement\b|"
        r"\benlargement of the (?:heart|cardiac silhouette)\b",
    ),
    _concept(
        "Cardiomegaly",
        r"\bheart(?: size)?\b|\bcardiac (?:silhouette|size|shadow|contours?)\b|\bsize of the heart\b",
        kind="heart",
        unmention=r"\bheart (?:failure|borders?|valves?|rate)\b|\b(?:left|right) heart\b",
    ),
    _concept(
        "Lung Lesion",
        r"\bnodul\w*|\bmass(?:es)?\b|\blesions?\b|\btumou?rs?\b|\bneoplas\w*|\bcarcinoma\w*|\bmalignan\w*|"
        r"\bcancers?\b",
        unmention=r"\bmass effect\b",
    ),
    _concept(
        "Lung Opacity",
        r"\bopaci\w*|\binfiltrat\w*|\bair[- ]?space (?:disease|process|opacit\w*)|\bhaz(?:e|iness|y)\b|"
        r"\bdensit(?:y|ies)\b",
        unmention=r"\bbone densit\w*",
    ),
    _concept(
        "Edema",
        r"\b(?:o)?edema\w*|\bfluid overload\b|\bheart failure\b|\bchf\b|\bkerley\b",
        unmention=r"\b(?:soft tissue|subcutaneous|(?:chest )?wall) (?:o)?edema\b",
    ),
    _concept(
        "Edema",
        r"\b(?:vascular|pulmonary|venous|interstitial) (?:congestion|engorgement|prominence|redistribution)\b|"
        r"\bcongestion\b|\bcephalization\b|\bindistinct(?:ness)?\b",
        kind="hedged",
    ),
    _concept("Consolidation", r"\bconsolidat\w*"),
    _concept("Pneumonia", r"\b(?:broncho)?pneumonias?\b|\binfections?\b|\binfectious\b|\binfective\b"),
    _concept(
        "Atelectasis",
        r"\batelecta\w*|\bcollapsed?\b",
        unmention=r"\b(?:vertebral|compression|vertebral body) collapse\b",
    ),
    _concept("Pneumothorax", r"pneumothora(?:x|ces)\b|\bptx\b"),
    _concept(
        "Pleural Effusion",
        r"\beffusions?\b|\bpleural fluid\b|\bhydrothorax\b|\bhydropneumothora(?:x|ces)\b|"
        r"\bfluid in the (?:pleural space|fissures?)\b|\bloculated fluid\b|\bempyema\b",
        unmention=r"\b(?:pericardial|joint) effusions?\b",
    ),
    _concept("Pleural Effusion", r"\b(?:costophrenic|cp) (?:angles?|sulc(?:us|i))\b", kind="costophrenic"),
    _concept(
        "Pleural Other",
        r"\bpleural (?:thickening|plaques?|scar\w*|calcification\w*|abnormalit\w*|reaction)\b|\bfibrothorax\b|"
        r"\bapical (?:pleural )?(?:cap|capping|thickening)\b|\bpleuro-?parenchymal (?:scar\w*|thickening)\b",
    ),
    _concept("Fracture", r"\bfractur\w*|\bfx\b"),
    _concept(
        "Support Devices",
        r"\btubes?\b|\bcatheters?\b|\bpace(?:maker|r)s?\b|\bwires?\b|\bpicc\b|\bports?\b|\bport-?a-?cath\b|"
        r"\bett?\b|\bngt\b|\bogt\b|\bintubat\w*|\btracheostomy\b|\bdrains?\b|\bstents?\b|\bclips?\b|"
        r"\bdefibrillators?\b|\ba?icd\b|\bdevices?\b|\bhardware\b|\bprosthe\w*|\bvalve replacement\b|"
        r"\bswan[- ]ganz\b|\belectrodes?\b|\b(?:pacer|pacing|pacemaker|icd|defibrillator) leads?\b|\blines?\b",
        unmention=r"\b(?:pleural|septal|kerley b|b|skin ?fold|fissural|paraspinal|paratracheal|azygoesophageal|"
        r"mach|fine|reticular) lines?\b|\blines? of\b",
    ),
    _concept(
        _OTHER,
        r"\bemphysem\w*|\bhyperinflat\w*|\bhyperexpan\w*|\bcopd\b|\bscolio\w*|\bkyphos\w*|\bdegenerat\w*|"
        r"\bspondylo\w*|\bosteophyt\w*|\bcalcifi\w*|\bgranulom\w*|\bhernia\w*|\bbronchiectas\w*|\bfibros\w*|"
        r"\bfibrotic\b|\bscar(?:s|ring|red)?\b|\binterstitial (?:lung disease|markings|abnormalit\w*)|"
        r"\breticula\w*|\bthicken\w*|\bpneumomediastinum\b|\bpneumoperitoneum\b|\belevat\w*|\beventration\b|"
        r"\bosteopeni\w*|\bmetasta\w*|\bhematoma\w*|\bhemorrhag\w*|\bdeformit\w*|\bvolume loss\b|\bbulla\w*|"
        r"\bblebs?\b|\baspiration\b|\bcontusion\w*|\bathero\w*|\btortu\w*|\bcavit\w*",
    ),
)

# Cues. "Pre-negation uncertainty" is checked first, then negation, then uncertainty (CheXpert's order).
_PRE_NEG_UNC_BEFORE = _rx(
    r"\b(?:cannot|can not|can't|could not|unable to|difficult to|not possible to)\s+(?:be\s+)?"
    r"(?:entirely\s+|completely\s+|definitely\s+|reliably\s+)?(?:exclude|rule\s+out)\b|\b(?:no|without)\s+new\b"
)
_PRE_NEG_UNC_AFTER = _rx(
    r"\b(?:cannot|can not|can't|could not|may not)\s+(?:be\s+)?(?:entirely\s+|completely\s+|definitely\s+|"
    r"reliably\s+)?(?:excluded|ruled\s+out|evaluated|assessed)\b|"
    r"\bnot\s+(?:been\s+)?(?:entirely\s+|completely\s+|definitely\s+)?(?:excluded|ruled\s+out)\b|"
    r"\bnot\s+(?:well|clearly)\s+(?:seen|visualized|evaluated|assessed|demonstrated)\b|"
    r"\bpoorly\s+(?:seen|visualized|evaluated|assessed)\b|\b(?:difficult|impossible) to (?:exclude|assess|evaluate)\b"
)
_NEG_BEFORE = _rx(
    r"\bno\b(?!\s+(?:significant\s+|interval\s+|appreciable\s+|substantial\s+|major\s+)?"
    r"(?:change|changes|increase|decrease|improvement|worsening|progression)\b)|"
    r"\bwithout\b(?!\s+(?:significant\s+|interval\s+)?change)|\bnot\b|\bnor\b|\bnever\b|\bnegative for\b|"
    r"\bfree of\b|\bclear of\b|\babsen(?:ce|t)\b|\brather than\b|\binstead of\b|\bhistory of\b|"
    r"\b(?:resolution|removal|clearing|withdrawal) of\b|\bresolved\b|\bremoved\b|\bexcluded\b|\bruled out\b"
)
_NEG_AFTER = _rx(
    r"\bnot\s+(?:definitely\s+|clearly\s+|currently\s+|otherwise\s+)?(?:seen|identified|present|visualized|"
    r"demonstrated|appreciated|evident|noted|detected|visible|enlarged|widened|apparent)\b|\bno\s+longer\b|"
    r"\b(?:resolved|cleared|removed|absent|excluded|ruled\s+out|withdrawn)\b|"
    r"\b(?:is|are|was|were|appears?|remains?|otherwise|now|looks?)\s+(?:otherwise\s+|now\s+|again\s+)?"
    r"(?:normal|unremarkable)\b|\bwithin\s+normal\s+limits\b|\bnegative\b"
)
_UNC_BEFORE = _rx(
    r"\b(?:may|might|could|possibl[ey]|probabl[ey]|questionabl[ey]|question of|suspect(?:ed|s)?|"
    r"suspicio(?:us|n)|concern(?:ing)?\s+(?:for|of)|worrisome|suggest\w*|differential|consider(?:ed|ation)?|"
    r"equivocal|indeterminate|presum\w*|borderline|less likely|unlikely|secondary to|correlat\w*|rule\s+out|"
    r"r/o|(?:evaluate|evaluation|assess|assessment|eval)\s+for|to exclude|query)\b"
)
_UNC_AFTER = _rx(
    r"\b(?:(?:may|might|could|can)(?:\s+(?:also|still|possibly))?\s+be\s+(?:present|seen|noted|visible|possible|"
    r"there|developing|considered)|(?:may|might|could)\s+(?:exist|persist|coexist|remain)|"
    r"(?:is|are|was|were|remains?|seems?|appears?)\s+(?:possible|probable|questionable|suspected|uncertain|"
    r"equivocal|indeterminate|less likely|unlikely|favou?red|considered)|suspected|questioned|less likely|unlikely)\b"
)
_UNC_CLAUSE = _rx(r"\b(?:versus|vs)\b|\?")

# Sentence structure: clause breaks end every cue's scope; list items extend it unless they start a new statement.
_CLAUSE_BREAK = _rx(
    r"[;:]|\b(?:but|however|although|though|whereas|except|aside from|apart from|other than|"
    r"which|while|besides)\b"
)
_SEPARATOR = _rx(r"\s*,\s*(?:(and/or|and|or|nor)\b\s*)?|\s+(and/or|and|or|nor)\s+")
_STATEMENT_START = _rx(
    r"(?:there|the|this|these|that|it|its|with|also|again|now|new|newly|increased|increasing|decreased|decreasing|"
    r"worsening|worsened|persistent|persisting|stable|unchanged|improved|improving|interval|small|large|moderate|"
    r"moderately|mild|mildly|minimal|minimally|severe|trace|tiny|possible|possibly|probable|probably|likely|may|"
    r"suspected|questionable|concerning|suspicious|consistent|compatible|left|right|bilateral|bibasilar|bibasal|"
    r"a|an)\b"
)
_OWN_PREDICATE = _rx(
    r"\b(?:is|are|was|were|has|have|had|remains?|appears?|seems?|measures?|demonstrates?|shows?)\b"
    r"(?!\s+(?:not\b|(?:(?:been|since|now|otherwise|also)\s+)*(?:resolved|cleared|removed|normal|unremarkable|"
    r"absent|within|ruled|excluded)\b))"
)
_PREDICATE = _rx(
    r"\b(?:is|are|was|were|be|been|being|has|have|had|remains?|appears?|seems?|seen|noted|identified|demonstrated|"
    r"present|persists?|resolved|cleared|removed|unchanged|stable|enlarged|normal|unremarkable|excluded|suspected|"
    r"possible|likely)\b"
)
_CHF = _rx(r"\b(?:chf|heart failure)\b")
_WORD = re.compile(r"\w")
_NON_WORD = re.compile(r"\W")
_SHORT_SPAN = 200
"""Cue scopes up to this many characters are searched directly (faster for the usual short sentence)."""


@dataclass(frozen=True)
class _Mention:
    label: int
    start: int
    end: int
    kind: str
    text: str


@dataclass(frozen=True)
class _Item:
    """A list item of a clause: ``start``/``end`` in the sentence, its clause, lead separator and continuation."""

    start: int
    end: int
    clause: int
    lead: str
    continues: bool


def _normalise(sentence: str) -> str:
    text = sentence.lower().replace("\u2019", "'")
    text = re.sub(r"[^a-z0-9,;:?/'\-.\s]", " ", text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)
    return re.sub(r"\s+", " ", text).strip()


def _mask(text: str, pattern: re.Pattern[str] | None) -> str:
    if pattern is None:
        return text
    return pattern.sub(lambda m: " " * len(m.group(0)), text)


def _find_mentions(text: str) -> list[_Mention]:
    """Every concept match, longest first (size/shape mentions last); a match overlapping a kept one of the same
    label is dropped. Overlap is looked up in a per-label map of covered characters, linear in ``text``."""
    candidates = [
        _Mention(c.label, m.start(), m.end(), c.kind, m.group(0))
        for c in _CONCEPTS
        for m in c.pattern.finditer(_mask(text, c.unmention))
    ]
    candidates.sort(key=lambda m: (m.kind in _ATTRIBUTES, -(m.end - m.start), m.start))
    covered = {label: bytearray(len(text)) for label in {m.label for m in candidates}}
    kept: list[_Mention] = []
    for m in candidates:
        cover = covered[m.label]
        if cover.find(1, m.start, m.end) < 0:
            cover[m.start : m.end] = b"\x01" * (m.end - m.start)
            kept.append(m)
    return sorted(kept, key=lambda m: m.start)


def _items(text: str) -> list[_Item]:
    bounds = [0]
    for m in _CLAUSE_BREAK.finditer(text):
        bounds += [m.start(), m.end()]
    bounds.append(len(text))
    items: list[_Item] = []
    for clause, (c_start, c_end) in enumerate(zip(bounds[::2], bounds[1::2])):
        pos, lead = c_start, ""
        for sep in [*_SEPARATOR.finditer(text, c_start, c_end), None]:
            stop = c_end if sep is None else sep.start()
            body = text[pos:stop].strip()
            if lead in ("or", "nor", "and/or"):
                continues = True
            elif lead in (",", "and"):
                continues = not _STATEMENT_START.match(body) and not _OWN_PREDICATE.search(body)
            else:
                continues = False
            items.append(_Item(pos, stop, clause, lead, continues))
            if sep is not None:
                pos, lead = sep.end(), (sep.group(1) or sep.group(2) or ",").lower()
    return items


_AT_ESCAPES = frozenset("bBAZ")
_CATEGORY_ESCAPES = frozenset("wWdDsS")
_CHAR_ESCAPES = {"a": "\a", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_QUANTIFIER = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")
_INLINE_FLAGS = frozenset("aiLmsux")
_UNBOUNDED = 1 << 32

# Parsed regex, the little that the reach needs: ("literal", char), ("class", can read a non-word character, is
# whitespace only), ("any",), ("at",), ("group", unwrappable (non-capturing, no flags), body), ("branch", bodies),
# ("assert", lookahead, negative, body), ("repeat", max, kind, atom), ("refuse", name); a body is a list of atoms.
_Atom = tuple[Any, ...]


class _RegexReader:
    """A recursive-descent reader of Python regex syntax (patterns that ``re.compile`` accepted), keeping per element
    only what ``_steps`` needs; constructs whose reach is never bounded are kept as ("refuse", name), named as
    ``re``'s own parser names them."""

    def __init__(self, pattern: str, verbose: bool) -> None:
        self.text, self.pos = pattern, 0
        self.verbose = verbose

    def _char(self) -> str:
        char = self.text[self.pos]
        self.pos += 1
        return char

    def _skip_verbose(self, verbose: bool) -> None:
        while verbose and self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\n\r\v\f":
                self.pos += 1
            elif char == "#":
                newline = self.text.find("\n", self.pos)
                self.pos = len(self.text) if newline < 0 else newline + 1
            else:
                return

    def alternation(self, verbose: bool) -> list[_Atom]:
        """Alternatives separated by ``|`` up to a ``)`` or the end: one body, or [("branch", bodies)]."""
        bodies = [self.sequence(verbose)]
        while self.pos < len(self.text) and self.text[self.pos] == "|":
            self.pos += 1
            bodies.append(self.sequence(verbose))
        return bodies[0] if len(bodies) == 1 else [("branch", bodies)]

    def sequence(self, verbose: bool) -> list[_Atom]:
        atoms: list[_Atom] = []
        while True:
            self._skip_verbose(verbose)
            if self.pos >= len(self.text) or self.text[self.pos] in "|)":
                # Non-capturing groups without flags are spliced into the sequence, as re's own parser does.
                return [a for atom in atoms for a in (atom[2] if atom[0] == "group" and atom[1] else [atom])]
            char = self.text[self.pos]
            if char in "*+?{":
                bound = self._quantifier()
                if bound is not None:
                    kind = "MAX_REPEAT"
                    if self.text.startswith("?", self.pos):
                        kind, self.pos = "MIN_REPEAT", self.pos + 1
                    elif self.text.startswith("+", self.pos):
                        kind, self.pos = "POSSESSIVE_REPEAT", self.pos + 1
                    atoms[-1] = ("repeat", bound, kind, atoms[-1])
                    continue
            atom = self._atom(verbose)
            if atom is not None:
                atoms.append(atom)

    def _quantifier(self) -> int | None:
        """The upper bound of the quantifier at the reading position (consumed), or None for a literal ``{``."""
        char = self.text[self.pos]
        if char in "*+?":
            self.pos += 1
            return 1 if char == "?" else _UNBOUNDED
        m = _QUANTIFIER.match(self.text, self.pos)
        if m is None or m.group(0) == "{}":
            return None
        self.pos = m.end()
        high = m.group(1) if m.group(2) is None else m.group(3)
        return int(high) if high else _UNBOUNDED

    def _atom(self, verbose: bool) -> _Atom | None:
        char = self._char()
        if char == "(":
            return self._group(verbose)
        if char == "[":
            return self._class()
        if char == ".":
            return ("any",)
        if char in "^$":
            return ("at",)
        if char == "\\":
            return self._escape()
        return ("literal", char)

    def _escape(self) -> _Atom:
        char = self._char()
        if char in _AT_ESCAPES:
            return ("at",)
        if char in _CATEGORY_ESCAPES:
            return ("class", char not in "wd", char == "s")
        if char.isdigit():
            octal = re.match(r"0[0-7]{0,2}|[0-7]{3}", self.text[self.pos - 1 : self.pos + 2])
            if octal is None:
                return ("refuse", "GROUPREF")
            self.pos += len(octal.group(0)) - 1
            return ("literal", chr(int(octal.group(0), 8)))
        return ("literal", self._escaped_char(char))

    def _escaped_char(self, char: str) -> str:
        """The character an escape other than a class or anchor escape stands for (``char`` read after the ``\\``)."""
        if char in _CHAR_ESCAPES:
            return _CHAR_ESCAPES[char]
        width = {"x": 2, "u": 4, "U": 8}.get(char)
        if width is not None:
            digits = self.text[self.pos : self.pos + width]
            self.pos += width
            return chr(int(digits, 16))
        if char == "N":
            close = self.text.index("}", self.pos)
            name = self.text[self.pos + 1 : close]
            self.pos = close + 1
            return unicodedata.lookup(name)
        return char

    def _class(self) -> _Atom:
        """A ``[...]`` class, after the ``[``: ("class", reads a non-word character, whitespace only)."""
        negate = self.text.startswith("^", self.pos)
        self.pos += negate
        reads_non_word, only_space, first = negate, not negate, True
        while True:
            if self.text.startswith("]", self.pos) and not first:
                self.pos += 1
                return ("class", reads_non_word, only_space)
            first = False
            low = self._class_char()
            if len(low) > 1:  # a category escape
                reads_non_word |= low[1] not in "wd"
                only_space &= low[1] == "s"
                continue
            only_space = False
            high = low
            if self.text.startswith("-", self.pos) and not self.text.startswith("-]", self.pos):
                self.pos += 1
                high = self._class_char()
            reads_non_word |= any(not _WORD.match(chr(c)) for c in range(ord(low), ord(high) + 1))

    def _class_char(self) -> str:
        """One member of a class: a character, or a category escape as ``\\w`` (two characters)."""
        char = self._char()
        if char != "\\":
            return char
        escaped = self._char()
        if escaped in _CATEGORY_ESCAPES:
            return char + escaped
        if escaped in "01234567":
            octal = re.match(r"[0-7]{1,3}", self.text[self.pos - 1 : self.pos + 2])
            assert octal is not None
            self.pos += len(octal.group(0)) - 1
            return chr(int(octal.group(0), 8))
        return "\b" if escaped == "b" else self._escaped_char(escaped)

    def _group(self, verbose: bool) -> _Atom | None:
        """A group, after the ``(``: ("group", ...), ("assert", ...), ("refuse", name), or None for a comment or
        leading global flags."""
        capturing, flagged = True, False
        if self.text.startswith("?", self.pos):
            self.pos += 1
            kind = self._char()
            if kind == "#":
                self.pos = self.text.index(")", self.pos) + 1
                return None
            if kind in "=!" or (kind == "<" and self.text[self.pos] in "=!"):
                lookahead = kind != "<"
                negative = (kind if lookahead else self._char()) == "!"
                body = self.alternation(verbose)
                self.pos += 1
                return ("assert", lookahead, negative, body)
            if kind == "P" and self.text.startswith("=", self.pos):
                self.pos = self.text.index(")", self.pos) + 1
                return ("refuse", "GROUPREF")
            if kind == "(":
                self.pos = self.text.index(")", self.pos) + 1
                self.alternation(verbose)
                self.pos += 1
                return ("refuse", "GROUPREF_EXISTS")
            if kind == ">":
                self.alternation(verbose)
                self.pos += 1
                return ("refuse", "ATOMIC_GROUP")
            if kind in "P<":
                self.pos = self.text.index(">", self.pos) + 1
            elif kind == ":":
                capturing = False
            else:  # flags: (?aiLmsux) for the whole pattern, or (?flags-flags:...) for a group
                start = self.pos - 1
                while self.text[self.pos] not in ":)":
                    self.pos += 1
                flags = self.text[start : self.pos]
                if self._char() == ")":
                    return None
                capturing, flagged = False, True
                on, _, off = flags.partition("-")
                verbose = (verbose or "x" in on) and "x" not in off
        body = self.alternation(verbose)
        self.pos += 1
        return ("group", not capturing and not flagged, body)


def _body_steps(body: list[_Atom]) -> int:
    """The most non-word characters one path through a parsed regex consumes, lookaheads included; a repeat of
    whitespace counts once (normalised text never holds two whitespace characters in a row)."""
    return sum(_atom_steps(atom) for atom in body)


def _atom_steps(atom: _Atom) -> int:
    kind = atom[0]
    if kind == "literal":
        return _WORD.match(atom[1]) is None
    if kind == "class":
        return int(atom[1])
    if kind == "any":
        return 1
    if kind == "at":
        return 0
    if kind == "group":
        return _body_steps(atom[2])
    if kind == "branch":
        return max(_body_steps(body) for body in atom[1])
    if kind == "assert":
        if atom[1]:
            return _body_steps(atom[3])
        name = "ASSERT_NOT" if atom[2] else "ASSERT"
    elif kind == "repeat":
        _, bound, name, inner = atom
        # A quantified non-capturing group without flags repeats its body, as re's own parser has it.
        body = inner[2] if inner[0] == "group" and inner[1] else [inner]
        only_space = len(body) == 1 and body[0][0] == "class" and body[0][2]
        if name != "POSSESSIVE_REPEAT" and (bound <= 1 or only_space or not _body_steps(body)):
            return _body_steps(body)
    else:
        name = atom[1]
    raise ValueError(f"scope pattern {name} element has no bounded reach")


@functools.cache
def _reach(pattern: re.Pattern[str]) -> int:
    """How many non-word characters one match attempt of a scope ``pattern`` can step over."""
    reader = _RegexReader(pattern.pattern, bool(pattern.flags & re.VERBOSE))
    body = reader.alternation(reader.verbose)
    return _body_steps(body)


@dataclass
class _PatternIndex:
    """One scope pattern over one sentence: its reach, where it matches in the whole text, memoised span checks."""

    pattern: re.Pattern[str]  # held, so that the id() it is filed under stays its own
    reach: int
    starts: list[int]
    first: dict[tuple[int, int], bool]
    tail: dict[tuple[int, int], bool]


class _Spans:
    """``bool(pattern.search(text[start:end]))`` for the many cue scopes of one normalised sentence, in amortised
    O(log n) each instead of O(end - start), so that labelling stays linear in the sentence's length.

    A match attempt at position p reads nothing past its horizon, the (``_reach`` + 1)-th non-word character from p
    on. An attempt inside the span whose horizon lies before ``end`` thus succeeds exactly when it does in the
    whole text (a sorted list of those positions, found once per pattern); only the span's first position (where a
    slice has its own word boundary) and the attempts near ``end`` run on the span, over a few words.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self._indexes: dict[int, _PatternIndex] = {}  # by id(): hashing a compiled pattern hashes its whole code

    @functools.cached_property
    def _breaks(self) -> list[int]:
        """Positions of the non-word characters, in order."""
        return [m.start() for m in _NON_WORD.finditer(self.text)]

    def search(self, pattern: re.Pattern[str], start: int, end: int) -> bool:
        """Whether ``pattern`` matches somewhere in ``text[start:end]``."""
        if end - start <= _SHORT_SPAN:
            return pattern.search(self.text[start:end]) is not None
        index = self._indexes.get(id(pattern)) or self._index(pattern)
        breaks = self._breaks
        k = bisect_left(breaks, start) + index.reach
        stop = breaks[k] + 1 if k < len(breaks) and breaks[k] < end else end
        found = index.first.get((start, stop))
        if found is None:
            found = index.first[start, stop] = pattern.match(self.text[start:stop]) is not None
        if found:
            return True
        k = bisect_left(breaks, end) - index.reach
        tail = max(start + 1, breaks[k - 1] + 1 if k > 0 else 0)
        i = bisect_right(index.starts, start)
        if i < len(index.starts) and index.starts[i] < tail:
            return True
        found = index.tail.get((tail, end))
        if found is None:
            found = index.tail[tail, end] = pattern.search(self.text, tail, end) is not None
        return found

    def _index(self, pattern: re.Pattern[str]) -> _PatternIndex:
        starts, m = [], pattern.search(self.text)
        while m:
            starts.append(m.start())
            m = pattern.search(self.text, m.start() + 1)
        index = self._indexes[id(pattern)] = _PatternIndex(pattern, _reach(pattern), starts, {}, {})
        return index


_Span = tuple[int, int]


def _links(text: str, items: list[_Item]) -> tuple[list[int], list[int]]:
    """Per item: the first item of its run of continuing list items (cues before that run do not reach it), and
    where a cue after a mention in it stops when the rest of the item has no verb: through the continuing items
    that follow in its clause, up to and including the first with a verb."""
    run: list[int] = []
    for k, item in enumerate(items):
        run.append(run[k - 1] if item.continues else k)
    scope_end = [item.end for item in items]
    for k in range(len(items) - 2, -1, -1):
        nxt = items[k + 1]
        if nxt.clause == items[k].clause and nxt.continues:
            scope_end[k] = nxt.end if _PREDICATE.search(text[nxt.start : nxt.end]) else scope_end[k + 1]
    return run, scope_end


def _scopes(
    spans: _Spans, items: list[_Item], links: tuple[list[int], list[int]], k: int, m: _Mention
) -> tuple[_Span, _Span, _Span]:
    """(cue scope before the mention, the mention's own item before it, cue scope after it) as text spans."""
    run, scope_end = links
    end = items[k].end if spans.search(_PREDICATE, m.end, items[k].end) else scope_end[k]
    return (items[run[k]].start, m.start), (items[k].start, m.start), (m.end, end)


def _or_linked(spans: _Spans, items: list[_Item], k: int, m: _Mention, by_item: dict[int, list[_Mention]]) -> bool:
    """Whether mention ``m`` (in item ``k``) is one side of "X or Y" with Y another finding: the mention nearest
    to the "or" on its side, with no verb in between."""
    item = items[k]
    if (
        item.lead in ("or", "and/or")
        and k - 1 in by_item
        and items[k - 1].clause == item.clause
        and by_item[k][0] is m
        and not spans.search(_PREDICATE, item.start, m.start)
    ):
        return True
    return (
        k + 1 < len(items)
        and items[k + 1].lead in ("or", "and/or")
        and k + 1 in by_item
        and items[k + 1].clause == item.clause
        and by_item[k][-1] is m
        and not spans.search(_PREDICATE, m.end, item.end)
    )


def _classify(
    m: _Mention, spans: _Spans, before: _Span, own_before: _Span, after: _Span, clause_uncertain: bool, or_linked: bool
) -> int | None:
    """A mention's status (1, 0, -1), or None for a size/shape mention without any qualifier."""

    def has(pattern: re.Pattern[str], span: _Span) -> bool:
        return spans.search(pattern, *span)

    if has(_PRE_NEG_UNC_BEFORE, before) or has(_PRE_NEG_UNC_AFTER, after):
        return UNCERTAIN
    negated = has(_NEG_BEFORE, before) or has(_NEG_AFTER, after)
    if m.kind in _ATTRIBUTES:
        q = _ATTRIBUTES[m.kind]
        if negated or has(q.negative, own_before) or has(q.negative, after):
            return NEGATIVE
        if not (has(q.positive, own_before) or has(q.positive, after)):
            return UNCERTAIN if (has(q.uncertain, own_before) or has(q.uncertain, after)) else None
        if has(_UNC_BEFORE, after):
            return UNCERTAIN
    elif negated:
        return NEGATIVE
    if has(_UNC_BEFORE, before) or has(_UNC_AFTER, after) or clause_uncertain or or_linked:
        return UNCERTAIN
    return UNCERTAIN if m.kind == "hedged" else POSITIVE


def _sentence_mentions(sentence: str) -> dict[int, list[int]]:
    """Statuses of every finding mentioned in one sentence, keyed by label slot (``_OTHER`` for the rest)."""
    text = _normalise(sentence)
    mentions = _find_mentions(text)
    if not mentions:
        return {}
    items = _items(text)
    spans = _Spans(text)
    links = _links(text, items)
    item_starts = [it.start for it in items]
    item_of = [bisect_right(item_starts, m.start) - 1 for m in mentions]
    by_item: dict[int, list[_Mention]] = {}
    for m, k in zip(mentions, item_of):
        by_item.setdefault(k, []).append(m)
    clause_parts: dict[int, list[str]] = {}
    for it in items:
        clause_parts.setdefault(it.clause, []).append(" " + text[it.start : it.end])
    clause_uncertain = {c: bool(_UNC_CLAUSE.search("".join(parts))) for c, parts in clause_parts.items()}
    found: dict[int, list[int]] = {}
    for m, k in zip(mentions, item_of):
        before, own_before, after = _scopes(spans, items, links, k, m)
        status = _classify(
            m,
            spans,
            before,
            own_before,
            after,
            clause_uncertain[items[k].clause],
            _or_linked(spans, items, k, m, by_item),
        )
        if status is None:
            continue
        found.setdefault(m.label, []).append(status)
        if m.label == _L["Edema"] and status != NEGATIVE and _CHF.search(m.text):
            found.setdefault(_L["Cardiomegaly"], []).append(UNCERTAIN)
    return found


def _combine(statuses: list[int]) -> int:
    """CheXpert's aggregation of several mentions of one finding: positive > uncertain > negative."""
    if POSITIVE in statuses:
        return POSITIVE
    return UNCERTAIN if UNCERTAIN in statuses else NEGATIVE


def _to_vector(found: dict[int, list[int]]) -> np.ndarray:
    vec = np.zeros(NUM_LABELS, dtype=np.float32)
    for slot, statuses in found.items():
        if slot >= 0:
            vec[slot] = _combine(statuses)
    finding = any(
        s in (POSITIVE, UNCERTAIN)
        for slot, statuses in found.items()
        if slot != _L["Support Devices"]
        for s in statuses
    )
    vec[_L["No Finding"]] = 0.0 if finding else 1.0
    return vec


# ----- sentences and sections -----

_KNOWN_HEADERS = (
    r"final report|findings?|impressions?|indications?|clinical indications?|history|clinical history|"
    r"clinical information|comparisons?|technique|examination|exam|procedure|reason for (?:exam|examination|study)|"
    r"conclusions?|recommendations?|notification|wet read|addendum|type of examination"
)
_HEADER = re.compile(
    rf"(?i:\b(?:{_KNOWN_HEADERS})\s*:)|\b[A-Z][A-Z]+(?: [A-Z]+)*\s*:(?=\s|$)|(?m:^\s*FINAL REPORT\s*$)"
    r"|(?P<skip>\b[A-Z][A-Z]+(?: [A-Z]+)*(?=(?: [A-Z]+){8})|(?m:^\s+))"
)
"""Section headers. A ``skip`` match is none: where no header starts at an all-caps run or a blank line, it jumps
over the run (but its last 8 words, more than any known header has) or the blank lines, where none can start
either, so that the scan stays linear instead of retrying every word or line of them."""
_SENTENCE_END = re.compile(r"(?<![.!?])[.!?]+(?=\s+(\S))")
_WORD_RUN = re.compile(r"[\w.]+")
_TRAILING = re.compile(r"(?<![\s.])[\s.]+$")
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "e.g", "i.e", "approx", "st", "fig"}
_DEID = re.compile(r"\bX{2,}\b|_{2,}")
"""De-identification placeholders (Open-i "XXXX", MIMIC "___"): a sentence of only these is dropped."""
_FINDING_SECTIONS = re.compile(r"^(?:findings?|impressions?|conclusions?)$", re.IGNORECASE)


def _headers(report: str) -> list[re.Match[str]]:
    """The section headers of a report, in order."""
    return [h for h in _HEADER.finditer(report) if h.lastgroup != "skip"]


def split_sentences(report: str) -> list[str]:
    """Split a report into sentences: on . ! ? (not decimals or abbreviations), blank lines, numbered items and
    section headers; headers, list numbers and trailing periods are stripped, whitespace collapsed."""
    text = _HEADER.sub(
        lambda h: h.group(0) if h.lastgroup == "skip" else "\n\n", report.replace("\r\n", "\n").replace("\r", "\n")
    )
    paragraphs = re.split(r"\n\s*\n|\n\s*(?=(?:\d+[.)]|[-*\u2022])\s)", text)
    out: list[str] = []
    for para in paragraphs:
        para = re.sub(r"\s+", " ", para).strip()
        backwards = para[::-1]  # the word before a period is matched backwards: linear however long the sentence
        has_upper = any(ch.isupper() for ch in para)
        start = 0
        for m in _SENTENCE_END.finditer(para):
            if m.group(0) == ".":
                word = _WORD_RUN.match(backwards, len(para) - m.start(), len(para) - start)
                if word and word.group(0)[::-1].lower() in _ABBREVIATIONS:
                    continue
            if has_upper and m.group(1).islower():
                continue
            out.append(para[start : m.end()])
            start = m.end()
        out.append(para[start:])
    cleaned = []
    for s in out:
        s = re.sub(r"^\s*(?:\d+[.)]|[-*\u2022])\s+", "", s)
        s = _TRAILING.sub("", s).strip()
        if re.search(r"[A-Za-z]", _DEID.sub(" ", s)):
            cleaned.append(s)
    return cleaned


def extract_findings(report: str) -> str:
    """The FINDINGS / IMPRESSION / CONCLUSION sections of a report, or the whole report if it has none of them."""
    headers = _headers(report)
    keep = []
    for h, nxt in zip(headers, [*headers[1:], None]):
        name = re.sub(r"\s*:\s*$", "", h.group(0)).strip()
        if _FINDING_SECTIONS.match(name):
            keep.append(report[h.end() : nxt.start() if nxt else len(report)])
    return "\n\n".join(keep) if keep else report


def label_sentence(sentence: str) -> np.ndarray:
    """The (14,) float32 CheXpert label vector (1 positive, 0 negative/unmentioned, -1 uncertain) of one sentence."""
    return _to_vector(_sentence_mentions(sentence))


def label_report(report: str) -> list[tuple[str, np.ndarray]]:
    """Every sentence of ``report`` with its (14,) label vector, in order."""
    return [(s, label_sentence(s)) for s in split_sentences(report)]


def report_labels(report: str) -> np.ndarray:
    """One (14,) label vector for a whole report, mentions combined across sentences as CheXpert does."""
    found: dict[int, list[int]] = {}
    for s in split_sentences(report):
        for slot, statuses in _sentence_mentions(s).items():
            found.setdefault(slot, []).extend(statuses)
    return _to_vector(found)


def sentence_labels(reports: Iterable[str], findings_only: bool = True) -> tuple[list[str], np.ndarray]:
    """Distinct sentences (first spelling of each, compared case-insensitively) of ``reports`` and their (M, 14)
    labels; ``findings_only`` keeps only FINDINGS/IMPRESSION sections of reports that have such headers."""
    seen: set[str] = set()
    sentences: list[str] = []
    rows: list[np.ndarray] = []
    for report in reports:
        text = extract_findings(report) if findings_only else report
        for sentence in split_sentences(text):
            key = sentence.lower()
            if key not in seen:
                seen.add(key)
                sentences.append(sentence)
                rows.append(label_sentence(sentence))
    return sentences, np.stack(rows) if rows else np.zeros((0, NUM_LABELS), dtype=np.float32)
