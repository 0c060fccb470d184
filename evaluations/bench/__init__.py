"""``artmed bench``: the detection benchmark against ART, throughput and study timing, and their command line.

``detection`` holds the detection benchmark, ``throughput`` the extraction, training, study and labeler timings,
``machine`` the machine info, thread caps and timing helpers, ``cli`` the options, the report and ``main``. Every name
is re-exported here; to monkeypatch one that ``main`` uses, patch it in ``cli`` (e.g. ``bench.cli.run_benchmarks``).
"""

from artmed.evaluations.bench.cli import (
    DESCRIPTION,
    DETECTION_COLUMNS,
    EXTRACTION_COLUMNS,
    LABELER_COLUMNS,
    SPECTRE_COLUMNS,
    TRAINING_COLUMNS,
    _check_args,
    _size,
    _summary_lines,
    build_parser,
    main,
    report,
    run_benchmarks,
)
from artmed.evaluations.bench.detection import (
    COMPARISONS,
    LAYER,
    LINEAR_SPREAD,
    MEMORY_BUDGET_MB,
    MIN_GROUP,
    MIN_SIZE,
    FeatureClassifier,
    Planted,
    _detectors,
    bench_detection,
    memory_check,
    scaling,
    spectre_vs_ss,
    synthetic_features,
    warm_up_detection,
)
from artmed.evaluations.bench.machine import _cpu_model, _memory_gb, _release_memory, _timed, machine_info, thread_limit
from artmed.evaluations.bench.throughput import (
    LABELER_SIZES,
    PRESET_IMAGE_SIZE,
    bench_extraction,
    bench_study,
    bench_training,
    labeler_scaling,
)

__all__ = [
    "COMPARISONS",
    "DESCRIPTION",
    "DETECTION_COLUMNS",
    "EXTRACTION_COLUMNS",
    "LABELER_COLUMNS",
    "LABELER_SIZES",
    "LAYER",
    "LINEAR_SPREAD",
    "MEMORY_BUDGET_MB",
    "MIN_GROUP",
    "MIN_SIZE",
    "PRESET_IMAGE_SIZE",
    "SPECTRE_COLUMNS",
    "TRAINING_COLUMNS",
    "FeatureClassifier",
    "Planted",
    "bench_detection",
    "bench_extraction",
    "bench_study",
    "bench_training",
    "build_parser",
    "labeler_scaling",
    "machine_info",
    "main",
    "memory_check",
    "report",
    "run_benchmarks",
    "scaling",
    "spectre_vs_ss",
    "synthetic_features",
    "thread_limit",
    "warm_up_detection",
]
