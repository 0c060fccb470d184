"""Our own report-sentence generator: the unpaired text side of the built-in data, each sentence with its labels.

Sentences combine a finding vocabulary (severity x finding x location) with positive, uncertain ("possible",
"cannot be excluded": -1) and negated ("no", "without": 0) frames, plus normal statements. Labels follow the
CheXpert convention also used by `artmed.data.labeler`: No Finding is 1 exactly when no finding other than
Support Devices is positive or uncertain (so "no pleural effusion" and "the lungs are clear" are No Finding).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from itertools import product

import numpy as np

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.dataset import TextPool

COUNT, MASS, PLURAL = "count", "mass", "plural"


@dataclass(frozen=True)
class Noun:
    """A finding's noun phrase and its grammar: countable (takes a/an), mass or plural (take no article)."""

    text: str
    kind: str = MASS
    graded: bool = True  # takes a severity word ("moderate cardiomegaly", but not "moderate enlarged heart")
    located: bool = True  # takes a location phrase


@dataclass(frozen=True)
class FindingVocab:
    """How reports talk about one finding: nouns, fitting severities and locations, and fixed statements."""

    nouns: tuple[Noun, ...]
    severities: tuple[str, ...]
    locations: tuple[str, ...]
    statements: tuple[str, ...] = ()
    uncertain_modifiers: tuple[str, ...] = ("",)
    uncertain_statements: tuple[str, ...] = ()
    negations: tuple[str, ...] = ()
    negative_statements: tuple[str, ...] = ()


_RIGHT_LEFT_ZONES = (
    "in the right upper lobe",
    "in the right middle lobe",
    "in the right lower lobe",
    "in the left upper lobe",
    "in the left lower lobe",
    "in the lingula",
    "at the right base",
    "at the left base",
    "in the right mid lung",
    "in the left mid lung",
)
_SIDES = ("on the right", "on the left")

VOCABULARY: dict[str, FindingVocab] = {
    "Enlarged Cardiomediastinum": FindingVocab(
        nouns=(
            Noun("widening of the mediastinum"),
            Noun("mediastinal widening"),
            Noun("widened mediastinum", COUNT, graded=False),
            Noun("enlarged cardiomediastinal silhouette", COUNT, graded=False),
        ),
        severities=("", "mild", "moderate", "marked"),
        locations=("",),
        statements=(
            "The mediastinum is widened.",
            "The superior mediastinum appears widened.",
            "The cardiomediastinal silhouette is enlarged.",
            "The mediastinal contour is widened.",
            "The mediastinum is mildly widened.",
            "The mediastinum is markedly widened.",
        ),
        uncertain_modifiers=("", "mild"),
        negations=("mediastinal widening", "widening of the mediastinum"),
        negative_statements=(
            "The mediastinum is not widened.",
            "Mediastinal contours are normal.",
            "The cardiomediastinal silhouette is normal.",
        ),
    ),
    "Cardiomegaly": FindingVocab(
        nouns=(
            Noun("cardiomegaly"),
            Noun("cardiac enlargement"),
            Noun("enlarged cardiac silhouette", COUNT, graded=False),
            Noun("enlarged heart", COUNT, graded=False),
        ),
        severities=("", "mild", "moderate", "marked", "severe"),
        locations=("",),
        statements=(
            "The heart is enlarged.",
            "The heart is mildly enlarged.",
            "The heart is moderately enlarged.",
            "The heart is markedly enlarged.",
            "The cardiac silhouette is enlarged.",
            "The heart is increased in size.",
            "The cardiac silhouette is severely enlarged.",
        ),
        uncertain_modifiers=("", "mild"),
        uncertain_statements=("Heart size is borderline.", "The cardiac silhouette is borderline in size."),
        negations=("cardiomegaly", "cardiac enlargement"),
        negative_statements=(
            "Heart size is normal.",
            "The heart is not enlarged.",
            "The heart is normal in size.",
            "The cardiac silhouette is within normal limits.",
        ),
    ),
    "Lung Lesion": FindingVocab(
        nouns=(
            Noun("pulmonary nodule", COUNT),
            Noun("lung nodule", COUNT),
            Noun("rounded mass", COUNT),
            Noun("lung mass", COUNT),
            Noun("spiculated nodule", COUNT),
            Noun("nodule", COUNT),
            Noun("multiple pulmonary nodules", PLURAL, graded=False),
        ),
        severities=("", "small", "large", "well circumscribed", "subcentimeter", "solitary"),
        locations=("",) + _RIGHT_LEFT_ZONES,
        uncertain_modifiers=("", "small"),
        negations=("pulmonary nodule", "lung mass", "suspicious nodule", "pulmonary nodules or masses"),
    ),
    "Lung Opacity": FindingVocab(
        nouns=(
            Noun("airspace opacity", COUNT),
            Noun("hazy opacity", COUNT),
            Noun("patchy opacities", PLURAL),
            Noun("ill-defined opacity", COUNT),
            Noun("increased opacity"),
            Noun("opacification"),
        ),
        severities=("", "mild", "faint", "subtle", "small", "dense"),
        locations=("",) + _RIGHT_LEFT_ZONES,
        uncertain_modifiers=("", "subtle", "faint"),
        negations=("focal opacity", "airspace opacity", "focal airspace opacity"),
    ),
    "Edema": FindingVocab(
        nouns=(Noun("pulmonary edema"), Noun("interstitial edema"), Noun("alveolar edema"), Noun("edema")),
        severities=("", "mild", "moderate", "severe"),
        locations=("", "bilaterally", "in the perihilar regions", "throughout both lungs"),
        statements=(
            "Pulmonary edema is most pronounced in the perihilar regions.",
            "There is a perihilar pattern of pulmonary edema.",
        ),
        uncertain_modifiers=("", "mild", "early"),
        negations=("pulmonary edema", "edema", "interstitial edema"),
    ),
    "Consolidation": FindingVocab(
        nouns=(
            Noun("consolidation"),
            Noun("focal consolidation", COUNT),
            Noun("lobar consolidation"),
            Noun("area of consolidation", COUNT),
            Noun("segmental consolidation"),
        ),
        severities=("", "dense", "patchy", "small", "extensive", "confluent"),
        locations=("",) + _RIGHT_LEFT_ZONES,
        uncertain_modifiers=("", "early", "subtle"),
        negations=("focal consolidation", "consolidation", "lobar consolidation"),
    ),
    "Pneumonia": FindingVocab(
        nouns=(
            Noun("pneumonia"),
            Noun("lobar pneumonia"),
            Noun("bronchopneumonia"),
            Noun("multifocal pneumonia"),
            Noun("aspiration pneumonia"),
        ),
        severities=("", "mild", "extensive", "severe"),
        locations=("",) + _RIGHT_LEFT_ZONES,
        statements=(
            "Findings are compatible with pneumonia.",
            "The appearance is typical of pneumonia.",
            "Air bronchograms indicate pneumonia.",
        ),
        uncertain_modifiers=("", "early", "developing"),
        uncertain_statements=("Early pneumonia is not excluded.",),
        negations=("pneumonia", "evidence of pneumonia"),
    ),
    "Atelectasis": FindingVocab(
        nouns=(
            Noun("atelectasis"),
            Noun("subsegmental atelectasis"),
            Noun("plate-like atelectasis"),
            Noun("linear atelectasis"),
            Noun("band of atelectasis", COUNT),
        ),
        severities=("", "mild", "minimal", "moderate"),
        locations=(
            "",
            "at the right base",
            "at the left base",
            "at both lung bases",
            "in the left lower lobe",
            "in the right middle lobe",
            "in the lingula",
            "in the retrocardiac region",
        ),
        uncertain_modifiers=("", "mild"),
        negations=("atelectasis",),
    ),
    "Pneumothorax": FindingVocab(
        nouns=(
            Noun("pneumothorax", COUNT),
            Noun("apical pneumothorax", COUNT),
            Noun("bilateral pneumothoraces", PLURAL, located=False),
        ),
        severities=("", "small", "moderate", "large", "tiny"),
        locations=("",) + _SIDES,
        statements=(
            "A pneumothorax is seen with no lung markings beyond the pleural line.",
            "Pleural air from a pneumothorax separates the lung edge from the chest wall.",
        ),
        uncertain_modifiers=("", "tiny", "small"),
        negations=("pneumothorax",),
        negative_statements=("The lungs are fully expanded without pneumothorax.",),
    ),
    "Pleural Effusion": FindingVocab(
        nouns=(
            Noun("pleural effusion", COUNT),
            Noun("effusion", COUNT),
            Noun("pleural fluid"),
            Noun("layering pleural effusion", COUNT),
            Noun("subpulmonic effusion", COUNT),
            Noun("bilateral pleural effusions", PLURAL, located=False),
        ),
        severities=("", "small", "moderate", "large", "trace"),
        locations=("",) + _SIDES + ("at the right base", "at the left base"),
        statements=("Pleural fluid layers along the lateral chest wall with a meniscus.",),
        uncertain_modifiers=("", "small", "trace"),
        uncertain_statements=(
            "There is blunting of the right costophrenic angle.",
            "There is blunting of the left costophrenic angle.",
            "The costophrenic angles are blunted.",
        ),
        negations=("pleural effusion", "effusion", "pleural effusions"),
        negative_statements=(
            "The costophrenic angles are sharp.",
            "No pleural effusion or pneumothorax.",
            "There is no pleural effusion or pneumothorax.",
        ),
    ),
    "Pleural Other": FindingVocab(
        nouns=(
            Noun("pleural thickening"),
            Noun("pleural scarring"),
            Noun("pleural plaque", COUNT),
            Noun("calcified pleural plaques", PLURAL),
        ),
        severities=("", "mild", "minimal", "focal", "smooth"),
        locations=("",)
        + _SIDES
        + (
            "at the right apex",
            "at the left apex",
            "along the right lateral chest wall",
            "along the left lateral chest wall",
        ),
        uncertain_modifiers=("", "mild"),
        negations=("pleural thickening",),
    ),
    "Fracture": FindingVocab(
        nouns=(
            Noun("rib fracture", COUNT),
            Noun("rib fractures", PLURAL),
            Noun("clavicle fracture", COUNT),
            Noun("fracture of a lateral rib", COUNT),
        ),
        severities=("", "acute", "healing", "displaced", "nondisplaced", "old"),
        locations=("",) + _SIDES,
        statements=("A rib fracture shows a cortical break with callus.",),
        uncertain_modifiers=("", "subtle", "nondisplaced"),
        negations=("fracture", "acute fracture", "rib fracture", "displaced rib fracture"),
        negative_statements=("The osseous structures are intact.", "No acute osseous abnormality."),
    ),
    "Support Devices": FindingVocab(
        nouns=(
            Noun("endotracheal tube", COUNT),
            Noun("nasogastric tube", COUNT),
            Noun("enteric tube", COUNT),
            Noun("right internal jugular central line", COUNT),
            Noun("left subclavian catheter", COUNT),
            Noun("picc line", COUNT),
            Noun("pacemaker", COUNT),
            Noun("sternotomy wires", PLURAL),
        ),
        severities=("",),
        locations=("",),
        statements=(
            "The endotracheal tube terminates above the carina.",
            "An enteric tube extends below the diaphragm.",
            "A central venous catheter ends in the superior vena cava.",
            "A left chest wall pacemaker has leads in the right heart.",
            "Lines and tubes are in standard position.",
            "The tip of the picc line projects over the distal superior vena cava.",
        ),
        negative_statements=("The endotracheal tube has been removed.", "The enteric tube has been removed."),
    ),
}
"""Our finding vocabulary (every CheXpert finding except No Finding)."""

NORMAL_STATEMENTS: tuple[str, ...] = (
    "The lungs are clear.",
    "Both lungs are clear.",
    "The lungs are well expanded and clear.",
    "The lungs are clear bilaterally.",
    "Heart size is normal.",
    "The heart is normal in size.",
    "The cardiac silhouette is within normal limits.",
    "The cardiomediastinal silhouette is normal.",
    "Mediastinal and hilar contours are unremarkable.",
    "No acute cardiopulmonary process.",
    "No acute cardiopulmonary abnormality.",
    "Normal chest radiograph.",
    "The chest is unremarkable.",
    "The costophrenic angles are sharp.",
    "Pulmonary vascularity is normal.",
    "The osseous structures are intact.",
    "The hila are normal.",
    "There is no focal airspace disease.",
    "The diaphragm is normal in position.",
    "No acute abnormality of the chest.",
    "Lung volumes are normal.",
    "The lungs are well aerated.",
    "Heart and mediastinum are within normal limits.",
    "The pulmonary vessels are normal in caliber.",
    "The trachea is midline.",
    "Normal heart size and clear lungs.",
    "There is no acute disease in the chest.",
    "Unremarkable frontal view of the chest.",
    "The lung fields are clear.",
    "Clear lungs.",
    "Normal cardiomediastinal contours.",
    "Normal appearance of the heart and lungs.",
    "No radiographic evidence of acute disease.",
    "The lungs and pleural spaces are clear.",
    "Both hemidiaphragms are well defined.",
    "The chest radiograph is within normal limits.",
)
"""Statements of a normal study (No Finding = 1, everything else 0)."""

_POSITIVE_FRAMES = (
    "There {be} {np}{loc}.",
    "{NP}{loc} {be} seen.",
    "{NP}{loc} {be} noted.",
    "Findings are consistent with {np}{loc}.",
    "{BARE}{loc}.",
    "The radiograph demonstrates {np}{loc}.",
    "{NP}{loc} {be} present.",
    "There {be} evidence of {np}{loc}.",
)
_UNCERTAIN_FRAMES = (
    "Possible {bare}{loc}.",
    "{BARE}{loc} cannot be excluded.",
    "This may represent {np}{loc}.",
    "Questionable {bare}{loc}.",
    "Findings are suspicious for {np}{loc}.",
    "Cannot exclude {np}{loc}.",
    "Concerning for {bare}{loc}.",
    "There may be {np}{loc}.",
)
_NEGATIVE_FRAMES = (
    "No {x}.",
    "There is no {x}.",
    "No evidence of {x}.",
    "Negative for {x}.",
    "The lungs are clear without {x}.",
)
_NEGATIVE_LIST_FRAMES = ("No {x}.", "There is no {x}.", "No evidence of {x}.")
_DEVICE_FRAMES = (
    "There {be} {np}.",
    "{NP} {be} in place.",
    "{NP} {be} in standard position.",
    "Interval placement of {np}.",
    "{NP} {be} present.",
)
_CAP_POSITIVE = 100
_CAP_UNCERTAIN = 30
_N_COMBOS = 260
_NORMAL_CLAUSES = (
    "the lungs are clear",
    "heart size is normal",
    "the mediastinum is normal",
    "there is no pleural effusion",
    "there is no pneumothorax",
    "the osseous structures are intact",
    "the costophrenic angles are sharp",
    "pulmonary vascularity is normal",
    "the hila are normal",
)


def _article(phrase: str) -> str:
    return "an" if phrase[:1].lower() in "aeiou" else "a"


def _np(noun: Noun, severity: str) -> tuple[str, str]:
    """(noun phrase with article where needed, bare noun phrase) for a severity and noun."""
    bare = f"{severity} {noun.text}".strip()
    return (f"{_article(bare)} {bare}" if noun.kind == COUNT else bare), bare


def _fill(frame: str, noun: Noun, severity: str, location: str) -> str:
    np_, bare = _np(noun, severity)
    loc = f" {location}" if location else ""
    text = frame.format(be="are" if noun.kind == PLURAL else "is", np=np_, NP=np_, bare=bare, BARE=bare, loc=loc)
    return text[0].upper() + text[1:]


def _labels(positive: tuple[str, ...] = (), uncertain: tuple[str, ...] = ()) -> np.ndarray:
    """A 14-d label vector with the CheXpert No Finding rule."""
    y = np.zeros(NUM_LABELS, dtype=np.float32)
    for name in uncertain:
        y[CHEXPERT_LABELS.index(name)] = -1.0
    for name in positive:
        y[CHEXPERT_LABELS.index(name)] = 1.0
    y[0] = 0.0 if np.any(y[1:13] != 0) else 1.0
    return y


def _fits(noun: Noun, severity: str, location: str) -> bool:
    return (noun.graded or not severity) and (noun.located or not location)


def _positive_sentences(name: str, v: FindingVocab) -> list[str]:
    frames = _DEVICE_FRAMES if name == "Support Devices" else _POSITIVE_FRAMES
    return [
        _fill(f, n, s, loc) for f, n, s, loc in product(frames, v.nouns, v.severities, v.locations) if _fits(n, s, loc)
    ]


def _uncertain_sentences(v: FindingVocab) -> list[str]:
    return [
        _fill(f, n, m, loc)
        for f, n, m, loc in product(_UNCERTAIN_FRAMES, v.nouns, v.uncertain_modifiers, v.locations[:4])
        if _fits(n, m, loc)
    ]


def _normal_compounds() -> list[str]:
    """Normal and negated statements joined in one sentence ("The lungs are clear and heart size is normal.")."""
    out = [f"{a[0].upper()}{a[1:]} and {b}." for a, b in product(_NORMAL_CLAUSES, _NORMAL_CLAUSES) if a != b]
    diseases = [n for n in VOCABULARY if n != "Support Devices"]
    for i, a in enumerate(diseases):
        for b in diseases[i + 1 :]:
            pair = f"{VOCABULARY[a].negations[0]} or {VOCABULARY[b].negations[0]}"
            out += [f.format(x=pair) for f in _NEGATIVE_LIST_FRAMES]
    return out


def _negative_sentences(v: FindingVocab) -> list[str]:
    return [f.format(x=x) for f, x in product(_NEGATIVE_FRAMES, v.negations)] + list(v.negative_statements)


def _take(items: list[str], cap: int, rng: np.random.Generator) -> list[str]:
    items = list(dict.fromkeys(items))
    if len(items) <= cap:
        return items
    return [items[i] for i in sorted(rng.choice(len(items), size=cap, replace=False))]


def _core(name: str, rng: np.random.Generator) -> str:
    """A short positive mention of `name` without a verb ("small pleural effusion on the left")."""
    v = VOCABULARY[name]
    noun = v.nouns[rng.integers(len(v.nouns))]
    sev = v.severities[rng.integers(len(v.severities))] if noun.graded else ""
    loc = v.locations[rng.integers(len(v.locations))] if noun.located else ""
    return f"{_np(noun, sev)[1]} {loc}".strip()


def _combination_sentences(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """Two findings in one sentence: both positive, positive without a negated one, positive with an uncertain one,
    and lists of negated findings."""
    diseases = [n for n in VOCABULARY if n != "Support Devices"]
    out: list[tuple[str, np.ndarray]] = []
    for _ in range(_N_COMBOS):
        a, b, c = (diseases[i] for i in rng.choice(len(diseases), size=3, replace=False))
        kind = rng.integers(4)
        if kind == 0:
            text = f"{_core(a, rng)} and {_core(b, rng)}."
            labels = _labels(positive=(a, b))
        elif kind == 1:
            neg = VOCABULARY[b].negations[rng.integers(len(VOCABULARY[b].negations))]
            text = f"{_core(a, rng)} without {neg}."
            labels = _labels(positive=(a,))
        elif kind == 2:
            vb = VOCABULARY[b]
            unc = _np(vb.nouns[rng.integers(len(vb.nouns))], "")[1]
            text = f"{_core(a, rng)}; {unc} cannot be excluded."
            labels = _labels(positive=(a,), uncertain=(b,))
        else:
            negs = [VOCABULARY[n].negations[0] for n in (a, b, c)]
            frame = _NEGATIVE_LIST_FRAMES[rng.integers(len(_NEGATIVE_LIST_FRAMES))]
            items = f"{negs[0]} or {negs[1]}" if rng.random() < 0.5 else f"{negs[0]}, {negs[1]}, or {negs[2]}"
            text = frame.format(x=items)
            labels = _labels()
        out.append((text[0].upper() + text[1:], labels))
    return out


@lru_cache(maxsize=1)
def _corpus() -> tuple[tuple[str, ...], np.ndarray, tuple[str, ...]]:
    rng = np.random.default_rng(20240601)  # the corpus is fixed; make_text_pool's seed only samples from it
    rows: list[tuple[str, np.ndarray, str]] = [(s, _labels(), "normal") for s in NORMAL_STATEMENTS]
    rows += [(s, _labels(), "normal") for s in _normal_compounds()]
    for name, v in VOCABULARY.items():
        pos = _take(_positive_sentences(name, v), _CAP_POSITIVE - len(v.statements), rng) + list(v.statements)
        rows += [(s, _labels(positive=(name,)), f"positive:{name}") for s in pos]
        unc = _take(_uncertain_sentences(v), _CAP_UNCERTAIN, rng) + list(v.uncertain_statements)
        rows += [(s, _labels(uncertain=(name,)), f"uncertain:{name}") for s in unc if name != "Support Devices"]
        rows += [(s, _labels(), f"negative:{name}") for s in _negative_sentences(v)]
    rows += [(s, y, "combination") for s, y in _combination_sentences(rng)]
    seen: dict[str, int] = {}
    keep = []
    for i, (s, _, _) in enumerate(rows):
        if s not in seen:
            seen[s] = i
            keep.append(i)
    return (tuple(rows[i][0] for i in keep), np.stack([rows[i][1] for i in keep]), tuple(rows[i][2] for i in keep))


def report_corpus() -> tuple[list[str], np.ndarray, list[str]]:
    """Every distinct generated sentence, its (M, 14) labels and its kind ("normal", "positive:<finding>",
    "uncertain:<finding>", "negative:<finding>", "combination"); fixed, independent of any seed."""
    sentences, labels, kinds = _corpus()
    return list(sentences), labels.copy(), list(kinds)


def make_text_pool(n: int | None = None, seed: int = 0) -> TextPool:
    """A TextPool of generated report sentences: all distinct ones (n=None) or n of them, in a seeded order.

    n above the corpus size repeats sentences (sampled with replacement beyond one full pass).
    """
    sentences, labels, _ = _corpus()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(sentences))
    if n is not None:
        if n < 1:
            raise ValueError(f"n must be a positive number of sentences, got {n}")
        extra = rng.integers(len(sentences), size=max(0, n - len(sentences)))
        order = np.concatenate([order, extra])[:n]
    return TextPool([sentences[i] for i in order], labels[order])


def finding_phrases(name: str) -> list[str]:
    """Short positive phrases for a finding ("moderate pleural effusion on the left"), for zero-shot prompts."""
    if name == "No Finding":
        return [s.rstrip(".") for s in NORMAL_STATEMENTS]
    if name not in VOCABULARY:
        raise ValueError(f"unknown finding {name!r}; expected one of {list(CHEXPERT_LABELS)}")
    v = VOCABULARY[name]
    return [
        _np(n, s)[1] + (f" {loc}" if loc else "")
        for n, s, loc in product(v.nouns, v.severities, v.locations)
        if _fits(n, s, loc)
    ]
