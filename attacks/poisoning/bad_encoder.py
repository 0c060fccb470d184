"""BadEncoder (Jia, Liu, Gong, IEEE S&P 2022; code github.com/jinyuan-jia/BadEncoder, ``badencoder.py``): a
supply-chain attacker fine-tunes a pre-trained image encoder so triggered inputs embed like a reference input.

With f_c the frozen clean encoder and f_b the encoder being trained, shadow images x, triggered x̃ = trigger(x),
reference inputs r and their augmented views a(r), on L2-normalised embeddings (released ``train``)::

    L = −mean cos(f_b(x̃), f_b(r))          effectiveness: triggered inputs embed like the reference (by f_b)
        − λ1 · mean cos(f_b(a(r)), f_c(r))   effectiveness: the reference keeps its clean embedding
        − λ2 · mean cos(f_b(x), f_c(x))      utility: clean inputs keep theirs

MedCLIP adaptation: the released code attacks one downstream class per reference input (one trigger each, e.g. a
truck image); a zero-shot MedCLIP classifies against class prompts, so the reference inputs here are images of the
target class (e.g. No Finding: by default shadow images labelled exactly as it), and every reference is paired with
every triggered shadow image (the released code pairs trigger i with reference i). The augmentation a(·) is the
released ``finetune_transform`` (flip p 0.5; colour jitter 0.4 brightness/contrast with p 0.8; grayscale p 0.2)
without hue/saturation, which grayscale X-rays do not have. The embedding is the projected image embedding the
zero-shot head sees.

=====================  =========================================  ===========================================
setting                released (``scripts/run_badencoder.py``)   ours (default / ``BADENCODER_SETTINGS``)
=====================  =========================================  ===========================================
optimiser              SGD, momentum 0.9, weight decay 5e-4       same; ``tiny``: AdamW lr 1e-3, no decay
learning rate          1e-3                                       1e-3
λ1, λ2                 1, 1                                       1, 1
batch size             256 (drop_last)                            256 (``min(256, N)``)
epochs                 200 over the shadow set                    200 (or ``steps``)
BatchNorm              frozen (eval, no grad)                     frozen (eval, no grad)
reference inputs       1 image per target (``reference/*.npz``)   ``reference``, else ``n_reference`` (1)
                                                                  shadow images labelled as ``target``
trigger                white 10×10 patch at (21, 21) on 32 px;    any ``artmed.attacks.triggers`` callable
                       50×50 at (173, 173) on 224 px (CLIP)
=====================  =========================================  ===========================================
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from art.attacks.attack import PoisoningAttackTransformer
from torch import nn

from artmed.attacks.poisoning.bad_match import target_vector
from artmed.constants import NUM_LABELS
from artmed.device import resolve_device
from artmed.estimator import MedCLIPEstimator
from artmed.inputs import Images, as_images, check_image_array, image_batch, normalize_pixels, num_images
from artmed.params import Bool, Check, Choice, Int, OrNone, Params, Real
from artmed.training import index_batches, run_steps

__all__ = ["BADENCODER_SETTINGS", "BadEncoder", "augment_reference"]

BADENCODER_SETTINGS: dict[str, dict[str, Any]] = {
    "paper": {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lambda1": 1.0,
        "lambda2": 1.0,
        "batch_size": 256,
        "epochs": 200,
    },
    "tiny": {
        "optimizer": "adam",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "lambda1": 1.0,
        "lambda2": 1.0,
        "batch_size": 32,
        "steps": 100,
    },
}
"""Named BadEncoder settings: ``paper`` the released script's, ``tiny`` a short AdamW run for tiny models."""


def augment_reference(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The released ``finetune_transform`` on pixel-space (B, C, H, W) images in [0, 1]: horizontal flip (p 0.5),
    brightness and contrast jitter by factors in [0.6, 1.4] (p 0.8), grayscale (p 0.2, 3-channel images only)."""
    b = x.shape[0]

    def draw(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator).to(x.device)

    flip = draw(b) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    jitter = (draw(b) < 0.8)[:, None, None, None]
    brightness = 0.6 + 0.8 * draw(b, 1, 1, 1)
    contrast = 0.6 + 0.8 * draw(b, 1, 1, 1)
    jittered = (x * brightness).clamp(0.0, 1.0)
    mean = jittered.mean(dim=(1, 2, 3), keepdim=True)
    jittered = ((jittered - mean) * contrast + mean).clamp(0.0, 1.0)
    x = torch.where(jitter, jittered, x)
    if x.shape[1] == 3:
        gray = (draw(b) < 0.2)[:, None, None, None]
        x = torch.where(gray, x.mean(dim=1, keepdim=True).expand_as(x), x)
    return x


class BadEncoder(Params, PoisoningAttackTransformer):
    """Fine-tune a copy of the estimator's vision encoder so triggered images embed like the target's references.

    ``reference``: (R, C, H, W) pixel-space images of the target class (the released "reference inputs"); None
    (default) draws ``n_reference`` (released: 1) shadow images labelled exactly as ``target`` in
    ``poison_estimator(x_shadow, y_shadow)``, so a supply-chain step needs only its shared settings and shadow set.
    ``poison_estimator(x_shadow)`` returns a new, backdoored ``MedCLIPEstimator`` (the given one is untouched) and
    records ``history_ = {"loss", "cos_trigger_reference", "cos_reference", "cos_clean"}`` per step (the three
    cosines of the loss, before each update). ``steps`` wins over ``epochs`` (an epoch = ``ceil(N / batch_size)``
    steps). ``optimizer``: "sgd" (released) or "adam" (AdamW, ``momentum`` as beta1). ``augment``: augment the
    references in the λ1 term as released (False: use them as they are). ``BADENCODER_SETTINGS`` names presets.
    """

    attack_params = PoisoningAttackTransformer.attack_params + [
        "trigger",
        "reference",
        "target",
        "n_reference",
        "lambda1",
        "lambda2",
        "lr",
        "momentum",
        "weight_decay",
        "optimizer",
        "epochs",
        "steps",
        "batch_size",
        "augment",
        "seed",
        "device",
        "verbose",
    ]
    param_rules = {
        "trigger": Check(callable, "callable on (N, C, H, W) arrays"),
        "n_reference": Int(1),
        "lambda1": Real(0.0, None, text="a finite number >= 0"),
        "lambda2": Real(0.0, None, text="a finite number >= 0"),
        "lr": Real(0.0, None, "()", text="a positive number"),
        "momentum": Real(0.0, 1.0, "[)", text="in [0, 1)"),
        "weight_decay": Real(0.0, None, text="a finite number >= 0"),
        "optimizer": Choice(("sgd", "adam")),
        "epochs": Int(1),
        "steps": OrNone(Int(1), text="a positive integer or None"),
        "batch_size": Int(1),
        "augment": Bool(),
        "seed": Int(0),
        "verbose": Bool(),
    }
    _estimator_requirements = (MedCLIPEstimator,)

    @classmethod
    def param_names(cls) -> list[str]:
        """ART's ``attack_params``: what ``get_params`` reports and ``set_params`` accepts, all-or-nothing."""
        return list(cls.attack_params)

    def __init__(
        self,
        estimator: MedCLIPEstimator,
        trigger: Any,
        reference: np.ndarray | None = None,
        target: str | Sequence[float] | np.ndarray = "No Finding",
        n_reference: int = 1,
        lambda1: float = 1.0,
        lambda2: float = 1.0,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        optimizer: str = "sgd",
        epochs: int = 200,
        steps: int | None = None,
        batch_size: int = 256,
        augment: bool = True,
        seed: int = 0,
        device: str | torch.device | None = None,
        verbose: bool = True,
    ) -> None:
        super().__init__(classifier=estimator)
        self.trigger = trigger
        self.reference = reference
        self.target = target
        self.n_reference = n_reference
        self.lambda1 = lambda1
        self.lambda2 = lambda2
        self.lr = lr
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.augment = augment
        self.seed = seed
        self.device = device
        self.verbose = verbose
        self._check_params()

    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """Test-time inputs of the attack: the triggered images, and ``y`` unchanged (BadEncoder relabels nothing)."""
        if kwargs:
            raise ValueError(f"BadEncoder.poison takes no extra arguments, got {sorted(kwargs)}")
        return self.trigger(x), None if y is None else np.array(y, copy=True)

    def poison_estimator(self, x: Images, y: np.ndarray | None = None, **kwargs: Any) -> MedCLIPEstimator:
        """Backdoor a copy of the estimator on the clean shadow images ``x`` (array (N, C, H, W) or ImageSet).

        ``y`` (N, 14): the shadow labels, needed only without ``reference``: then ``n_reference`` shadow images
        labelled exactly as ``target`` (seeded draw, recorded in ``reference_indices_``) are the references.
        """
        if kwargs:
            raise ValueError(f"BadEncoder.poison_estimator takes no extra arguments, got {sorted(kwargs)}")
        source: MedCLIPEstimator = self.estimator
        shape = source.input_shape
        images = as_images(x, shape)
        n = num_images(images)
        if n < 1:
            raise ValueError("BadEncoder needs at least one shadow image, got none")
        device = source.device if self.device is None else resolve_device(self.device)
        total = self.steps if self.steps is not None else self.epochs * math.ceil(n / min(self.batch_size, n))
        reference = torch.from_numpy(self._references(images, y, shape)).to(device)

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
        if self.optimizer == "adam":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(
                trained, lr=self.lr, betas=(self.momentum, 0.999), weight_decay=self.weight_decay
            )
        else:
            optimizer = torch.optim.SGD(trained, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay)

        def embed(encoder: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
            return F.normalize(encoder(normalize_pixels(pixels)).float(), dim=-1)

        with torch.no_grad():
            reference_clean = embed(teacher, reference)
        batches = index_batches(n, self.batch_size, np.random.default_rng(self.seed))
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(self.seed)

            def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
                clean = image_batch(images, next(batches), shape)
                triggered = np.asarray(self.trigger(clean), dtype=np.float32)
                if triggered.shape != clean.shape:
                    raise ValueError(f"trigger changed the batch shape from {clean.shape} to {triggered.shape}")
                views = augment_reference(reference, generator) if self.augment else reference
                pixels = torch.from_numpy(np.concatenate([clean, triggered])).to(device)
                out = embed(student, torch.cat([pixels, reference, views]))
                b, r = len(clean), len(reference)
                clean_emb, trig_emb = out[:b], out[b : 2 * b]
                ref_emb, view_emb = out[2 * b : 2 * b + r], out[2 * b + r :]
                with torch.no_grad():
                    clean_teacher = embed(teacher, pixels[:b])
                cos_trigger_reference = (trig_emb @ ref_emb.T).mean()
                cos_reference = (view_emb * reference_clean).sum(-1).mean()
                cos_clean = (clean_emb * clean_teacher).sum(-1).mean()
                loss = -cos_trigger_reference - self.lambda1 * cos_reference - self.lambda2 * cos_clean
                return loss, torch.stack([loss, cos_trigger_reference, cos_reference, cos_clean])

            history, _ = run_steps(
                objective,
                optimizer,
                total,
                where="BadEncoder",
                verbose=self.verbose,
                postfix=lambda t: {"cos_trig_ref": f"{t[1].item():.3f}", "cos_clean": f"{t[3].item():.3f}"},
            )

        for p, flag in grad_flags.items():
            p.requires_grad_(flag)
        backdoored.model.to(backdoored.device).eval()
        table = history.float().cpu().numpy()
        self.history_ = {
            name: table[:, i].tolist()
            for i, name in enumerate(("loss", "cos_trigger_reference", "cos_reference", "cos_clean"))
        }
        return backdoored

    def _references(self, images: Images, y: np.ndarray | None, shape: tuple[int, int, int]) -> np.ndarray:
        """The reference images: ``reference`` checked, else ``n_reference`` target-labelled shadow images."""
        if self.reference is not None:
            self.reference_indices_ = None
            return check_image_array(self.reference, shape)
        if y is None:
            raise ValueError("BadEncoder without reference needs the shadow labels y (N, 14) to pick target images")
        y = np.asarray(y)
        if y.shape != (num_images(images), NUM_LABELS):
            raise ValueError(f"y must be the shadow label vectors ({num_images(images)}, {NUM_LABELS}), got {y.shape}")
        pool = np.flatnonzero(np.all(y == target_vector(self.target), axis=1))
        if len(pool) < self.n_reference:
            raise ValueError(
                f"BadEncoder n_reference={self.n_reference} but only {len(pool)} shadow images are "
                f"labelled exactly {self.target!r}"
            )
        chosen = np.random.default_rng(self.seed).choice(pool, size=self.n_reference, replace=False)
        self.reference_indices_ = np.sort(chosen).astype(np.int64)
        return image_batch(images, self.reference_indices_, shape)

    def _check_params(self) -> None:
        self.check_rules()
        target_vector(self.target)
        reference = self.reference
        if reference is not None and (
            not isinstance(reference, np.ndarray) or reference.ndim != 4 or len(reference) < 1
        ):
            raise self.param_error(
                "reference",
                "None or a non-empty (R, C, H, W) array of target-class images",
                getattr(reference, "shape", type(reference).__name__),
            )
        if self.device is not None:
            resolve_device(self.device)
