"""The CheXpert-style rule labeler: negation/uncertainty per mention, sentence splitting, sentence-label.csv."""

import csv
import gzip
import os
import random
import re

import numpy as np
import pytest

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data import labeler
from artmed.data import labeler_rules as rules
from artmed.data.labeler import (
    extract_findings,
    iter_reports,
    label_report,
    label_sentence,
    main,
    read_report,
    report_labels,
    sentence_labels,
    split_sentences,
    write_sentence_labels,
)

ECM, CM, LESION, OPACITY, EDEMA, CONSOL, PNA, ATEL, PTX, EFF, PLO, FX, SD = CHEXPERT_LABELS[1:]

# (sentence, findings that are not 0, No Finding)
CASES = [
    ("No pleural effusion or pneumothorax.", {}, 1),
    ("No focal consolidation, pleural effusion, or pneumothorax is seen.", {}, 1),
    ("The lungs are clear.", {}, 1),
    ("No acute cardiopulmonary process.", {}, 1),
    ("Heart size is normal.", {}, 1),
    ("The heart is mildly enlarged.", {CM: 1}, 0),
    ("Moderate cardiomegaly is unchanged.", {CM: 1}, 0),
    ("Heart size is stable.", {CM: -1}, 0),
    ("The cardiomediastinal silhouette is within normal limits.", {}, 1),
    ("Widened mediastinum.", {ECM: 1}, 0),
    ("The mediastinum is widened.", {ECM: 1}, 0),
    ("Heart size and mediastinal contours are normal.", {}, 1),
    ("There is no pneumothorax, but there is a small left pleural effusion.", {EFF: 1}, 0),
    ("There is no pneumothorax and the heart is enlarged.", {CM: 1}, 0),
    ("No pneumothorax, possible small effusion.", {EFF: -1}, 0),
    ("No effusion and mild cardiomegaly.", {CM: 1}, 0),
    ("Cannot exclude pneumonia.", {PNA: -1}, 0),
    ("Pneumonia cannot be excluded.", {PNA: -1}, 0),
    ("Findings are suggestive of pneumonia.", {PNA: -1}, 0),
    ("Atelectasis versus pneumonia in the left lower lobe.", {ATEL: -1, PNA: -1}, 0),
    ("Atelectasis or consolidation at the right base.", {ATEL: -1, CONSOL: -1}, 0),
    ("Right lower lobe opacity may represent pneumonia.", {OPACITY: 1, PNA: -1}, 0),
    ("Opacity in the right lower lobe concerning for pneumonia.", {OPACITY: 1, PNA: -1}, 0),
    ("Likely atelectasis at the left base.", {ATEL: 1}, 0),
    ("Pneumonia is unlikely.", {PNA: -1}, 0),
    ("Probable small left pleural effusion.", {EFF: -1}, 0),
    ("No new consolidation.", {CONSOL: -1}, 0),
    ("No change in the moderate right pleural effusion.", {EFF: 1}, 0),
    ("The right pleural effusion has resolved.", {}, 1),
    ("Effusion and pneumothorax have resolved.", {}, 1),
    ("The heart is enlarged, effusion resolved.", {CM: 1}, 0),
    ("Endotracheal tube terminates 4 cm above the carina.", {SD: 1}, 1),
    ("The ET tube and NG tube have been removed.", {}, 1),
    ("Interval removal of the right chest tube.", {}, 1),
    ("Mild pulmonary vascular congestion.", {EDEMA: -1}, 0),
    ("No pulmonary edema or vascular congestion.", {}, 1),
    ("Blunting of the left costophrenic angle.", {EFF: -1}, 0),
    ("The costophrenic angles are sharp.", {}, 1),
    ("Findings consistent with congestive heart failure.", {EDEMA: 1, CM: -1}, 0),
    ("Rule out pneumonia.", {PNA: -1}, 0),
    ("Pneumothorax is ruled out.", {}, 1),
    ("No evidence of fracture.", {}, 1),
    ("Healed left rib fractures.", {FX: 1}, 0),
    ("Hyperinflated lungs consistent with emphysema.", {}, 0),
    ("Calcified granuloma in the right upper lobe.", {}, 0),
    ("Right pleural thickening.", {PLO: 1}, 0),
    ("Lungs are clear without focal consolidation, effusion, or edema.", {}, 1),
    ("Pneumothorax is not seen.", {}, 1),
    ("Heart size is at the upper limits of normal.", {}, 1),
    ("Heart size may be enlarged.", {CM: -1}, 0),
    ("Pulmonary nodule is not well seen on this study.", {LESION: -1}, 0),
    ("Left PICC line tip in the SVC.", {SD: 1}, 1),
    ("Kerley B lines are present.", {EDEMA: 1}, 0),
    ("Hydropneumothorax on the right.", {PTX: 1, EFF: 1}, 0),
    ("There is a right upper lobe mass and no effusion.", {LESION: 1}, 0),
    ("Right lower lobe consolidation, possibly pneumonia.", {CONSOL: 1, PNA: -1}, 0),
    (
        "Bibasilar opacities, likely atelectasis, although infection cannot be excluded.",
        {OPACITY: 1, ATEL: 1, PNA: -1},
        0,
    ),
    ("? pneumonia", {PNA: -1}, 0),
    ("Negative for pneumothorax.", {}, 1),
    ("Pneumothorax is not seen, effusion is present.", {EFF: 1}, 0),
    ("Patchy opacity in the left lower lobe could represent aspiration or pneumonia.", {OPACITY: 1, PNA: -1}, 0),
    ("Small bilateral pleural effusions are unchanged.", {EFF: 1}, 0),
    ("No pleural effusion is seen, there is mild edema.", {EDEMA: 1}, 0),
    ("Median sternotomy wires and mediastinal clips are noted.", {SD: 1}, 1),
    ("Free of effusion.", {}, 1),
]


def _nonzero(vec):
    return {name: int(v) for name, v in zip(CHEXPERT_LABELS, vec) if v}


@pytest.mark.parametrize(("sentence", "findings", "no_finding"), CASES, ids=[c[0][:40] for c in CASES])
def test_label_sentence(sentence, findings, no_finding):
    expected = np.zeros(NUM_LABELS, dtype=np.float32)
    expected[0] = no_finding
    for name, value in findings.items():
        expected[CHEXPERT_LABELS.index(name)] = value
    got = label_sentence(sentence)
    assert got.dtype == np.float32 and got.shape == (NUM_LABELS,)
    assert _nonzero(got) == _nonzero(expected)


def test_split_sentences_handles_headers_decimals_abbreviations_lists_and_placeholders():
    report = (
        "FINAL REPORT\nINDICATION: ___ with cough.\n\nFINDINGS: The nodule measures 1.5 cm,\nunchanged. "
        "Dr. Smith was told, e.g. by phone. XXXX.\n\nIMPRESSION:\n1. No acute process.\n2. Possible effusion?"
    )
    assert split_sentences(report) == [
        "___ with cough",
        "The nodule measures 1.5 cm, unchanged",
        "Dr. Smith was told, e.g. by phone",
        "No acute process",
        "Possible effusion?",
    ]
    findings = extract_findings(report)
    assert "cough" not in findings and "1.5 cm" in findings and "No acute process" in findings
    assert extract_findings("No headers here.") == "No headers here."


def test_report_aggregation_follows_chexpert_precedence():
    report = "No pleural effusion. Small right pleural effusion. No pneumothorax. Possible pneumothorax. No edema."
    labels = report_labels(report)
    assert labels[CHEXPERT_LABELS.index(EFF)] == 1  # positive beats negative
    assert labels[CHEXPERT_LABELS.index(PTX)] == -1  # uncertain beats negative
    assert labels[CHEXPERT_LABELS.index(EDEMA)] == 0
    assert labels[0] == 0
    per_sentence = label_report(report)
    assert [s for s, _ in per_sentence][0] == "No pleural effusion"
    assert per_sentence[0][1][CHEXPERT_LABELS.index(EFF)] == 0 and per_sentence[0][1][0] == 1
    assert report_labels("Lungs are clear. Tube in good position.")[[0, 13]].tolist() == [1, 1]


def test_sentence_labels_deduplicates_case_insensitively():
    sentences, labels = sentence_labels(["No effusion. Mild edema.", "no effusion. Cardiomegaly."])
    assert sentences == ["No effusion", "Mild edema", "Cardiomegaly"]
    assert labels.shape == (3, NUM_LABELS)
    assert sentence_labels([])[1].shape == (0, NUM_LABELS)


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_write_sentence_labels_from_folder(tmp_path):
    (tmp_path / "reports" / "p1").mkdir(parents=True)
    (tmp_path / "reports" / "p1" / "a.txt").write_text(
        "INDICATION: rule out pneumonia.\nFINDINGS: Heart is enlarged. No effusion.\nIMPRESSION: Cardiomegaly."
    )
    (tmp_path / "reports" / "b.txt").write_text("No effusion. Right lower lobe pneumonia.")
    (tmp_path / "reports" / "ignored.md").write_text("Pneumothorax.")
    out = tmp_path / "out" / "sentence-label.csv"
    n = write_sentence_labels(tmp_path / "reports", out)
    rows = _read_csv(out)
    assert rows[0] == ["Reports", *CHEXPERT_LABELS]
    assert n == len(rows) - 1 == 4
    by_text = {r[0]: r[1:] for r in rows[1:]}
    assert "rule out pneumonia" not in by_text  # INDICATION section dropped by default
    assert by_text["Right lower lobe pneumonia"][CHEXPERT_LABELS.index(PNA)] == "1"
    assert by_text["No effusion"][0] == "1"
    assert write_sentence_labels(tmp_path / "reports", tmp_path / "all.csv", findings_only=False) == 5


def test_write_sentence_labels_from_csv(tmp_path):
    src = tmp_path / "reports.csv"
    with open(src, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "Findings", "Impression"])
        writer.writerow(["1", "Small left effusion.", "Possible pneumonia."])
        writer.writerow(["2", "", "No acute process."])
    out = tmp_path / "s.csv"
    assert write_sentence_labels(src, out) == 3
    rows = {r[0]: r[1:] for r in _read_csv(out)[1:]}
    assert rows["Possible pneumonia"][CHEXPERT_LABELS.index(PNA)] == "-1"
    assert rows["Small left effusion"][CHEXPERT_LABELS.index(EFF)] == "1"

    bad = tmp_path / "bad.csv"
    bad.write_text("id,notes\n1,No effusion.\n")
    with pytest.raises(ValueError, match=r"bad\.csv.*no report column"):
        write_sentence_labels(bad, out)
    with pytest.raises(ValueError, match="no column 'missing'"):
        write_sentence_labels(src, out, column="missing")


def test_main_cli(tmp_path, capsys):
    (tmp_path / "r.txt").write_text("No pneumothorax. Mild cardiomegaly.")
    out = tmp_path / "o.csv"
    assert main([str(tmp_path / "r.txt"), str(out)]) == 0
    assert "wrote 2" in capsys.readouterr().out
    assert len(_read_csv(out)) == 3
    assert main([str(tmp_path / "missing"), str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


# ----- the output path is checked before any report is read -----


def _overwrite_cases(tmp_path):
    """(source, output, message): each output would overwrite or join the reports."""
    (tmp_path / "reports" / "p1").mkdir(parents=True)
    report = tmp_path / "reports" / "p1" / "a.txt"
    report.write_text("No effusion.")
    single = tmp_path / "victim.txt"
    single.write_text("Mild cardiomegaly.")
    table = tmp_path / "victim.csv"
    table.write_text("report\nSmall effusion.\n")
    (tmp_path / "hard.txt").hardlink_to(single)
    (tmp_path / "soft.txt").symlink_to(single)
    (tmp_path / "hard-in-folder.txt").hardlink_to(report)
    return [
        (single, single, "is the report source"),
        (single, tmp_path / "reports" / ".." / "victim.txt", "is the report source"),
        (single, tmp_path / "hard.txt", "is the report source"),
        (single, tmp_path / "soft.txt", "is the report source"),
        (table, table, "is the report source"),
        (tmp_path / "reports", report, "lies in the report folder"),
        (tmp_path / "reports", tmp_path / "reports" / "labels.csv", "lies in the report folder"),
        (tmp_path / "reports", tmp_path / "hard-in-folder.txt", "lies in the report folder"),
    ]


def test_output_that_would_overwrite_the_reports_is_refused(tmp_path, capsys):
    for source, out, message in _overwrite_cases(tmp_path):
        before = {p: p.read_bytes() for p in [source, *source.rglob("*")] if p.is_file()}
        assert main([str(source), str(out)]) == 2, (source, out)
        assert message in capsys.readouterr().err
        assert {p: p.read_bytes() for p in before} == before
        with pytest.raises(ValueError, match=message):
            write_sentence_labels(source, out)
    assert not (tmp_path / "reports" / "labels.csv").exists()


@pytest.mark.parametrize(
    ("out", "message"),
    [
        ("existing", r"output '.*existing' is a folder; give a file path such as '.*sentence-label\.csv'"),
        ("a_file/labels.csv", r"cannot create the folder of output '.*labels\.csv': '.*a_file' is a file"),
        ("a_file/deeper/labels.csv", r"cannot create the folder of output .*: '.*a_file' is a file"),
    ],
)
def test_unusable_output_path_fails_before_any_report_is_read(tmp_path, capsys, out, message):
    (tmp_path / "existing").mkdir()
    (tmp_path / "a_file").write_text("x")
    source = tmp_path / "binary.txt"  # reading it would fail: the output error must come first
    source.write_bytes(b"\x00\x01\x02")
    assert main([str(source), str(tmp_path / out)]) == 2
    assert re.search(message, capsys.readouterr().err)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="needs POSIX permissions that bind (not root)")
def test_output_in_a_read_only_folder_is_refused(tmp_path, capsys):
    (tmp_path / "r.txt").write_text("No effusion.")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        assert main([str(tmp_path / "r.txt"), str(locked / "o.csv")]) == 2
        assert "no write permission in" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


# ----- report files are read strictly as UTF-8 -----

LATIN1 = "No effusion. Caf\u00e9 au lait spots.".encode("latin-1")  # byte 0xe9 at offset 16
NUL = b"No effusion.\x00\x01\x02"


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("latin1.txt", LATIN1, r"latin1\.txt: not UTF-8 text: byte 0xe9 at byte offset 16; convert it to UTF-8"),
        ("binary.txt", NUL, r"binary\.txt: binary file \(NUL byte at byte offset 12\)"),
        ("latin1.csv", b"id,report\n1," + LATIN1 + b"\n", r"latin1\.csv: not UTF-8 text: byte 0xe9 at byte offset 28"),
        ("binary.csv", b"id,report\n1," + NUL + b"\n", r"binary\.csv: binary file \(NUL byte at byte offset 24\)"),
        (
            "late.csv",
            b"id,report\n" + b"1,No effusion.\n" * 2000 + b"2," + LATIN1 + b"\n",
            r"late\.csv: not UTF-8 text: byte 0xe9 at byte offset 30028;",
        ),  # past the first read buffers of the file
        (
            "latin1.csv.gz",
            gzip.compress(b"id,report\n1," + LATIN1 + b"\n", mtime=0),
            r"latin1\.csv\.gz: not UTF-8 text: byte 0xe9 at byte offset 28",
        ),  # offset in the decompressed text
    ],
    ids=["latin1-txt", "nul-txt", "latin1-csv", "nul-csv", "late-latin1-csv", "latin1-csv-gz"],
)
def test_reports_that_are_not_utf8_text_are_refused(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        list(iter_reports(tmp_path / name))
    assert main([str(tmp_path / name), str(tmp_path / "out.csv")]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "out.csv").exists()
    if name.endswith(".txt"):
        (tmp_path / "folder").mkdir()
        (tmp_path / "folder" / "good.txt").write_text("No edema.")
        (tmp_path / "folder" / name).write_bytes(content)
        with pytest.raises(ValueError, match=message):
            write_sentence_labels(tmp_path / "folder", tmp_path / "out.csv")


def test_undecodable_offset_counts_characters_split_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(labeler, "_CHUNK", 3)
    path = tmp_path / "r.txt"
    path.write_bytes("\u00e9\u00e9\u00e9\u20ac\u20ac x".encode() + b"\xff")  # 2+2+2+3+3+2 bytes before the bad one
    with pytest.raises(ValueError, match=r"byte 0xff at byte offset 14;"):
        read_report(path)
    path.write_bytes("\u20ac".encode()[:2])  # a character cut off by the end of the file
    with pytest.raises(ValueError, match=r"byte 0xe2 at byte offset 0;"):
        read_report(path)


def test_utf8_with_a_byte_order_mark_is_read_without_it(tmp_path):
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbfNo effusion.")
    (tmp_path / "bom.csv").write_bytes(b"\xef\xbb\xbfreport\nMild edema.\n")
    assert list(iter_reports(tmp_path / "bom.txt")) == ["No effusion."]
    assert list(iter_reports(tmp_path / "bom.csv")) == ["Mild edema."]


# ----- cost linear in the input -----


def test_long_inputs_are_labelled_in_linear_time():
    """Each input here took minutes with the old quadratic scans (a quadratic regression makes this test hang)."""
    n = 200_000 // 31
    sentence = "no " + "effusion, pneumothorax, edema, " * n + "but there is mild cardiomegaly"
    assert len(sentence) > 200_000
    assert _nonzero(label_sentence(sentence)) == {CM: 1}
    assert _nonzero(label_sentence("no " + "effusion " * 25_000)) == {"No Finding": 1}
    assert _nonzero(label_sentence("airspace diseases, " * 10_000)) == {OPACITY: 1}
    (only,) = label_report("There is " + "atelectasis and " * 12_000 + "possible pneumonia.")
    assert _nonzero(only[1]) == {ATEL: 1, PNA: -1}
    caps = "NO EFFUSION " * 20_000 + "seen. FINDINGS: No edema."
    assert split_sentences(caps) == ["NO EFFUSION " * 20_000 + "seen", "No edema"]
    assert extract_findings(caps) == " No edema."
    assert split_sentences("\n" * 200_000 + "Dr. " * 30_000 + "ok. " + "?" * 100_000) == [
        " ".join(["Dr."] * 30_000) + " ok"
    ]


SCOPE_PATTERNS = [
    rules._PRE_NEG_UNC_BEFORE,
    rules._PRE_NEG_UNC_AFTER,
    rules._NEG_BEFORE,
    rules._NEG_AFTER,
    rules._UNC_BEFORE,
    rules._UNC_AFTER,
    rules._PREDICATE,
    *(getattr(q, kind) for q in rules._ATTRIBUTES.values() for kind in ("negative", "positive", "uncertain")),
]
WORDS = (
    "no not without cannot can't be excluded may possible is are seen normal within limits enlarged widened "
    "heart effusion airspace diseases stable unchanged r/o rule out top-normal 1.5 , ; ? and or"
).split()


def test_span_search_matches_searching_the_slice(monkeypatch):
    """The indexed cue-scope search gives exactly what searching a slice of the sentence gives (slices start
    inside words, at list items and at the ends; spans reach across commas and clause breaks)."""
    monkeypatch.setattr(rules, "_SHORT_SPAN", -1)
    rng = random.Random(0)
    for _ in range(300):
        glue = (" ", " ", ", ", "-", "/", "'", "")
        text = rules._normalise("".join(rng.choice(WORDS) + rng.choice(glue) for _ in range(rng.randint(1, 40))))
        spans = rules._Spans(text)
        for _ in range(30):
            start, end = sorted(rng.randint(0, len(text)) for _ in range(2))
            pattern = rng.choice(SCOPE_PATTERNS)
            assert spans.search(pattern, start, end) == (pattern.search(text[start:end]) is not None), (
                text,
                start,
                end,
                pattern.pattern,
            )


def test_reach_refuses_patterns_without_a_bound():
    assert rules._reach(rules._NEG_AFTER) == 2
    for pattern in (r"(?:no )+effusion", r"(?<=no )effusion", r"[^a]*"):
        with pytest.raises(ValueError, match="no bounded reach"):
            rules._reach(re.compile(pattern))


def test_header_skips_do_not_change_the_headers_found():
    plain = re.compile(rules._HEADER.pattern.split("|(?P<skip>")[0])
    rng = random.Random(1)
    tokens = [
        "NO",
        "EFFUSION",
        "A",
        "FINAL",
        "REPORT",
        "REASON",
        "FOR",
        "EXAM",
        "FINDINGS",
        "findings",
        "x2AB",
        "\u00c9",
    ]
    glue = [" "] * 12 + [":", ": ", ":x", "\n", "\n\n", "  ", ". "]
    for _ in range(500):
        report = "".join(rng.choice(tokens) + rng.choice(glue) for _ in range(rng.randint(0, 60)))
        assert [h.span() for h in rules._headers(report)] == [h.span() for h in plain.finditer(report)], report
