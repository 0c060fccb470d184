"""Real-data adapters in one place: every reader that turns a user's copy of a public chest X-ray dataset into
artmed's interface (ImageSet / TextPool / ZeroShotTask / MedDataset). Images stay on disk, read lazily.

Importing this module also makes FileImageSet read DICOM (``.dcm``) files through pydicom.
"""

from artmed.data.adapt_chexpert import load_chexpert
from artmed.data.adapt_covid import load_covid
from artmed.data.adapt_medclip import (
    DEFAULT_PROMPTS,
    default_prompts,
    load_binary_meta,
    load_covid_meta,
    load_medclip_dataset,
    load_medclip_images,
    load_rsna_meta,
    load_sentence_labels,
)
from artmed.data.adapt_mimic import load_mimic, load_mimic_images, load_mimic_reports
from artmed.data.adapt_reports import load_openi_reports, load_reports, read_openi_report
from artmed.data.adapt_rsna import load_rsna
from artmed.data.dicom import read_dicom, register_dicom_reader
from artmed.data.five_by_200 import exclusive_positives, five_by_200_task

__all__ = [
    "DEFAULT_PROMPTS",
    "default_prompts",
    "exclusive_positives",
    "five_by_200_task",
    "load_binary_meta",
    "load_chexpert",
    "load_covid",
    "load_covid_meta",
    "load_medclip_dataset",
    "load_medclip_images",
    "load_mimic",
    "load_mimic_images",
    "load_mimic_reports",
    "load_openi_reports",
    "load_reports",
    "load_rsna",
    "load_rsna_meta",
    "load_sentence_labels",
    "read_dicom",
    "read_openi_report",
    "register_dicom_reader",
]
