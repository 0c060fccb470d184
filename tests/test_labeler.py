"""The CheXpert-style rule labeler: negation/uncertainty per mention, sentence splitting, sentence-label.csv."""

import csv

import numpy as np
import pytest

from artmed.constants import CHEXPERT_LABELS, NUM_LABELS
from artmed.data.labeler import (
    extract_findings,
    label_report,
    label_sentence,
    main,
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
    ("Bibasilar opacities, likely atelectasis, although infection cannot be excluded.",
     {OPACITY: 1, ATEL: 1, PNA: -1}, 0),
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
        "INDICATION: rule out pneumonia.\nFINDINGS: Heart is enlarged. No effusion.\nIMPRESSION: Cardiomegaly.")
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
