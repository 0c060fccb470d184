"""MedCLIP models: vision and text encoders, presets, checkpoint loading and offline tokenizers."""

from artmed.models.checkpoint import load_medclip, released_state_dict, save_medclip, save_released
from artmed.models.config import MedCLIPConfig, ResNetVisionConfig, SwinVisionConfig, TextConfig
from artmed.models.medclip import MedCLIPModel, build_medclip
from artmed.models.tokenizer import build_vocab, default_tokenizer, load_tokenizer, save_tokenizer

__all__ = [
    "MedCLIPModel",
    "MedCLIPConfig",
    "ResNetVisionConfig",
    "SwinVisionConfig",
    "TextConfig",
    "build_medclip",
    "load_medclip",
    "save_medclip",
    "save_released",
    "released_state_dict",
    "load_tokenizer",
    "save_tokenizer",
    "build_vocab",
    "default_tokenizer",
]
