"""Constants shared by every part of artmed: the CheXpert label order and MedCLIP's image statistics."""

CHEXPERT_LABELS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
NUM_LABELS: int = len(CHEXPERT_LABELS)

# MedCLIP's preprocessing: single channel, normalised with these statistics after padding and resizing.
IMAGE_MEAN: float = 0.5862785803043838
IMAGE_STD: float = 0.27950088968644304
IMAGE_SIZE: int = 224
TEXT_MAX_LENGTH: int = 77
