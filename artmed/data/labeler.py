"""CheXpert-style rule labeler: radiology report text -> sentence-level 14-d labels (1, 0, -1), pure Python.

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
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.label_table import open_text

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
        negative=_rx(r"\b(?:normal|unremarkable|within normal limits|not (?:\w+ )?enlarged|top[- ]normal|"
                     r"upper (?:limits?|range) of normal|upper normal)\b"),
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
    _concept("Enlarged Cardiomediastinum",
             r"\bwiden(?:ed|ing) (?:of (?:the )?)?(?:superior )?mediastin\w*|\bmediastinal (?:widening|enlargement)|"
             r"\benlarged cardiomediastin\w*|\bcardiomediastinal enlargement|\bwide mediastinum"),
    _concept("Enlarged Cardiomediastinum",
             r"\bcardiomediastinal(?: (?:silhouettes?|contours?|size|shadow|structures|width))?\b|"
             r"\bmediastinal (?:silhouettes?|contours?|configuration|structures|width|shadow)\b|\bmediastinum\b",
             kind="mediastinum"),
    _concept("Cardiomegaly",
             r"\bcardiomegaly\b|\benlarged (?:heart|cardiac silhouette)\b|\bcardiac enlargement\b|"
             r"\benlargement of the (?:heart|cardiac silhouette)\b"),
    _concept("Cardiomegaly",
             r"\bheart(?: size)?\b|\bcardiac (?:silhouette|size|shadow|contours?)\b|\bsize of the heart\b",
             kind="heart", unmention=r"\bheart (?:failure|borders?|valves?|rate)\b|\b(?:left|right) heart\b"),
    _concept("Lung Lesion",
             r"\bnodul\w*|\bmass(?:es)?\b|\blesions?\b|\btumou?rs?\b|\bneoplas\w*|\bcarcinoma\w*|\bmalignan\w*|"
             r"\bcancers?\b", unmention=r"\bmass effect\b"),
    _concept("Lung Opacity",
             r"\bopaci\w*|\binfiltrat\w*|\bair[- ]?space (?:disease|process|opacit\w*)|\bhaz(?:e|iness|y)\b|"
             r"\bdensit(?:y|ies)\b", unmention=r"\bbone densit\w*"),
    _concept("Edema",
             r"\b(?:o)?edema\w*|\bfluid overload\b|\bheart failure\b|\bchf\b|\bkerley\b",
             unmention=r"\b(?:soft tissue|subcutaneous|(?:chest )?wall) (?:o)?edema\b"),
    _concept("Edema",
             r"\b(?:vascular|pulmonary|venous|interstitial) (?:congestion|engorgement|prominence|redistribution)\b|"
             r"\bcongestion\b|\bcephalization\b|\bindistinct(?:ness)?\b", kind="hedged"),
    _concept("Consolidation", r"\bconsolidat\w*"),
    _concept("Pneumonia", r"\b(?:broncho)?pneumonias?\b|\binfections?\b|\binfectious\b|\binfective\b"),
    _concept("Atelectasis", r"\batelecta\w*|\bcollapsed?\b",
             unmention=r"\b(?:vertebral|compression|vertebral body) collapse\b"),
    _concept("Pneumothorax", r"pneumothora(?:x|ces)\b|\bptx\b"),
    _concept("Pleural Effusion",
             r"\beffusions?\b|\bpleural fluid\b|\bhydrothorax\b|\bhydropneumothora(?:x|ces)\b|"
             r"\bfluid in the (?:pleural space|fissures?)\b|\bloculated fluid\b|\bempyema\b",
             unmention=r"\b(?:pericardial|joint) effusions?\b"),
    _concept("Pleural Effusion", r"\b(?:costophrenic|cp) (?:angles?|sulc(?:us|i))\b", kind="costophrenic"),
    _concept("Pleural Other",
             r"\bpleural (?:thickening|plaques?|scar\w*|calcification\w*|abnormalit\w*|reaction)\b|\bfibrothorax\b|"
             r"\bapical (?:pleural )?(?:cap|capping|thickening)\b|\bpleuro-?parenchymal (?:scar\w*|thickening)\b"),
    _concept("Fracture", r"\bfractur\w*|\bfx\b"),
    _concept("Support Devices",
             r"\btubes?\b|\bcatheters?\b|\bpace(?:maker|r)s?\b|\bwires?\b|\bpicc\b|\bports?\b|\bport-?a-?cath\b|"
             r"\bett?\b|\bngt\b|\bogt\b|\bintubat\w*|\btracheostomy\b|\bdrains?\b|\bstents?\b|\bclips?\b|"
             r"\bdefibrillators?\b|\ba?icd\b|\bdevices?\b|\bhardware\b|\bprosthe\w*|\bvalve replacement\b|"
             r"\bswan[- ]ganz\b|\belectrodes?\b|\b(?:pacer|pacing|pacemaker|icd|defibrillator) leads?\b|\blines?\b",
             unmention=r"\b(?:pleural|septal|kerley b|b|skin ?fold|fissural|paraspinal|paratracheal|azygoesophageal|"
                       r"mach|fine|reticular) lines?\b|\blines? of\b"),
    _concept(_OTHER,
             r"\bemphysem\w*|\bhyperinflat\w*|\bhyperexpan\w*|\bcopd\b|\bscolio\w*|\bkyphos\w*|\bdegenerat\w*|"
             r"\bspondylo\w*|\bosteophyt\w*|\bcalcifi\w*|\bgranulom\w*|\bhernia\w*|\bbronchiectas\w*|\bfibros\w*|"
             r"\bfibrotic\b|\bscar(?:s|ring|red)?\b|\binterstitial (?:lung disease|markings|abnormalit\w*)|"
             r"\breticula\w*|\bthicken\w*|\bpneumomediastinum\b|\bpneumoperitoneum\b|\belevat\w*|\beventration\b|"
             r"\bosteopeni\w*|\bmetasta\w*|\bhematoma\w*|\bhemorrhag\w*|\bdeformit\w*|\bvolume loss\b|\bbulla\w*|"
             r"\bblebs?\b|\baspiration\b|\bcontusion\w*|\bathero\w*|\btortu\w*|\bcavit\w*"),
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
_CLAUSE_BREAK = _rx(r"[;:]|\b(?:but|however|although|though|whereas|except|aside from|apart from|other than|"
                    r"which|while|besides)\b")
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
    candidates = [
        _Mention(c.label, m.start(), m.end(), c.kind, m.group(0))
        for c in _CONCEPTS
        for m in c.pattern.finditer(_mask(text, c.unmention))
    ]
    candidates.sort(key=lambda m: (m.kind in _ATTRIBUTES, -(m.end - m.start), m.start))
    kept: list[_Mention] = []
    for m in candidates:
        if not any(k.label == m.label and k.start < m.end and m.start < k.end for k in kept):
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


def _scopes(text: str, items: list[_Item], k: int, m: _Mention) -> tuple[str, str, str]:
    """(cue scope before the mention, the mention's own item before it, cue scope after it)."""
    j = k
    while items[j].continues:
        j -= 1
    before = text[items[j].start:m.start]
    own_before = text[items[k].start:m.start]
    end = items[k].end
    if not _PREDICATE.search(text[m.end:end]):
        for nxt in items[k + 1:]:
            if nxt.clause != items[k].clause or not nxt.continues:
                break
            end = nxt.end
            if _PREDICATE.search(text[nxt.start:nxt.end]):
                break
    return before, own_before, text[m.end:end]


def _or_linked(text: str, items: list[_Item], k: int, m: _Mention, by_item: dict[int, list[_Mention]]) -> bool:
    """Whether mention ``m`` (in item ``k``) is one side of "X or Y" with Y another finding: the mention nearest
    to the "or" on its side, with no verb in between."""
    item = items[k]
    if (item.lead in ("or", "and/or") and k - 1 in by_item and items[k - 1].clause == item.clause
            and by_item[k][0] is m and not _PREDICATE.search(text[item.start:m.start])):
        return True
    return (k + 1 < len(items) and items[k + 1].lead in ("or", "and/or") and k + 1 in by_item
            and items[k + 1].clause == item.clause and by_item[k][-1] is m
            and not _PREDICATE.search(text[m.end:item.end]))


def _classify(m: _Mention, before: str, own_before: str, after: str, clause: str, or_linked: bool) -> int | None:
    """A mention's status (1, 0, -1), or None for a size/shape mention without any qualifier."""
    if _PRE_NEG_UNC_BEFORE.search(before) or _PRE_NEG_UNC_AFTER.search(after):
        return UNCERTAIN
    negated = bool(_NEG_BEFORE.search(before) or _NEG_AFTER.search(after))
    if m.kind in _ATTRIBUTES:
        q = _ATTRIBUTES[m.kind]
        if negated or q.negative.search(own_before) or q.negative.search(after):
            return NEGATIVE
        if not (q.positive.search(own_before) or q.positive.search(after)):
            return UNCERTAIN if (q.uncertain.search(own_before) or q.uncertain.search(after)) else None
        if _UNC_BEFORE.search(after):
            return UNCERTAIN
    elif negated:
        return NEGATIVE
    if _UNC_BEFORE.search(before) or _UNC_AFTER.search(after) or _UNC_CLAUSE.search(clause) or or_linked:
        return UNCERTAIN
    return UNCERTAIN if m.kind == "hedged" else POSITIVE


def _sentence_mentions(sentence: str) -> dict[int, list[int]]:
    """Statuses of every finding mentioned in one sentence, keyed by label slot (``_OTHER`` for the rest)."""
    text = _normalise(sentence)
    mentions = _find_mentions(text)
    if not mentions:
        return {}
    items = _items(text)
    item_of = [max(k for k, it in enumerate(items) if it.start <= m.start) for m in mentions]
    by_item: dict[int, list[_Mention]] = {}
    for m, k in zip(mentions, item_of):
        by_item.setdefault(k, []).append(m)
    clause_text: dict[int, str] = {}
    for it in items:
        clause_text[it.clause] = clause_text.get(it.clause, "") + " " + text[it.start:it.end]
    found: dict[int, list[int]] = {}
    for m, k in zip(mentions, item_of):
        before, own_before, after = _scopes(text, items, k, m)
        status = _classify(m, before, own_before, after, clause_text[items[k].clause],
                           _or_linked(text, items, k, m, by_item))
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
    finding = any(s in (POSITIVE, UNCERTAIN) for slot, statuses in found.items()
                  if slot != _L["Support Devices"] for s in statuses)
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
)
_ABBREVIATIONS = {"dr", "mr", "mrs", "ms", "vs", "e.g", "i.e", "approx", "st", "fig"}
_DEID = re.compile(r"\bX{2,}\b|_{2,}")
"""De-identification placeholders (Open-i "XXXX", MIMIC "___"): a sentence of only these is dropped."""
_FINDING_SECTIONS = re.compile(r"^(?:findings?|impressions?|conclusions?)$", re.IGNORECASE)


def split_sentences(report: str) -> list[str]:
    """Split a report into sentences: on . ! ? (not decimals or abbreviations), blank lines, numbered items and
    section headers; headers, list numbers and trailing periods are stripped, whitespace collapsed."""
    text = _HEADER.sub("\n\n", report.replace("\r\n", "\n").replace("\r", "\n"))
    paragraphs = re.split(r"\n\s*\n|\n\s*(?=(?:\d+[.)]|[-*\u2022])\s)", text)
    out: list[str] = []
    for para in paragraphs:
        para = re.sub(r"\s+", " ", para).strip()
        has_upper = any(ch.isupper() for ch in para)
        start = 0
        for m in re.finditer(r"[.!?]+(?=\s+(\S))", para):
            word = re.search(r"([\w.]+)$", para[start:m.start()])
            if m.group(0) == "." and word and word.group(1).lower() in _ABBREVIATIONS:
                continue
            if has_upper and m.group(1).islower():
                continue
            out.append(para[start:m.end()])
            start = m.end()
        out.append(para[start:])
    cleaned = []
    for s in out:
        s = re.sub(r"^\s*(?:\d+[.)]|[-*\u2022])\s+", "", s)
        s = re.sub(r"[\s.]+$", "", s).strip()
        if re.search(r"[A-Za-z]", _DEID.sub(" ", s)):
            cleaned.append(s)
    return cleaned


def extract_findings(report: str) -> str:
    """The FINDINGS / IMPRESSION / CONCLUSION sections of a report, or the whole report if it has none of them."""
    headers = list(_HEADER.finditer(report))
    keep = []
    for h, nxt in zip(headers, [*headers[1:], None]):
        name = re.sub(r"\s*:\s*$", "", h.group(0)).strip()
        if _FINDING_SECTIONS.match(name):
            keep.append(report[h.end():nxt.start() if nxt else len(report)])
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


# ----- sentence-label.csv -----

_REPORT_COLUMNS = ("report", "reports", "text", "findings", "impression")


def _report_columns(fieldnames: Sequence[str], column: str | None, path: Path) -> list[str]:
    if column is not None:
        if column not in fieldnames:
            raise ValueError(f"{path}: no column {column!r}; columns are {list(fieldnames)}")
        return [column]
    lower = {name.strip().lower(): name for name in fieldnames}
    for name in ("report", "reports", "text"):
        if name in lower:
            return [lower[name]]
    found = [lower[name] for name in ("findings", "impression") if name in lower]
    if not found:
        raise ValueError(f"{path}: no report column (looked for {', '.join(_REPORT_COLUMNS)}, any case); "
                         f"columns are {list(fieldnames)}")
    return found


def iter_reports(source: str | Path, column: str | None = None) -> Iterator[str]:
    """Report texts from a folder of .txt files (recursive, sorted), one .txt file, or a CSV (.csv/.csv.gz) with a
    report column (autodetected: report, Reports, text, or findings + impression; or ``column``)."""
    path = Path(source)
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise ValueError(f"{path}: folder holds no .txt reports")
        for f in tqdm(files, desc="reports", leave=False):
            yield f.read_text(encoding="utf-8", errors="replace")
    elif not path.exists():
        raise ValueError(f"report source {str(path)!r} does not exist")
    elif path.suffix.lower() == ".txt":
        yield path.read_text(encoding="utf-8", errors="replace")
    elif path.name.lower().endswith((".csv", ".csv.gz")):
        csv.field_size_limit(2**31 - 1)
        with open_text(path) as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames:
                raise ValueError(f"{path}: CSV has no header row")
            cols = _report_columns(reader.fieldnames, column, path)
            for row in tqdm(reader, desc="reports", leave=False):
                yield "\n\n".join(row[c] for c in cols if row.get(c))
    else:
        raise ValueError(f"{path}: expected a folder of .txt reports, a .txt file or a .csv file")


def write_sentence_labels(source: str | Path, out_csv: str | Path, column: str | None = None,
                          findings_only: bool = True) -> int:
    """Label every sentence of the reports in ``source`` and write MedCLIP's ``sentence-label.csv`` (``Reports`` +
    the 14 labels, sentences de-duplicated case-insensitively); return the number of rows written.

    ``findings_only``: keep only the FINDINGS/IMPRESSION sections of reports that have such headers.
    """
    sentences, labels = sentence_labels(iter_reports(source, column), findings_only)
    out = Path(out_csv)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Reports", *CHEXPERT_LABELS])
        writer.writerows([s, *(int(v) for v in row)] for s, row in zip(sentences, labels))
    return len(sentences)


def main(argv: Sequence[str] | None = None) -> int:
    """``artmed label SRC OUT.csv``: write MedCLIP's sentence-label.csv from a report folder or CSV."""
    parser = argparse.ArgumentParser(
        prog="artmed label",
        description="Label report sentences with CheXpert-style rules and write MedCLIP's sentence-label.csv.")
    parser.add_argument("source", help="folder of .txt reports (searched recursively) or a CSV with a report column")
    parser.add_argument("out_csv", help="output CSV (Reports + the 14 CheXpert labels)")
    parser.add_argument("--column", default=None, help="report column of a CSV source (default: autodetect)")
    parser.add_argument("--all-sections", action="store_true",
                        help="label every section, not only FINDINGS/IMPRESSION when a report has those headers")
    args = parser.parse_args(argv)
    try:
        n = write_sentence_labels(args.source, args.out_csv, column=args.column, findings_only=not args.all_sections)
    except (ValueError, OSError) as exc:
        print(f"artmed label: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {n} labelled sentences to {args.out_csv}")
    return 0
