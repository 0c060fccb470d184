"""STRIP (Gao et al., ACSAC 2019, "STRIP: A Defence Against Trojan Attacks on Deep Neural Networks",
https://arxiv.org/abs/1902.06531) for MedCLIP: an inference-time input screen.

A trigger dominates the prediction of whatever image carries it, so a triggered input blended with random clean
images is still classified as the target: the predicted class distributions of its perturbed copies have low
entropy. A clean input blended with other clean images changes its prediction from copy to copy: high entropy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import entr
from scipy.stats import norm

from artmed.data.dataset import ImageSet
from artmed.defenses.base import Defense, EvaluationContext, InputScreen, load_images
from artmed.params import Bool, Choice, Int, Real
from artmed.progress import tqdm

_THRESHOLD_STREAM, _SCORE_STREAM, _SPLIT_STREAM = 1, 2, 3
"""Independent random streams (``SeedSequence([seed, stream])``): the overlays of the threshold images, the overlays
of screened inputs, and the split of the defender's clean images."""


class STRIP(Defense):
    """STRIP's entropy screen: superimpose each input with ``n_superimpose`` clean images and score the entropy of
    the model's predictions on the perturbed copies.

    For an input ``x`` and clean images ``x_1..x_N`` drawn at random from the defender's pool (``context.x_clean``),
    the n-th perturbed copy is ``x^n = min(x + x_n, 1)`` (``superimpose="add"``, the release's; see below), and with
    ``y^n_i`` the model's probability of class ``i`` (of ``M``) on it, the paper's entropies are

    * Eq. 1: ``H_n = -sum_{i=1..M} y^n_i log2 y^n_i`` (one perturbed copy),
    * Eq. 2: ``H_sum = sum_{n=1..N} H_n``,
    * Eq. 3: ``H = H_sum / N`` (the normalised entropy of ``x``).

    Low ``H`` means a triggered input; the screen's suspicion score is ``-H``. The detection boundary, as in the
    paper: the entropies of clean inputs are taken to be normal; ``H`` of held-out clean images gives its mean
    ``mu`` and standard deviation ``sigma``, and the entropy threshold is the normal's ``frr`` quantile,
    ``H_thr = mu + sigma * Phi^-1(frr)``, so that about ``frr`` of clean inputs are rejected (``H < H_thr``); the
    InputScreen's threshold is ``-H_thr`` in score units.

    ``context.x_clean`` is split once, seeded: a ``threshold_share`` of it gives the clean entropies for the
    threshold, the rest is the superimposition pool, so no image is blended with itself when the threshold is set.
    Each input gets ``n_superimpose`` pool images drawn independently and uniformly (``overlays="replacement"``, the
    release's ``np.random.randint``), so one may repeat. ``score(x)`` is deterministic: every call draws from the
    same seeded stream, so the i-th input of any batch gets the same overlays (a clean test image and its triggered
    copy are perturbed alike).

    Released choices (github.com/garrisongys/STRIP, ``STRIP_CIFAR10DeepArchit_Tb.ipynb``: ``superimpose``,
    ``entropyCal`` and the threshold cell) are the defaults: N = ``n_superimpose`` = 100 overlays per input, drawn
    with replacement, entropies and the normal-fit threshold at FRR 1 % as above. The release superimposes with
    ``cv2.addWeighted(x, 1, x_n, 1, 0)`` on float32 images in [0, 1], a plain sum (OpenCV saturates integer types
    only) that its model, trained on [0, 1] images and on the unclipped sums of image and trigger, sees in [0, 2].
    artmed's estimators take pixels in [0, 1] (MedCLIPEstimator clips anything above), so ``"add"`` is that sum
    clipped at 1: what the estimator would make of the release's sum, and what ``cv2.addWeighted`` gives on uint8
    images. Options, artmed's earlier behaviour (``STRIP(n_superimpose=20, superimpose="blend",
    overlays="distinct")`` gives its results exactly): ``superimpose="blend"``, the convex blend
    ``alpha * x + (1 - alpha) * x_n`` (``alpha`` is used by "blend" only; ART's STRIP blends so too; at
    ``alpha = 0.5`` the release's sum halved, inside the pixel range without clipping); ``overlays="distinct"``,
    distinct pool images per input (with replacement only when the pool is smaller); ``n_superimpose=20``, ART's
    ``num_samples`` default, a fifth of the forward passes: every screened input costs ``n_superimpose`` of them.
    The model's predictions run in chunks of ``batch_size`` perturbed images (a chunk holds whole inputs); the
    estimator is only asked to predict.

    ART's STRIP (``art.defences.transformer.poisoning.STRIP``, 1.20) differs: it takes scipy's entropy along axis 0,
    per class across the N copies, instead of Eq. 1 per copy, which ranks a trigger's consistent predictions as
    high-entropy (measured on a backdoored tiny MedCLIP: it rejects none of the triggered inputs); its
    ``false_acceptance_rate`` is the quantile this class calls ``frr``.
    """

    name = "strip"
    kind = "input"
    param_rules = {
        "n_superimpose": Int(1),
        "superimpose": Choice(("add", "blend")),
        "overlays": Choice(("replacement", "distinct")),
        "batch_size": Int(1),
        "seed": Int(0),
        "alpha": Real(0.0, 1.0, "()"),
        "frr": Real(0.0, 1.0, "()"),
        "threshold_share": Real(0.0, 1.0, "()"),
        "verbose": Bool(),
    }

    def __init__(
        self,
        n_superimpose: int = 100,
        superimpose: str = "add",
        overlays: str = "replacement",
        alpha: float = 0.5,
        frr: float = 0.01,
        threshold_share: float = 0.5,
        batch_size: int = 256,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        self.n_superimpose = n_superimpose
        self.superimpose = superimpose
        self.overlays = overlays
        self.alpha = alpha
        self.frr = frr
        self.threshold_share = threshold_share
        self.batch_size = batch_size
        self.seed = seed
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()

    def run(self, context: EvaluationContext) -> InputScreen:
        """Split ``context.x_clean``, set the entropy threshold on one part and return the screen that superimposes
        inputs with the other."""
        estimator = context.estimator
        if estimator is None or not callable(getattr(estimator, "predict", None)):
            raise ValueError("strip needs context.estimator, the model whose inputs it screens")
        if context.x_clean is None:
            raise ValueError(
                "strip needs context.x_clean: the defender's clean images (superimposition pool and threshold images)"
            )
        n = len(context.x_clean)
        n_threshold = int(round(self.threshold_share * n))
        if n_threshold < 2 or n - n_threshold < 1:
            raise ValueError(
                f"strip: {n} clean images split by threshold_share={self.threshold_share} leave "
                f"{n_threshold} for the threshold (need 2) and {n - n_threshold} for superimposition "
                "(need 1)"
            )
        order = np.random.default_rng(np.random.SeedSequence([self.seed, _SPLIT_STREAM])).permutation(n)
        threshold_idx, pool_idx = np.sort(order[:n_threshold]), np.sort(order[n_threshold:])
        pool = load_images(context.x_clean, pool_idx)
        clean_entropy = self.entropy(estimator, _subset(context.x_clean, threshold_idx), pool, _THRESHOLD_STREAM)
        mean, std = float(clean_entropy.mean()), float(clean_entropy.std())
        entropy_threshold = float(norm.ppf(self.frr, loc=mean, scale=std)) if std > 0 else mean

        def score(x: np.ndarray | ImageSet) -> np.ndarray:
            """Suspicion ``-H`` (Eq. 3) of each input: higher = lower entropy = more likely triggered."""
            return -self.entropy(estimator, x, pool, _SCORE_STREAM)

        extra: dict[str, Any] = {
            "entropy_threshold": entropy_threshold,
            "clean_entropy_mean": mean,
            "clean_entropy_std": std,
            "clean_entropies": clean_entropy,
            "n_threshold": n_threshold,
            "n_pool": int(pool_idx.size),
            "params": self.get_params(),
        }
        return InputScreen(score=score, threshold=-entropy_threshold, extra=extra)

    def entropy(self, estimator: Any, x: np.ndarray | ImageSet, pool: np.ndarray, stream: int) -> np.ndarray:
        """STRIP's normalised entropy ``H`` (Eqs. 1-3, in bits) of each image of ``x`` (N, C, H, W), superimposed
        with ``n_superimpose`` images of ``pool`` drawn from the random stream ``stream`` of the seed."""
        n, n_pool, copies = len(x), len(pool), self.n_superimpose
        if n == 0:
            raise ValueError("strip: no inputs to screen (x is empty)")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, stream]))
        per_call = max(1, self.batch_size // copies)
        out = np.empty(n, dtype=np.float64)
        for start in tqdm(range(0, n, per_call), desc="STRIP entropy", leave=False, disable=not self.verbose):
            rows = np.arange(start, min(start + per_call, n))
            images = load_images(x, rows)
            if images.shape[1:] != pool.shape[1:]:
                raise ValueError(
                    f"strip: inputs of shape {images.shape[1:]} cannot be superimposed with the clean "
                    f"images of shape {pool.shape[1:]}"
                )
            replace = self.overlays == "replacement" or n_pool < copies
            overlays = np.stack([rng.choice(n_pool, size=copies, replace=replace) for _ in rows])
            if self.superimpose == "add":
                perturbed = np.minimum(images[:, None] + pool[overlays], np.float32(1.0))  # (B, N, C, H, W)
            else:
                perturbed = self.alpha * images[:, None] + (1.0 - self.alpha) * pool[overlays]
            probs = np.asarray(
                estimator.predict(perturbed.reshape(-1, *images.shape[1:]), batch_size=self.batch_size),
                dtype=np.float64,
            ).reshape(len(rows), copies, -1)
            out[rows] = entr(probs).sum(axis=2).mean(axis=1) / np.log(2.0)  # entr(p) = -p ln p, 0 at p = 0
        return out


def _subset(images: np.ndarray | ImageSet, indices: np.ndarray) -> np.ndarray | ImageSet:
    """The images at ``indices``, lazily for an ImageSet."""
    return images.subset(indices) if isinstance(images, ImageSet) else images[indices]
