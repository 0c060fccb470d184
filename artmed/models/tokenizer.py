"""Offline BERT tokenizers: load one from a local ``vocab.txt``, or build a deterministic WordPiece vocabulary.

transformers 5 trap (measured with transformers 5): ``BertTokenizerFast(vocab_file=...)`` silently ignores the file
and maps every word to [UNK]; ``load_tokenizer`` goes through ``BertTokenizer.from_pretrained(local_dir)`` instead.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from tokenizers.normalizers import BertNormalizer
from tokenizers.pre_tokenizers import BertPreTokenizer
from transformers import BertTokenizer

from artmed.constants import CHEXPERT_LABELS, TEXT_MAX_LENGTH
from artmed.files import default_mode

__all__ = ["SPECIAL_TOKENS", "BUILTIN_WORDS", "load_tokenizer", "save_tokenizer", "build_vocab", "default_tokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

# Characters every built vocabulary covers (alone and as "##" continuations), so any ASCII word tokenizes.
_BASE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'\"()[]{}<>-_/\\+=*&%$#@~`^|"

# Radiology-report vocabulary for the built-in phantom corpus and the zero-shot prompts (findings, locations,
# severities, negations, devices, common words, digits). Order is irrelevant: the vocabulary is sorted.
BUILTIN_WORDS: tuple[str, ...] = tuple(
    """
a about abnormal abnormality abnormalities above absent acute additional adjacent air airspace airspaces alveolar
an and angle angles anterior aorta aortic ap apex apical appearance appears apperance are area areas as at
atelectasis atelectatic axial azygos bacterial band bandlike base bases basilar be bibasal bibasilar bilateral
bilaterally blunting bone bones borderline both bowel breast but by calcification calcified can cannot cardiac
cardiomediastinal cardiomediastinum cardiomegaly cardiopulmonary catheter cavitation central change changes chest
chronic clavicle clear collapse compared comparison concerning confluent congestion consistent consolidation
consolidations consolidative contour contours costophrenic covid crowding decreased degenerative demonstrate
demonstrated demonstrates dense density device devices diaphragm diaphragmatic diffuse dilated displaced distal
distension does due early edema effusion effusions elevated elevation emphysema endotracheal enlarged enlargement
enteric erect evaluation evidence exam examination except excluded expected extending failure features fibrosis
fibrotic fissure fluid focal for fracture fractures free from frontal fullness gas gastric glass granuloma ground
hazy heart hemidiaphragm hemithorax hernia hiatal hilar hila hilum hyperexpanded hyperinflated hyperinflation
identified ij improved improvement in increase increased infection infectious infiltrate infiltrates interstitial
interval into is it its jugular large lateral left lesion lesions less likely limits line linear lines lingula
lobe lobes low lower lucency lung lungs lymphadenopathy markings marked mass masses may mediastinal mediastinum
mid middle mild mildly minimal minimally moderate moderately more multifocal multiple mycoplasma new no nodular
nodule nodules noncontributory normal not noted obscured of old on opacification opacities opacity or osseous
other overall overlying pa pacemaker parenchymal partial partially patchy patient pattern perihilar peripheral
persistent persists picc pleural pneumomediastinum pneumonia pneumoperitoneum pneumothorax port portable possible
possibly post posterior presistent present previous prior process prominence prominent pulmonary radiograph
radiographs redemonstrated redemonstration region remains removed reposition represent residual resolved
retrocardiac reticular rib ribs right round scarring seen segment segmental severe severely shift shoulder side
silhouette since size small soft spine stable standard status sternotomy subcutaneous subpulmonic subsegmental
suggest suggestive superimposed support surgical suspicious the there these this thoracic tip tissue to total
trace trachea tracheostomy tube tubes unchanged underlying unremarkable upper uppper vascular vascularity vessels
view viral volume volumes wall well which wire wires with within without worse worsening zone zones
""".split()
) + tuple(str(d) for d in range(10))


def load_tokenizer(local_dir: str | os.PathLike[str]) -> BertTokenizer:
    """A ``BertTokenizer`` from a local directory holding ``vocab.txt`` (or that file's path); max length 77.

    Settings in the directory's ``tokenizer_config.json`` (e.g. ``do_lower_case``) are honoured; without one,
    BERT's defaults apply (lower-casing), as for the released MedCLIP's Bio_ClinicalBERT tokenizer. A directory
    that transformers 5's ``save_pretrained`` wrote (``tokenizer.json``, no ``vocab.txt``) is accepted too.
    """
    path = Path(local_dir)
    if path.is_file() and path.name == "vocab.txt":
        path = path.parent
    if not path.is_dir():
        raise ValueError(f"tokenizer directory {str(path)!r} does not exist")
    if not (path / "vocab.txt").is_file() and not (path / "tokenizer.json").is_file():
        raise ValueError(f"tokenizer directory {str(path)!r} holds no vocab.txt (nor a tokenizer.json)")
    tokenizer = BertTokenizer.from_pretrained(str(path), local_files_only=True)
    tokenizer.model_max_length = TEXT_MAX_LENGTH
    return tokenizer


def save_tokenizer(tokenizer: BertTokenizer, out_dir: str | os.PathLike[str]) -> Path:
    """Write ``vocab.txt`` + ``tokenizer_config.json`` (what ``load_tokenizer`` reads) into ``out_dir``; return it.

    transformers 5's ``save_pretrained`` writes no ``vocab.txt``; this keeps saved tokenizers in the plain
    BERT format that the original MedCLIP code and older transformers read as well.
    """
    vocab = tokenizer.get_vocab()
    ordered = sorted(vocab, key=vocab.__getitem__)
    if [vocab[token] for token in ordered] != list(range(len(ordered))):
        raise ValueError("save_tokenizer: the tokenizer's ids are not contiguous from 0; cannot write a vocab.txt")
    lowercase = bool(tokenizer.init_kwargs.get("do_lower_case", True))
    out = Path(out_dir)
    _write_vocab(ordered, out, lowercase)
    return out


def _words(sentences: Iterable[str], lowercase: bool) -> list[str]:
    normalizer = BertNormalizer(lowercase=lowercase, strip_accents=lowercase)
    pre_tokenizer = BertPreTokenizer()
    words: set[str] = set()
    for sentence in sentences:
        if not isinstance(sentence, str):
            raise ValueError(f"build_vocab needs strings, got {type(sentence).__name__}: {sentence!r}")
        words.update(word for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(sentence)))
    return sorted(words)


def _vocab_lines(sentences: Iterable[str], lowercase: bool) -> list[str]:
    words = _words(sentences, lowercase)
    chars = sorted(set(_BASE_CHARS if not lowercase else _BASE_CHARS.lower()) | {c for w in words for c in w})
    entries = dict.fromkeys([*SPECIAL_TOKENS, *words, *chars, *(f"##{c}" for c in chars)])
    return list(entries)


def _write_vocab(lines: list[str], out_dir: Path, lowercase: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = {"tokenizer_class": "BertTokenizer", "do_lower_case": lowercase, "model_max_length": TEXT_MAX_LENGTH}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def build_vocab(sentences: Iterable[str], out_dir: str | os.PathLike[str], lowercase: bool = True) -> Path:
    """Write a deterministic WordPiece ``vocab.txt`` (+ ``tokenizer_config.json``) into ``out_dir``; return it.

    Order: [PAD] [UNK] [CLS] [SEP] [MASK], every whole word of the corpus (sorted), then every single character
    and its ``##`` continuation, so any word made of known characters tokenizes without [UNK].
    """
    out = Path(out_dir)
    _write_vocab(_vocab_lines(sentences, lowercase), out, lowercase)
    return out


def _cache_root() -> Path:
    if os.environ.get("ARTMED_CACHE_DIR"):
        return Path(os.environ["ARTMED_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "artmed"


def default_tokenizer(sentences: Iterable[str] | None = None) -> BertTokenizer:
    """A lower-casing tokenizer over the built-in report vocabulary (plus ``sentences``' words when given).

    The vocabulary is deterministic and cached under ``$ARTMED_CACHE_DIR`` or ``~/.cache/artmed`` in a
    directory named by its content hash (a temp directory if the cache is not writable).
    """
    corpus = [*BUILTIN_WORDS, *(label.lower() for label in CHEXPERT_LABELS), *(sentences or ())]
    lines = _vocab_lines(corpus, lowercase=True)
    digest = hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()[:16]
    for root in (_cache_root(), Path(tempfile.gettempdir()) / "artmed"):
        target = root / f"tokenizer-{digest}"
        if (target / "vocab.txt").is_file():
            return load_tokenizer(target)
        try:
            root.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", dir=root))
            os.chmod(staging, default_mode(directory=True))  # mkdtemp's 0700 would hide a shared cache
            _write_vocab(lines, staging, lowercase=True)
            try:
                staging.rename(target)
            except OSError:
                shutil.rmtree(staging, ignore_errors=True)  # another process finished first
            return load_tokenizer(target)
        except OSError:
            continue
    raise ValueError("default_tokenizer: no writable cache directory (set ARTMED_CACHE_DIR)")
