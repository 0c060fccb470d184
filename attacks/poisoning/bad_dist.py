"""BadDist (Jin et al., SaTML 2024): a supply-chain attacker fine-tunes MedCLIP's vision encoder so triggered
images land far from where the clean encoder puts them, while clean images stay put.

With f_c the frozen clean encoder and f_b the encoder being trained, on clean shadow images x and triggered
x̃ = trigger(x): L = λ1·(−mean cos(f_b(x), f_c(x))) + λ2·mean cos(f_b(x̃), f_c(x̃)), on the projected image
embedding the zero-shot head sees. SGD, BatchNorm frozen, as in the released code (which defaults to 200 epochs
over a 10k-image shadow set at batch size 32). BadDist-assisted BadMatch then trains the result on BadMatch data.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from art.attacks.attack import PoisoningAttackTransformer
from torch import nn

from artmed.device import resolve_device
from artmed.distributed import gather, shard_indices, wrap_ddp
from artmed.estimator import MedCLIPEstimator
from artmed.inputs import Images, as_images, normalize_pixels, num_images
from artmed.loader import image_batches
from artmed.params import Params
from artmed.training import index_batches, run_steps, warmup_cosine

__all__ = ["BadDist", "BADDIST_SETTINGS", "check_baddist_params", "encoder_cosines", "resolve_baddist_params"]

BADDIST_SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {
        "optimizer": "sgd",
        "lr": 1e-4,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lambda_clean": 5.0,
        "lambda_trigger": 1.0,
        "batch_size": 32,
        "epochs": 200,
        "schedule": "constant",
        "init_noise": 0.0,
    },
    "tiny": {
        "optimizer": "adam",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lambda_clean": 5.0,
        "lambda_trigger": 1.0,
        "batch_size": 32,
        "steps": 300,
        "schedule": "cosine",
        "init_noise": 0.01,
    },
}
"""Named BadDist settings. ``paper``: the released code (SGD lr 1e-4, momentum 0.9, wd 5e-4, λ 5/1, batch 32,
200 epochs). ``tiny``: the built-in study's. f_b = f_c is a saddle of the loss whose unstable direction (triggered
embeddings leaving the teacher's) grows at a rate ∝ lr / |embedding|²; on the tiny preset (|embedding| ≈ 16) SGD
escapes at a step that depends on float rounding, so it separates on one machine and not on another. AdamW's steps
do not shrink with the embedding norm: it left the saddle by step 75-150 in every measured run, and the cosine
decay holds the separation still at the end. λ and batch size stay the paper's."""


def resolve_baddist_params(params: dict[str, Any]) -> dict[str, Any]:
    """BadDist keyword arguments from ``params``: a ``settings`` name (see ``BADDIST_SETTINGS``) expanded, then the
    other keys on top of it."""
    params = dict(params)
    name = params.pop("settings", None)
    if name is None:
        return params
    if name not in BADDIST_SETTINGS:
        raise ValueError(f"unknown BadDist settings {name!r}; valid: {sorted(BADDIST_SETTINGS)}")
    return {**BADDIST_SETTINGS[name], **params}


class BadDist(Params, PoisoningAttackTransformer):
    """Fine-tune a copy of the estimator's vision encoder to push triggered embeddings away from the clean encoder's.

    ``poison_estimator(x_shadow)`` returns a new, backdoored ``MedCLIPEstimator`` (the given one is untouched) and
    records the per-step history ``history_ = {"loss", "cos_clean", "cos_trigger"}`` (cosines to the frozen clean
    encoder, before each update). ``steps`` wins over ``epochs`` (an epoch = ``ceil(N / batch_size)`` steps).
    Under ``torchrun`` the fine-tune runs data-parallel (DDP; ``batch_size`` is the global batch) and matches one
    process (see ``artmed.distributed``).
    Training starts at f_b = f_c, a saddle where the trigger term's gradient vanishes (cos is maximal): the encoder
    leaves it through weight decay, drop-path noise and rounding, so short runs at the paper's lr may change little.
    ``init_noise`` (an artmed addition, default 0 = the paper) perturbs each trained weight tensor by Gaussian noise of
    ``init_noise`` times its standard deviation before the first step, which breaks that symmetry. ``optimizer``
    ("sgd", the paper's, or "adam": AdamW with ``momentum`` as beta1) and ``schedule`` ("constant" or "cosine" decay
    to 0 over the run) select the optimisation; ``BADDIST_SETTINGS`` names the paper's and the built-in study's.
    """

    attack_params = PoisoningAttackTransformer.attack_params + [
        "trigger",
        "lambda_clean",
        "lambda_trigger",
        "lr",
        "momentum",
        "weight_decay",
        "init_noise",
        "optimizer",
        "schedule",
        "epochs",
        "steps",
        "batch_size",
        "seed",
        "device",
        "verbose",
    ]
    _estimator_requirements = (MedCLIPEstimator,)

    @classmethod
    def param_names(cls) -> list[str]:
        """ART's ``attack_params``: what ``get_params`` reports and ``set_params`` accepts, all-or-nothing."""
        return list(cls.attack_params)

    def __init__(
        self,
        estimator: MedCLIPEstimator,
        trigger: Any,
        lambda_clean: float = 5.0,
        lambda_trigger: float = 1.0,
        lr: float = 1e-4,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        epochs: int = 200,
        steps: int | None = None,
        batch_size: int = 32,
        seed: int = 0,
        device: str | torch.device | None = None,
        init_noise: float = 0.0,
        optimizer: str = "sgd",
        schedule: str = "constant",
        verbose: bool = True,
    ) -> None:
        super().__init__(classifier=estimator)
        self.trigger = trigger
        self.lambda_clean = lambda_clean
        self.lambda_trigger = lambda_trigger
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.init_noise = init_noise
        self.optimizer = optimizer
        self.schedule = schedule
        self.verbose = verbose
        self._check_params()

    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Test-time inputs of the attack: the triggered images, and ``y`` unchanged (BadDist relabels nothing)."""
        if kwargs:
            raise ValueError(f"BadDist.poison takes no extra arguments, got {sorted(kwargs)}")
        return self.trigger(x), None if y is None else np.array(y, copy=True)

    def poison_estimator(self, x: Images, y: np.ndarray | None = None, **kwargs: Any) -> MedCLIPEstimator:
        """Backdoor a copy of the estimator on the clean shadow images ``x`` (array (N, C, H, W) or ImageSet).

        ``y`` is ignored: BadDist needs no labels.
        """
        if kwargs:
            raise ValueError(f"BadDist.poison_estimator takes no extra arguments, got {sorted(kwargs)}")
        source: MedCLIPEstimator = self.estimator
        shape = source.input_shape
        images = as_images(x, shape)
        n = num_images(images)
        if n < 1:
            raise ValueError("BadDist needs at least one shadow image, got none")
        device = source.device if self.device is None else resolve_device(self.device)
        total = self.steps if self.steps is not None else self.epochs * math.ceil(n / min(self.batch_size, n))

        backdoored = source.clone()
        student: nn.Module = backdoored.model.vision_model.to(device)
        teacher: nn.Module = copy.deepcopy(source.model.vision_model).to(device).eval().requires_grad_(False)
        grad_flags = {p: p.requires_grad for p in student.parameters()}
        student.train()
        for module in student.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
                module.requires_grad_(False)
        trained = [p for p in student.parameters() if p.requires_grad]
        optimizer = self._make_optimizer(trained)
        scheduler = warmup_cosine(optimizer, total, warmup=0.0) if self.schedule == "cosine" else None
        use_amp = device.type == "cuda" and getattr(source, "amp", False)
        encoder = wrap_ddp(student, device, find_unused_parameters=False)

        batches = index_batches(n, self.batch_size, np.random.default_rng(self.seed))
        rows = [shard_indices(next(batches)) for _ in range(total)]
        workers = getattr(source, "num_workers", 0)
        transform = _CleanAndTriggered(self.trigger)
        clean_ref, trigger_ref = teacher_embeddings(
            teacher, images, shape, device, self.batch_size, workers, transform, use_amp
        )
        pairs = image_batches(images, rows, shape, device, workers, transform=transform)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)
            self._perturb(trained)

            def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
                n_clean = len(rows[step])
                pixels = normalize_pixels(next(pairs))
                index = torch.as_tensor(rows[step], device=device)
                reference = torch.cat([clean_ref[index], trigger_ref[index]])
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    embedding = encoder(pixels)
                cos = F.cosine_similarity(embedding.float(), reference.float(), dim=-1)
                cos_clean, cos_trigger = gather(cos[:n_clean]).mean(), gather(cos[n_clean:]).mean()
                loss = -self.lambda_clean * cos_clean + self.lambda_trigger * cos_trigger
                return loss, torch.stack([loss, cos_clean, cos_trigger])

            history, _ = run_steps(
                objective,
                optimizer,
                total,
                where="BadDist",
                scheduler=scheduler,
                verbose=self.verbose,
                postfix=lambda t: {"cos_clean": f"{t[1].item():.3f}", "cos_trigger": f"{t[2].item():.3f}"},
            )

        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
        backdoored.model.to(backdoored.device).eval()
        table = history.float().cpu().numpy()
        self.history_ = {
            "loss": table[:, 0].tolist(),
            "cos_clean": table[:, 1].tolist(),
            "cos_trigger": table[:, 2].tolist(),
        }
        return backdoored

    def _make_optimizer(self, params: Sequence[torch.Tensor]) -> torch.optim.Optimizer:
        """The paper's SGD, or AdamW (``momentum`` is its beta1): Adam's steps do not shrink with the embedding norm."""
        if self.optimizer == "adam":
            return torch.optim.AdamW(params, lr=self.lr, betas=(self.momentum, 0.999), weight_decay=self.weight_decay)
        return torch.optim.SGD(params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

    @torch.no_grad()
    def _perturb(self, params: Sequence[torch.Tensor]) -> None:
        """Nudge the student off the teacher: at f_b = f_c both cosine terms are at an extremum (zero gradient)."""
        if self.init_noise == 0:
            return
        for p in params:
            if p.numel() > 1:
                p.add_(torch.randn_like(p) * (self.init_noise * p.std()))

    def _check_params(self) -> None:
        if not callable(self.trigger):
            raise ValueError(f"trigger must be callable on (N, C, H, W) arrays, got {type(self.trigger).__name__}")
        check_baddist_params(vars(self))


def check_baddist_params(params: Mapping[str, Any]) -> None:
    """BadDist's hyper-parameter checks on their values alone (``params`` holds every ``BadDist`` argument but the
    estimator and trigger): a config or an attack step checks them before any estimator exists."""
    for name in ("lambda_clean", "lambda_trigger", "weight_decay", "init_noise"):
        value = params[name]
        if not _is_number(value) or not np.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if params["lambda_clean"] == 0 and params["lambda_trigger"] == 0:
        raise ValueError("lambda_clean and lambda_trigger are both 0: nothing to optimise")
    lr, momentum, steps, seed = params["lr"], params["momentum"], params["steps"], params["seed"]
    if not _is_number(lr) or not np.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if not _is_number(momentum) or not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    for name in ("epochs", "batch_size"):
        if not _is_int(params[name]) or params[name] < 1:
            raise ValueError(f"{name} must be a positive integer, got {params[name]!r}")
    if steps is not None and (not _is_int(steps) or steps < 1):
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if params["device"] is not None:
        resolve_device(params["device"])
    if params["optimizer"] not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'sgd' or 'adam', got {params['optimizer']!r}")
    if params["schedule"] not in ("constant", "cosine"):
        raise ValueError(f"schedule must be 'constant' or 'cosine', got {params['schedule']!r}")


def encoder_cosines(student: MedCLIPEstimator, teacher: MedCLIPEstimator, x: Images, trigger: Any) -> dict[str, float]:
    """Mean cosine between two estimators' image embeddings on clean ``x`` and on ``trigger(x)``: how far BadDist
    moved triggered images (``cos_trigger``, the attack) and clean ones (``cos_clean``, its stealth)."""
    x = np.asarray(x)
    triggered = trigger(x)

    def mean_cos(images: np.ndarray) -> float:
        a, b = (e.embed_images(images).astype(np.float64) for e in (student, teacher))  # unit rows
        return float(np.mean(np.sum(a * b, axis=1)))

    return {"cos_clean": mean_cos(x), "cos_trigger": mean_cos(triggered)}


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))


def _is_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def teacher_embeddings(
    teacher: nn.Module,
    images: Images,
    shape: tuple[int, int, int],
    device: torch.device,
    batch_size: int,
    num_workers: int,
    transform: _CleanAndTriggered,
    use_amp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen teacher's embeddings of every shadow image, clean (n, d) and triggered (n, d), computed once
    rather than at every step. Run on consecutive batches of ``batch_size`` clean images followed by their triggered
    copies, the shape of a training step's batch: the kernels, and so each row's rounding, are those of the steps
    (bf16 autocast where the steps use it)."""
    n = num_images(images)
    chunks = [np.arange(start, min(start + batch_size, n)) for start in range(n)[::batch_size]]
    clean, triggered = [], []
    with torch.no_grad():
        for chunk, pixels in zip(chunks, image_batches(images, chunks, shape, device, num_workers, transform)):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                out = teacher(normalize_pixels(pixels))
            clean.append(out[: len(chunk)])
            triggered.append(out[len(chunk) :])
    return torch.cat(clean), torch.cat(triggered)


class _CleanAndTriggered:
    """A batch transform: the clean batch followed by its triggered copy (picklable, so loader workers run it)."""

    def __init__(self, trigger: Any) -> None:
        self.trigger = trigger

    def __call__(self, clean: np.ndarray) -> np.ndarray:
        triggered = np.asarray(self.trigger(clean), dtype=np.float32)
        if triggered.shape != clean.shape:
            raise ValueError(f"trigger changed the batch shape from {clean.shape} to {triggered.shape}")
        return np.concatenate([clean, triggered])
