"""DECREE (Feng et al., CVPR 2023, "Detecting Backdoors in Pre-trained Encoders"): a verdict on MedCLIP's image
encoder from the smallest trigger that makes it map clean images to one embedding.

A backdoored encoder sends every triggered input close to one target embedding, so a small trigger suffices to
collapse the embeddings of a whole clean set; on a clean encoder only a trigger covering much of the image (which
makes the inputs themselves alike) does. DECREE inverts such a trigger on the image encoder alone, without labels,
text or classifier head, and judges the encoder by the inverted mask's size relative to the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import torch

from artmed.defenses.base import Defense, EvaluationContext, ModelVerdict
from artmed.inputs import as_images, image_batch, normalize_pixels, num_images
from artmed.params import Bool, Check, Choice, Int, OrNone, Real, is_int, is_real
from artmed.progress import tqdm

EPSILON: float = 1e-7
"""The released code's epsilon in the tanh parametrisation ``tanh(θ) / (2 - ε) + ½`` (keeps its inverse finite)."""
ADAM_BETAS: tuple[float, float] = (0.5, 0.9)
"""Adam's betas for the trigger, as in the released code."""
LAMBDA_MAX: float = 1e5
"""λ is not multiplied past this value (released code)."""
RELEASED_LR_SCHEDULE: tuple[tuple[int, float], ...] = ((200, 0.1), (500, 0.05))
"""The released ``adjust_learning_rate`` for CLIP/ImageNet encoders: lr 0.1 from epoch 200 (0-based) and 0.05 from
epoch 500 (its CIFAR-10/STL-10 encoders switch at epochs 30 and 50)."""
MASK_CHANNELS: dict[str, int] = {"three_channel": 3, "one_channel": 1}
"""How many times ``mask_l1`` counts the (H, W) mask in ‖m‖₁: the released code repeats it over the 3 channels its
encoders see (MedCLIP's encoders repeat a grayscale image to 3 channels as well)."""


def _is_lr_schedule(value: Any) -> bool:
    """A sequence of (epoch, lr) pairs: epochs integers >= 1, strictly increasing; lrs finite and positive."""
    pairs = list(value)
    epochs = [pair[0] for pair in pairs]
    return all(
        len(pair) == 2
        and is_int(pair[0])
        and pair[0] >= 1
        and is_real(pair[1])
        and math.isfinite(pair[1])
        and pair[1] > 0
        for pair in pairs
    ) and all(a < b for a, b in zip(epochs, epochs[1:]))


def mean_pairwise_cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """Mean cosine similarity over all ordered pairs i ≠ j of the rows of ``embeddings`` (N >= 2, D):
    ``(‖Σ ê_i‖² − Σ ‖ê_i‖²) / (N (N − 1))`` with ê the L2-normalised rows (no N × N matrix)."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1)
    n = e.shape[0]
    return (e.sum(dim=0).square().sum() - e.square().sum()) / (n * (n - 1))


def _to_unit(raw: torch.Tensor) -> torch.Tensor:
    """The tanh parametrisation onto [0, 1]: ``clip(tanh(raw) / (2 - ε) + ½, 0, 1)``."""
    return (torch.tanh(raw) / (2.0 - EPSILON) + 0.5).clamp(0.0, 1.0)


def _from_unit(value: torch.Tensor) -> torch.Tensor:
    """Inverse of ``_to_unit`` on [0, 1): ``atanh((value − ½)(2 − ε))``."""
    return torch.atanh((value - 0.5) * (2.0 - EPSILON))


def stamp(x: torch.Tensor, mask: torch.Tensor, pattern: torch.Tensor) -> torch.Tensor:
    """Images (B, C, H, W) in [0, 1] with the trigger stamped: ``clip((1 − m) ⊙ x + m ⊙ p, 0, 1)``, m (H, W) and p
    (C, H, W)."""
    return ((1.0 - mask) * x + mask * pattern).clamp(0.0, 1.0)


class DECREE(Defense):
    """Invert the smallest trigger that collapses the image encoder's embeddings of clean images; flag the encoder
    when that trigger's mask is small.

    Trigger: mask m ∈ [0, 1]^{H×W} (shared by the channels) and pattern p ∈ [0, 1]^{C×H×W}, stamped on a clean x as

        x' = (1 − m) ⊙ x + m ⊙ p,        m = tanh(θ_m) / (2 − ε) + ½,        p = tanh(θ_p) / (2 − ε) + ½

    Inversion objective on a batch B of clean images, f the image encoder (MedCLIP's projected image embedding):

        L(θ_m, θ_p) = −1 / (|B| (|B| − 1)) · Σ_{i ≠ j ∈ B} cos(f(x'_i), f(x'_j)) + λ · ‖m‖₁

    minimised by Adam (betas (0.5, 0.9)) from a uniform random mask and pattern, in ``epochs`` passes over
    ``context.x_clean`` in batches of ``batch_size`` images (``batching="loader"``, the released DataLoader's:
    shuffled, the last batch smaller; a last batch of one image, whose pairwise similarity is undefined (NaN in the
    release), is left out). The learning rate is ``lr``, then from each epoch (0-based) of ``lr_schedule``'s
    (epoch, lr) pairs that pair's lr (the release's ``adjust_learning_rate``). ‖m‖₁ counts the mask on each of the 3
    channels the encoder sees (``mask_l1="three_channel"``: the release's mask is (H, W) repeated over RGB, and
    MedCLIP's encoders repeat a grayscale image to RGB), so λ weighs the mask as in the release. Mask and pattern are
    float64, as the release's, and the stamped images are cast to float32 after normalisation for the encoder. λ
    adapts each step (the released code's schedule): from ``init_lambda`` it is multiplied by ``lambda_factor`` (up
    to 1e5) after more than ``patience`` steps in a row whose similarity exceeds ``target_similarity``, divided by it
    (while >= ``lambda_min``) after more than ``patience`` steps in a row below, and reset to ``init_lambda`` after
    more than ``2·patience`` successful steps in a row below ``lambda_min``. The trigger kept has the smallest ‖m‖₁
    of the steps whose batch similarity exceeded the target. The search stops after an epoch whose mean similarity
    exceeds the target once the kept ‖m‖₁ has not improved for more than ``early_stop_patience`` steps.

    Verdict: the PL1-norm ``PL1 = ‖m‖₁ / (c·H·W)`` of the kept mask, c the channels ‖m‖₁ counts (the paper's L1 over
    the input size: the share of the image the mask covers, the same for either ``mask_l1``); the encoder is
    backdoored when ``PL1 < threshold``. When no trigger reached the target, PL1 = 1 (the full mask, which replaces
    every input by p, always reaches it). ``ModelVerdict.score = 1 − PL1`` (higher = more suspicious) and
    ``ModelVerdict.threshold = 1 − threshold`` on that scale. ``extra``: ``pl1``, ``l1`` (‖m‖₁ as ``mask_l1`` counts
    it, by default the L1 the release reports; None when no trigger reached the target), ``reached``, the kept
    ``mask`` (H, W) and ``pattern`` (C, H, W), ``similarity`` (mean pairwise cosine over all the clean images used,
    stamped with the kept trigger), ``clean_similarity`` (the same without trigger), ``steps``, ``epochs``, the
    final ``lambda`` and a per-epoch ``history`` (with each epoch's ``lr``).

    Defaults: the released code's (github.com/GiantSeaweed/DECREE 9c13b88 ``main.py``, with ``run_decree.py``'s lr and
    batch, its CLIP/ImageNet setting): target similarity 0.99, lr 0.5 then 0.1 from epoch 200 and 0.05 from epoch 500,
    batch 32 as its DataLoader batches, 1000 epochs, λ₀ 1e-3, factor 5, patience 5, λ_min 1e-7, early-stop patience
    35 (7 · patience), the 3-channel ‖m‖₁, float64 trigger; ``threshold`` 0.1 is the paper's PL1 cut-off (the
    released code reports ‖m‖₁ and applies none). The pattern has the images' channels (3 in the release's RGB).
    Options, artmed's earlier search (``DECREE(lr_schedule=None, mask_l1="one_channel", batching="equal",
    trigger_dtype="float32")`` gives its results exactly): ``lr_schedule=None``, a constant ``lr``;
    ``mask_l1="one_channel"``, ‖m‖₁ of the (H, W) mask alone (λ a third as strong against the mask);
    ``batching="equal"``, near-equal batches of at most ``batch_size`` (every image in every epoch);
    ``trigger_dtype="float32"``.

    The encoder runs in eval mode in float32 (no autocast); only θ_m and θ_p get gradients and the estimator is left
    as found. ``n_images`` (None: all) caps the clean images used (a seeded subset); ``seed`` None takes
    ``context.seed``.

    On the planted toy encoders of ``tests/test_decree.py`` (seeds 0, 1; 1000 epochs at most) the defaults give PL1
    0.134-0.143 on the clean one and 0.0052 on the backdoored one, the former options 0.141-0.145 and 0.0051-0.0053;
    the lr schedule changed PL1 only on the one run that passed epoch 200 (0.1344 with it, 0.1334 without).

    Measured with the former options on tiny MedCLIPs trained 300 steps as in the default study, with BadDist
    ("tiny" settings) on the study's corner patch (PL1 0.024 at 32 px, 0.020 at 64 px), PL1 over DECREE seeds 0-2:
    the clean encoder's embeddings are already close (mean cosine 0.64 at 32 px, 0.93 at 64 px) and a few dozen
    scattered pixels collapse them, so the clean encoder is flagged too (PL1 0.036-0.039 at 32 px, 0.014-0.017 at
    64 px). BadDist's encoders (patch-triggered cosine 0.998 and 1.000) get PL1 0.034-0.039 at 32 px (no better than
    clean; scattered masks, not the patch) and 0.001-0.010 at 64 px (below every clean run, but still scattered
    pixels, at most partly in the patch).
    The paper's encoders are large ones; on small models compare ``clean_similarity`` and a clean model's PL1.
    """

    name = "decree"
    kind = "model"
    param_rules = {
        "target_similarity": Real(0.0, 1.0, "()", text="in (0, 1)"),
        "threshold": Real(0.0, 1.0, "(]", text="a PL1-norm in (0, 1]"),
        "lr": Real(0.0, None, "()"),
        "lr_schedule": OrNone(
            Check(_is_lr_schedule, "(epoch, lr) pairs, epochs integers >= 1 increasing, lrs positive")
        ),
        "mask_l1": Choice(tuple(MASK_CHANNELS)),
        "batching": Choice(("loader", "equal")),
        "trigger_dtype": Choice(("float64", "float32")),
        "init_lambda": Real(0.0, None, "()"),
        "lambda_min": Real(0.0, None, "()"),
        "lambda_factor": Real(1.0, None, "()"),
        "batch_size": Int(4),
        "epochs": Int(1),
        "patience": Int(0),
        "early_stop_patience": Int(0),
        "n_images": OrNone(Int(2)),
        "seed": OrNone(Int(0, text="a non-negative integer")),
        "verbose": Bool(),
    }

    def __init__(
        self,
        target_similarity: float = 0.99,
        threshold: float = 0.1,
        lr: float = 0.5,
        lr_schedule: tuple[tuple[int, float], ...] | None = RELEASED_LR_SCHEDULE,
        mask_l1: str = "three_channel",
        batching: str = "loader",
        trigger_dtype: str = "float64",
        batch_size: int = 32,
        epochs: int = 1000,
        init_lambda: float = 1e-3,
        lambda_factor: float = 5.0,
        lambda_min: float = 1e-7,
        patience: int = 5,
        early_stop_patience: int = 35,
        n_images: int | None = None,
        seed: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.target_similarity = target_similarity
        self.threshold = threshold
        self.lr = lr
        self.lr_schedule = lr_schedule
        self.mask_l1 = mask_l1
        self.batching = batching
        self.trigger_dtype = trigger_dtype
        self.batch_size = batch_size
        self.epochs = epochs
        self.init_lambda = init_lambda
        self.lambda_factor = lambda_factor
        self.lambda_min = lambda_min
        self.patience = patience
        self.early_stop_patience = early_stop_patience
        self.n_images = n_images
        self.seed = seed
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def run(self, context: EvaluationContext) -> ModelVerdict:
        """Invert a trigger on ``context.estimator``'s image encoder with ``context.x_clean`` and return the verdict."""
        estimator = context.estimator
        if estimator is None:
            raise ValueError("decree needs context.estimator, the model to judge")
        if context.x_clean is None:
            raise ValueError("decree needs context.x_clean, the defender's clean images")
        seed = context.seed if self.seed is None else self.seed
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 3]))
        x = self._clean_images(context.x_clean, estimator.input_shape, rng)
        model, device = estimator.model, estimator.device
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                found = self._invert(model, x, device, rng, int(seed))
            with torch.no_grad():
                found["similarity"] = self._similarity(model, x, device, found["mask"], found["pattern"])
                found["clean_similarity"] = self._similarity(model, x, device)
        finally:
            model.train(was_training)
        height, width = x.shape[-2:]
        l1 = found.pop("l1")
        pl1 = l1 / (MASK_CHANNELS[self.mask_l1] * height * width) if found["reached"] else 1.0
        extra = {
            "pl1": pl1,
            "pl1_threshold": self.threshold,
            "l1": l1 if found["reached"] else None,
            **found,
            "mask": found["mask"].float().cpu().numpy(),
            "pattern": found["pattern"].float().cpu().numpy(),
            "n_images": x.shape[0],
            "params": self.get_params(),
        }
        return ModelVerdict(
            score=1.0 - pl1, backdoored=bool(pl1 < self.threshold), threshold=1.0 - self.threshold, extra=extra
        )

    def _clean_images(self, images: Any, shape: tuple[int, int, int], rng: np.random.Generator) -> torch.Tensor:
        """The clean images used (all, or a seeded subset of ``n_images``) as a float32 CPU tensor (N, C, H, W)."""
        images = as_images(images, shape)
        n = num_images(images)
        if n < 2:
            raise ValueError(f"decree needs at least 2 clean images in context.x_clean, got {n}")
        rows = np.arange(n)
        if self.n_images is not None and self.n_images < n:
            rows = np.sort(rng.choice(n, size=self.n_images, replace=False))
        return torch.from_numpy(np.ascontiguousarray(image_batch(images, rows, shape)))

    def _invert(
        self, model: torch.nn.Module, x: torch.Tensor, device: torch.device, rng: np.random.Generator, seed: int
    ) -> dict[str, Any]:
        """The trigger search: the kept mask, pattern and ‖m‖₁ (or the last ones when none reached the target)."""
        n, channels, height, width = x.shape
        dtype = getattr(torch, self.trigger_dtype)
        generator = torch.Generator().manual_seed(seed)
        mask_raw = _from_unit(torch.rand(height, width, generator=generator, dtype=dtype)).to(device)
        mask_raw.requires_grad_(True)
        pattern_raw = _from_unit(torch.rand(channels, height, width, generator=generator, dtype=dtype)).to(device)
        pattern_raw.requires_grad_(True)
        optimizer = torch.optim.Adam([mask_raw, pattern_raw], lr=self.lr, betas=ADAM_BETAS)
        mask_channels = MASK_CHANNELS[self.mask_l1]
        lam = self.init_lambda
        up = down = at_floor = stale = steps = 0
        best_l1, best_mask, best_pattern = math.inf, None, None
        history: list[dict[str, Any]] = []
        bar = tqdm(range(self.epochs), desc="decree", leave=False, disable=not self.verbose)
        for epoch in bar:
            for group in optimizer.param_groups:
                group["lr"] = self._epoch_lr(epoch)
            sims, l1s = [], []
            for rows in self._batches(rng.permutation(n)):
                mask, pattern = _to_unit(mask_raw), _to_unit(pattern_raw)
                stamped = stamp(x[rows].to(device, dtype), mask, pattern)
                encode_image = cast(Callable[..., torch.Tensor], model.encode_image)
                sim = mean_pairwise_cosine(encode_image(normalize_pixels(stamped).float()))
                l1 = mask.sum() * mask_channels if mask_channels > 1 else mask.sum()
                loss = -sim + lam * l1
                grads = torch.autograd.grad(loss, [mask_raw, pattern_raw])
                mask_raw.grad, pattern_raw.grad = grads
                optimizer.step()
                steps += 1
                sim_value, l1_value = float(sim.detach()), float(l1.detach())
                sims.append(sim_value)
                l1s.append(l1_value)
                success = sim_value > self.target_similarity
                if success and l1_value < best_l1:
                    best_l1, best_mask, best_pattern = l1_value, mask.detach().clone(), pattern.detach().clone()
                    stale = 0
                elif best_mask is not None:
                    stale += 1
                at_floor = at_floor + 1 if lam < self.lambda_min and success else 0
                if at_floor > 2 * self.patience:
                    lam, up, down = self.init_lambda, 0, 0
                up, down = (up + 1, 0) if success else (0, down + 1)
                if up > self.patience:
                    lam, up = (lam * self.lambda_factor if lam < LAMBDA_MAX else lam), 0
                elif down > self.patience:
                    lam, down = (lam / self.lambda_factor if lam >= self.lambda_min else lam), 0
            epoch_sim = float(np.mean(sims))
            history.append(
                {
                    "epoch": epoch + 1,
                    "lr": optimizer.param_groups[0]["lr"],
                    "similarity": epoch_sim,
                    "l1": float(np.mean(l1s)),
                    "lambda": lam,
                    "best_l1": best_l1 if best_mask is not None else None,
                }
            )
            bar.set_postfix(sim=f"{epoch_sim:.4f}", best_l1=f"{best_l1:.1f}", lam=f"{lam:.1e}")
            if epoch_sim > self.target_similarity and stale > self.early_stop_patience:
                break
        reached = best_mask is not None
        if not reached:
            best_mask, best_pattern = _to_unit(mask_raw).detach(), _to_unit(pattern_raw).detach()
        return {
            "reached": reached,
            "l1": best_l1,
            "mask": best_mask,
            "pattern": best_pattern,
            "steps": steps,
            "epochs": len(history),
            "lambda": lam,
            "history": history,
        }

    def _epoch_lr(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch``: ``lr``, or the lr of the last ``lr_schedule`` pair at or before
        it."""
        lr = self.lr
        for start, value in self.lr_schedule or ():
            if epoch >= start:
                lr = value
        return lr

    def _batches(self, order: np.ndarray) -> list[np.ndarray]:
        """One epoch's batches of the shuffled image indices ``order``: consecutive ``batch_size`` slices, without a
        last one of a single image ("loader"), or ``ceil(n / batch_size)`` near-equal parts ("equal")."""
        if self.batching == "equal":
            return np.array_split(order, math.ceil(order.size / self.batch_size))
        batches = [order[start : start + self.batch_size] for start in range(0, order.size, self.batch_size)]
        return batches if batches[-1].size > 1 else batches[:-1]

    def _similarity(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        device: torch.device,
        mask: torch.Tensor | None = None,
        pattern: torch.Tensor | None = None,
    ) -> float:
        """Mean pairwise cosine of the embeddings of all of ``x``, stamped with (mask, pattern) when given."""
        embeddings = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = x[start : start + self.batch_size].to(device)
            if mask is not None:
                assert pattern is not None  # a found trigger has both
                batch = stamp(batch.to(mask.dtype), mask, pattern)
            encode_image = cast(Callable[..., torch.Tensor], model.encode_image)
            embeddings.append(encode_image(normalize_pixels(batch).float()).float())
        return float(mean_pairwise_cosine(torch.cat(embeddings)))
