"""Data: phantom radiographs, generated reports, zero-shot tasks, real-data adapters, the report labeler."""

from artmed.data.dataset import (
    ArrayImageSet,
    FileImageSet,
    ImageSet,
    MedDataset,
    SubsetImageSet,
    TextPool,
    ZeroShotTask,
    register_reader,
)
from artmed.data.default import make_default_dataset
from artmed.data.phantom import PhantomGenerator, sample_labels
from artmed.data.phantom_plot import save_phantom_grid
from artmed.data.reports import finding_phrases, make_text_pool, report_corpus
from artmed.data.tasks import TASK_NAMES, make_task, task_prompts
