"""Throughput and wall-time benchmarks: feature extraction, training, the study end to end and the report labeler."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from artmed.evaluations.bench.detection import LAYER
from artmed.evaluations.bench.machine import _release_memory
from artmed.evaluations.resources import measure

PRESET_IMAGE_SIZE = {"tiny": 64, "resnet50": 224, "swin_tiny": 224}
LABELER_SIZES = (10_000, 100_000, 1_000_000)


def _random_estimator(preset: str, device: str, batch_size: int, seed: int) -> Any:
    """A seeded, randomly initialised `preset` MedCLIP estimator with two dummy classes (bf16 autocast on CUDA)."""
    import torch

    from artmed.estimator import MedCLIPEstimator
    from artmed.models import build_medclip, default_tokenizer

    size = PRESET_IMAGE_SIZE[preset]
    tokenizer = default_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_medclip(preset, vocab_size=len(tokenizer) if preset == "tiny" else None)
    return MedCLIPEstimator(
        model,
        tokenizer,
        {"a": ["a"], "b": ["b"]},
        input_shape=(1, size, size),
        device=device,
        batch_size=batch_size,
        amp=True,
    )


def bench_extraction(
    preset: str, device: str, batches: int, warmup: int, batch_size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Images per second of ``get_activations(image_pooled)`` and ``embed_images`` on random images through a
    randomly initialised `preset` MedCLIP (bf16 autocast on CUDA, the estimator's ``amp``)."""
    size = PRESET_IMAGE_SIZE[preset]
    estimator = _random_estimator(preset, device, batch_size, seed)
    images = np.random.default_rng(seed).random((batch_size, 1, size, size), dtype=np.float32)
    calls = {
        "get_activations": lambda: estimator.get_activations(images, LAYER, batch_size=batch_size),
        "embed_images": lambda: estimator.embed_images(images, batch_size=batch_size),
    }
    record: dict[str, Any] = {
        "preset": preset,
        "image_size": size,
        "device": str(estimator.device),
        "batch_size": batch_size,
        "batches": batches,
        "warmup": warmup,
        "amp_bf16": estimator.device.type == "cuda",
    }
    peak = 0.0
    for name, call in calls.items():
        for _ in range(warmup):
            call()
        _release_memory()
        with measure() as cost:
            for _ in range(batches):
                call()
        record[f"{name}_img_s"] = batches * batch_size / cost.seconds
        peak = max(peak, cost.peak_mb)
        if cost.cuda_peak_mb is not None:
            record["cuda_peak_mb"] = max(record.get("cuda_peak_mb", 0.0), cost.cuda_peak_mb)
    record["peak_mb"] = peak
    return record


def bench_training(
    preset: str, device: str, steps: int, warmup: int, batch_size: int = 32, seed: int = 0
) -> dict[str, Any]:
    """Training images per second (and seconds per 1000 images) of unpaired ``fit`` through a randomly initialised
    `preset` MedCLIP, both encoders trained, on random images and 12-token sentences (bf16 autocast on CUDA): the
    victim's and the pre-training's cost per image; ``warmup`` untimed steps first."""
    from artmed.constants import NUM_LABELS

    size = PRESET_IMAGE_SIZE[preset]
    estimator = _random_estimator(preset, device, batch_size, seed)
    rng = np.random.default_rng(seed)
    images = rng.random((2 * batch_size, 1, size, size), dtype=np.float32)
    labels = np.eye(NUM_LABELS, dtype=np.float32)[rng.integers(0, NUM_LABELS, len(images))]
    texts = [" ".join(["left lower lobe opacity with small pleural effusion"] * 2)] * batch_size
    fit = {"texts": texts, "text_labels": labels[:batch_size], "batch_size": batch_size, "lr": 1e-5, "verbose": False}
    if warmup:
        estimator.fit(images, labels, steps=warmup, **fit)
    _release_memory()
    with measure() as cost:
        estimator.fit(images, labels, steps=steps, **fit)
    img_s = steps * batch_size / cost.seconds
    record = {
        "preset": preset,
        "image_size": size,
        "device": str(estimator.device),
        "batch_size": batch_size,
        "steps": steps,
        "warmup": warmup,
        "amp_bf16": estimator.device.type == "cuda",
        "img_s": img_s,
        "s_per_1000_images": 1000.0 / img_s,
        "peak_mb": cost.peak_mb,
    }
    if cost.cuda_peak_mb is not None:
        record["cuda_peak_mb"] = cost.cuda_peak_mb
    return record


def bench_study(preset: str, device: str, seed: int = 0) -> dict[str, Any]:
    """Wall time and peak memory of the built-in study end to end (in a temporary output folder)."""
    from artmed.evaluations.study import default_config, quick_config, run_study

    with tempfile.TemporaryDirectory(prefix="artmed-bench-study-") as folder:
        config = (quick_config if preset == "quick" else default_config)(folder, seed=seed)
        config.device = device
        _release_memory()
        with measure() as cost:
            result, _ = run_study(config, verbose=False)
        return {
            "preset": preset,
            "seconds": cost.seconds,
            "peak_mb": cost.peak_mb,
            "cells": {"models": len(result.models), "defenses": len(result.defenses)},
        }


def labeler_scaling(sizes: Sequence[int]) -> list[dict[str, Any]]:
    """Seconds (and peak memory) the report labeler takes for a one-sentence report ("no effusion, effusion, ...")
    of each size in bytes, and the ratio to the first size's seconds: linear cost keeps it near ``size_ratio``,
    quadratic cost near its square."""
    from artmed.data.labeler import label_report

    label_report("No effusion.")  # compiled patterns and caches are not part of the first size's time
    rows = []
    for size in sizes:
        report = "no " + "effusion, " * max(0, (size - 3) // 10)
        with measure() as cost:
            label_report(report)
        rows.append({"bytes": len(report), "seconds": cost.seconds, "peak_mb": cost.peak_mb})
    for row in rows:
        row["ratio"] = row["seconds"] / rows[0]["seconds"]
        row["size_ratio"] = row["bytes"] / rows[0]["bytes"]
    return rows
