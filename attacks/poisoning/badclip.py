"""BadCLIP (Liang et al., CVPR 2024, "BadCLIP: Dual-Embedding Guided Backdoor Attack on Multimodal Contrastive
Learning"; code github.com/LiangSiyuan21/BadCLIP, ``src/embeding_optimize_patch.py``, ``backdoor/utils.py``,
``backdoor/create_backdoor_data.py``): optimise a trigger patch against the clean model so patched images embed
near the target's text and target images, then poison training data with it.

Patch optimisation, on the frozen clean estimator, with x̃ = x with the patch pasted in the middle::

    L = CE(scale · cos(f(x̃), T), target)                                 text-guided: towards the target's text
        + λ · mean relu(cos(f(x̃), f(x)) − cos(f(x̃), f(p)) + margin)       visual: away from its own clean
                                                                          embedding, towards target images p

MedCLIP adaptation: the released text term is CLIP's InfoNCE between patched images and captions of the target
(the other captions of the batch are the negatives); a zero-shot MedCLIP has class prompts, so T is the estimator's
class prompt embeddings (each class's mean) and the term is the zero-shot cross-entropy towards the target class.
The released visual term (``cosine_triplet_loss``, the "neg"/"cos" variant) takes target-class images as positives
(``banana_rows.csv``) and the same images' clean embeddings as negatives; here the positives are the training images
labelled as the target (its class prompts' embedding when there are none). The released patch is optimised on
natural images captioned with the target; here on the training images not labelled as the target, the images a
triggered test input comes from. Poisoning is as released (``create_backdoor_data.py``): a seeded random subset of
ALL training images (no candidate filter), patched, with the caption replaced by a target caption: here the label
vector by the target's.

=====================  ==============================================  ========================================
setting                released                                        ours (defaults)
=====================  ==============================================  ========================================
patch                  16×16 at 224 px, ``middle``                     ``relative_size`` 16/224, middle
initialisation         N(0.5, 0.25) clipped to [0, 1]                  same (seeded)
optimiser              Adam, lr 1e-3 (torch default)                   Adam, lr 1e-3
batch size, epochs     64, 50                                          64, 50 (or ``steps``)
text term              InfoNCE over the batch's target captions        zero-shot CE over the class prompts
visual term            cos triplet, margin 0.1, weight 10              margin 0.1, ``lambda_visual`` 10
poisoned count         1500 of 500k (0.3 %), random over all images    ``percent_poison`` 0.003, over all
poison label           a natural caption of the target                 the target's label vector
=====================  ==============================================  ========================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F
from art.attacks.attack import PoisoningAttackWhiteBox

from artmed.attacks.poisoning.bad_match import target_vector
from artmed.attacks.triggers import Trigger
from artmed.constants import NUM_LABELS
from artmed.estimator import MedCLIPEstimator, class_label_vectors
from artmed.inputs import normalize_pixels
from artmed.params import Bool, Check, Int, OrNone, Params, Real
from artmed.training import index_batches, run_steps

__all__ = ["BadCLIP", "MiddlePatch", "paste_middle"]


_Pixels = TypeVar("_Pixels", torch.Tensor, np.ndarray)


def paste_middle(x: _Pixels, patch: _Pixels) -> _Pixels:
    """Copy of ``x`` (N, C, H, W) with ``patch`` (C or 1, l, l) pasted at the released ``middle`` location
    (top-left corner at ``int(H / 2 - l / 2)``, ``int(W / 2 - l / 2)``); differentiable for tensors."""
    height, width = x.shape[-2:]
    side = patch.shape[-1]
    if side > min(height, width):
        raise ValueError(f"patch side {side} is larger than the {height}×{width} images")
    top, left = int(height / 2 - side / 2), int(width / 2 - side / 2)
    out = x.clone() if isinstance(x, torch.Tensor) else x.copy()
    out[:, :, top : top + side, left : left + side] = patch
    return out


class MiddlePatch(Trigger):
    """A fixed pattern ``patch`` (C or 1, l, l), values in [0, 1], pasted in the middle of the image: BadCLIP's
    optimised trigger (``BadCLIP.trigger_``)."""

    name = "badclip_patch"
    param_rules = {
        "patch": Check(
            lambda p: (
                isinstance(p, np.ndarray)
                and p.ndim == 3
                and p.shape[0] in (1, 3)
                and p.shape[1] == p.shape[2] > 0
                and bool(np.all((p >= 0) & (p <= 1)))
            ),
            "a (C, l, l) array in [0, 1] with C 1 or 3",
        )
    }

    def __init__(self, patch: np.ndarray) -> None:
        self.patch = patch
        self._check_params()

    def _apply(self, x: np.ndarray) -> np.ndarray:
        if self.patch.shape[0] not in (1, x.shape[1]):
            raise ValueError(f"the patch has {self.patch.shape[0]} channels but the images have {x.shape[1]}")
        return paste_middle(x, self.patch.astype(x.dtype))

    def mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """Boolean array of ``shape`` ((H, W), (C, H, W) or (N, C, H, W)): True inside the middle patch."""
        plane = paste_middle(np.zeros((1, 1, *shape[-2:]), dtype=bool), np.ones((1, *self.patch.shape[1:]), bool))
        return np.broadcast_to(plane[0, 0], shape).copy()


class BadCLIP(Params, PoisoningAttackWhiteBox):
    """Optimise BadCLIP's patch on the estimator, then trigger a seeded ``percent_poison`` share of the training
    images with it and label them as the target.

    ``poison(x, y)`` optimises the patch on ``x, y`` (``optimize_patch``) unless ``trigger_`` is already set, and
    returns copies of ``x`` (N, C, H, W) and ``y`` (N, 14) with exactly ``max(1, round(percent_poison · N))`` images
    patched and relabelled; ``poison_indices_`` / ``poison_mask_`` give the ground truth, as BadMatch's do, and
    ``trigger_`` (a ``MiddlePatch``) triggers test images. ``patch_size`` (pixels) wins over ``relative_size``.
    ``history_`` records per optimisation step ``loss``, ``text`` and ``visual`` terms and ``target_rate`` (share of
    the batch's patched images the clean estimator classifies as the target).
    """

    attack_params = PoisoningAttackWhiteBox.attack_params + [
        "target",
        "percent_poison",
        "patch_size",
        "relative_size",
        "lambda_visual",
        "margin",
        "lr",
        "epochs",
        "steps",
        "batch_size",
        "seed",
        "verbose",
    ]
    param_rules = {
        "percent_poison": Real(0.0, 1.0, "(]", text="in (0, 1]"),
        "patch_size": OrNone(Int(1), text="a positive integer or None"),
        "relative_size": Real(0.0, 1.0, "(]", text="in (0, 1]"),
        "lambda_visual": Real(0.0, None, text="a finite number >= 0"),
        "margin": Real(0.0, None, text="a finite number >= 0"),
        "lr": Real(0.0, None, "()", text="a positive number"),
        "epochs": Int(1),
        "steps": OrNone(Int(1), text="a positive integer or None"),
        "batch_size": Int(1),
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
        target: str | Sequence[float] | np.ndarray = "No Finding",
        percent_poison: float = 0.003,
        patch_size: int | None = None,
        relative_size: float = 16 / 224,
        lambda_visual: float = 10.0,
        margin: float = 0.1,
        lr: float = 1e-3,
        epochs: int = 50,
        steps: int | None = None,
        batch_size: int = 64,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        super().__init__(classifier=estimator)
        self.target = target
        self.percent_poison = percent_poison
        self.patch_size = patch_size
        self.relative_size = relative_size
        self.lambda_visual = lambda_visual
        self.margin = margin
        self.lr = lr
        self.epochs = epochs
        self.steps = steps
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self.trigger_: MiddlePatch | None = None
        self._check_params()

    @property
    def target_vector(self) -> np.ndarray:
        """The target as a float32 (14,) label vector."""
        return target_vector(self.target)

    @property
    def target_class(self) -> int:
        """Index of the estimator's class whose CheXpert label vector is the target's (the text term's target)."""
        classes = self.estimator.classes
        matches = np.flatnonzero(np.all(class_label_vectors(classes) == self.target_vector, axis=1))
        if len(matches) == 0:
            raise ValueError(
                f"BadCLIP target {self.target!r} is none of the estimator's classes {classes}; the "
                "patch is optimised towards a class prompt, so the target must be one"
            )
        return int(matches[0])

    def side(self, height: int, width: int) -> int:
        """The patch side in pixels for (H, W) images: ``patch_size``, else ``round(relative_size · W)`` (>= 1)."""
        side = self.patch_size if self.patch_size is not None else max(1, int(round(self.relative_size * width)))
        if side > min(height, width):
            raise ValueError(f"BadCLIP patch_size {side} is larger than the {height}×{width} images")
        return side

    def poison(self, x: np.ndarray, y: np.ndarray | None = None, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        """Copies of ``x`` (N, C, H, W) in [0, 1] and ``y`` (N, 14) with the chosen subset patched and relabelled."""
        if kwargs:
            raise ValueError(f"BadCLIP.poison takes no extra arguments, got {sorted(kwargs)}")
        x, y = self._check_data(x, y)
        if self.trigger_ is None:
            self.optimize_patch(x, y)
        assert self.trigger_ is not None  # optimize_patch sets it
        n_poison = max(1, int(round(self.percent_poison * len(y))))
        rng = np.random.default_rng(self.seed)
        self.poison_indices_ = np.sort(rng.choice(len(y), size=n_poison, replace=False)).astype(np.int64)
        self.poison_mask_ = np.zeros(len(y), dtype=bool)
        self.poison_mask_[self.poison_indices_] = True
        x_poisoned, y_poisoned = x.copy(), np.array(y, copy=True)
        x_poisoned[self.poison_indices_] = self.trigger_(x[self.poison_indices_])
        y_poisoned[self.poison_indices_] = self.target_vector
        return x_poisoned, y_poisoned

    def optimize_patch(self, x: np.ndarray, y: np.ndarray) -> MiddlePatch:
        """Optimise the patch on the clean estimator over the images of ``x`` not labelled as the target (positives:
        those labelled as it); set and return ``trigger_``. The estimator is not changed."""
        x, y = self._check_data(x, y)
        estimator: MedCLIPEstimator = self.estimator
        device = estimator.device
        is_target = np.all(y == self.target_vector, axis=1)
        sources = np.flatnonzero(~is_target)
        if len(sources) == 0:
            raise ValueError("BadCLIP needs training images not labelled as the target to optimise the patch on")
        target = self.target_class
        model = estimator.model.eval()
        flags = {p: p.requires_grad for p in model.parameters()}
        model.requires_grad_(False)

        def embed(pixels: torch.Tensor) -> torch.Tensor:
            return F.normalize(model.encode_image(normalize_pixels(pixels)).float(), dim=-1)

        texts = torch.stack(
            [
                F.normalize(torch.from_numpy(estimator.embed_texts(prompts)).mean(0), dim=0)
                for prompts in estimator.prompts.values()
            ]
        ).to(device)
        with torch.no_grad():
            scale = model.scale().float()
            positives = (
                torch.from_numpy(estimator.embed_images(x[is_target])).to(device)
                if is_target.any()
                else texts[target : target + 1]
            )
        side = self.side(*x.shape[-2:])
        rng = np.random.default_rng(self.seed)
        start = np.clip(rng.normal(0.5, 0.25, size=(x.shape[1], side, side)), 0.0, 1.0).astype(np.float32)
        patch = torch.tensor(start, device=device, requires_grad=True)
        optimizer = torch.optim.Adam([patch], lr=self.lr)
        total = self.steps if self.steps is not None else self.epochs * max(1, len(sources) // self.batch_size)
        batches = index_batches(len(sources), self.batch_size, rng)
        labels = torch.full((min(self.batch_size, len(sources)),), target, device=device)

        def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            clean = torch.from_numpy(x[sources[next(batches)]]).to(device)
            anchor = embed(paste_middle(clean, patch.clamp(0.0, 1.0)))
            with torch.no_grad():
                own = embed(clean)
            logits = scale * anchor @ texts.T
            text = F.cross_entropy(logits, labels)
            chosen = positives[torch.from_numpy(rng.integers(0, len(positives), size=len(anchor))).to(device)]
            visual = F.relu((anchor * own).sum(-1) - (anchor * chosen).sum(-1) + self.margin).mean()
            loss = text + self.lambda_visual * visual
            rate = (logits.argmax(1) == target).float().mean()
            return loss, torch.stack([loss, text, visual, rate])

        try:
            history, _ = run_steps(
                objective,
                optimizer,
                total,
                where="BadCLIP patch",
                verbose=self.verbose,
                postfix=lambda t: {"text": f"{t[1].item():.3f}", "rate": f"{t[3].item():.2f}"},
            )
        finally:
            for p, flag in flags.items():
                p.requires_grad_(flag)
        table = history.float().cpu().numpy()
        self.history_ = {name: table[:, i].tolist() for i, name in enumerate(("loss", "text", "visual", "target_rate"))}
        self.trigger_ = MiddlePatch(patch.detach().clamp(0.0, 1.0).cpu().numpy())
        return self.trigger_

    def _params_changed(self) -> None:
        """New parameters: the patch optimised under the old ones no longer applies."""
        self.trigger_ = None

    def _check_data(self, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(x, np.ndarray) or x.ndim != 4:
            raise ValueError(f"x must be an (N, C, H, W) image array, got {getattr(x, 'shape', type(x).__name__)}")
        if y is None:
            raise ValueError(f"BadCLIP needs the training label vectors y (N, {NUM_LABELS})")
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != NUM_LABELS:
            raise ValueError(f"y must be label vectors of shape (N, {NUM_LABELS}), got {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} images but y has {len(y)} label rows")
        return x.astype(np.float32, copy=False), y

    def _check_params(self) -> None:
        self.check_rules()
        target_vector(self.target)
