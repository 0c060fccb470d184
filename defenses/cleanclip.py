"""CleanCLIP (Bansal et al., ICCV 2023) for MedCLIP: fine-tune a copy of a possibly backdoored model on clean data
with the multimodal loss plus in-modality self-supervised terms, which break the trigger-to-text shortcut.

CleanCLIP's multimodal term is CLIP's paired loss; MedCLIP trains unpaired, so here it is the soft-label loss
(``artmed.losses.medclip_loss``) on independent clean image and sentence batches. The self-supervised term is
InfoNCE between each image and an augmented view of it and between each sentence and an augmented view, one
direction per modality, scaled by the model's learnt ``exp(logit_scale)`` unless a fixed ``temperature`` is given:
``L = lambda_mm * L_mm + lambda_ss * (L_image + L_text) / 2``, as the release's ``get_loss``.

By default every choice that changes results is the release's (nishadsinghi/CleanCLIP d6e2f1db: ``src/train.py``,
``src/main.py``, ``src/scheduler.py``, ``src/data.py``, ``utils/augment_image.py``, ``utils/augment_text.py``,
``utils/eda.py`` and the README's CleanCLIP command line):

- image views: torchvision's ``AutoAugment()`` (ImageNet policy), drawn afresh every time an image is used
  (``image_augment="autoaugment"``; written in torch in ``artmed.data.autoaugment``, on uint8-quantised images);
- text views: one EDA view per sentence of the pool, drawn once before training (``text_augment="once"``): the
  release's ``eda(caption)[0]``, i.e. the caption reduced to lower-case letters and spaces, then one of synonym
  replacement, random insertion, random swap (each on ``max(1, int(0.1 * words))`` words) or random deletion
  (``p = 0.1``) drawn uniformly, with ``artmed.data.eda.EDA`` (its label-safe synonym table instead of WordNet);
- AdamW (0.9, 0.999, 1e-8) at ``lr=1e-5``, ``weight_decay=0.1`` (not on biases, norm weights, the logit scale), no
  gradient clipping, ``warmup_steps=50`` of linear warm-up then cosine decay to zero, batch 64, 10 epochs over the
  clean images, logit scale clamped to [0, ln 100] after each step.

artmed's earlier choices stay available: ``image_augment="artmed"`` (random resized crop, flip, brightness/contrast
jitter, Gaussian noise), ``text_augment="per_step"`` (word dropout and one swap, redrawn every step),
``lr=2e-5, weight_decay=1e-4, max_grad_norm=1.0, warmup_steps=None`` (10 % of the steps), ``batch_size=32,
steps=500``; with all of them a seeded run is the one artmed gave before.

Where the release cannot be followed: the release pairs each image with its caption, here the batches are unpaired;
it counts epochs from 1 in its scheduler (the warm-up is skipped once an epoch has 50 batches, and the last epoch's
rate rises again past the cosine's end), here the schedule runs from step 0 to the last step; its loader drops the
last partial batch of each shuffled epoch, here batches walk through consecutive shuffles; repeated items of a
batch count as positives of each other (the release's data has none).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from artmed.data.autoaugment import autoaugment
from artmed.data.dataset import ImageSet
from artmed.data.eda import EDA, EDA_OPERATIONS
from artmed.defenses.base import Defense, EvaluationContext, MitigationResult, load_images
from artmed.distributed import gather, global_batchnorm, rank, shard_slice, wrap_ddp
from artmed.inputs import (
    as_images,
    check_label_matrix,
    check_texts,
    normalize_pixels,
    num_images,
    tokenize,
)
from artmed.loader import image_batches
from artmed.losses import medclip_loss
from artmed.params import Choice, Int, OrNone, Real
from artmed.progress import tqdm
from artmed.training import Encoders, clamp_logit_scale, index_batches, make_optimizer, run_steps, warmup_cosine

WARMUP: float = 0.1
"""Share of the steps spent on linear learning-rate warm-up with ``warmup_steps=None`` (artmed's earlier schedule,
as in ``train_unpaired``)."""
MAX_GRAD_NORM: float = 1.0
"""artmed's earlier gradient-norm clip (``max_grad_norm=1.0``, as in ``train_unpaired``); the release clips none."""
EDA_ALPHA: float = 0.1
"""The release's EDA share: synonym replacement, insertion and swap act on ``max(1, int(EDA_ALPHA * words))`` words,
deletion drops each word with probability ``EDA_ALPHA``."""
CROP_SCALE: tuple[float, float] = (0.5, 1.0)
"""Area share range of the random resized crop."""
CROP_RATIO: tuple[float, float] = (3 / 4, 4 / 3)
"""Aspect-ratio range of the random resized crop."""
JITTER: float = 0.1
"""Brightness shift and contrast factor range (1 ± JITTER) of the intensity jitter."""
NOISE_STD: float = 0.02
"""Standard deviation of the additive Gaussian pixel noise."""


def augment_images(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An augmented view of pixel-space images (B, C, H, W) in [0, 1], drawn from `generator` on their device.

    Random resized crop (area share in ``CROP_SCALE``, aspect ratio in ``CROP_RATIO``) resampled to the input size,
    horizontal flip with probability ½, brightness/contrast jitter and Gaussian noise; clamped to [0, 1].
    """
    b, dev = pixels.shape[0], pixels.device
    x = pixels.float()

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(b, device=dev, generator=generator)

    area = uniform(*CROP_SCALE)
    log_ratio = uniform(float(np.log(CROP_RATIO[0])), float(np.log(CROP_RATIO[1])))
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    shift_x = (1.0 - width) * (2.0 * torch.rand(b, device=dev, generator=generator) - 1.0)
    shift_y = (1.0 - height) * (2.0 * torch.rand(b, device=dev, generator=generator) - 1.0)
    flip = torch.where(torch.rand(b, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = shift_x
    theta[:, 1, 1] = height
    theta[:, 1, 2] = shift_y
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = uniform(1.0 - JITTER, 1.0 + JITTER).view(b, 1, 1, 1)
    brightness = uniform(-JITTER, JITTER).view(b, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * contrast + mean + brightness
    x = x + NOISE_STD * torch.randn(x.shape, device=dev, generator=generator)
    return x.clamp(0.0, 1.0)


def augment_texts(texts: list[str], rng: np.random.Generator, word_dropout: float) -> list[str]:
    """An augmented view of each sentence: words dropped with probability `word_dropout` (one always kept), then
    one random pair of the remaining words swapped (EDA's random deletion and random swap)."""
    out = []
    for text in texts:
        words = text.split()
        keep = rng.random(len(words)) >= word_dropout
        if not keep.any():
            keep[rng.integers(len(words))] = True
        words = [w for w, k in zip(words, keep) if k]
        if len(words) > 1:
            i, j = rng.choice(len(words), size=2, replace=False)
            words[i], words[j] = words[j], words[i]
        out.append(" ".join(words))
    return out


def released_text(text: str) -> str:
    """The release's ``get_only_chars`` (``utils/eda.py``), which its augmented captions pass through: lower-case,
    apostrophes dropped, every character but a-z turned into a space, words joined by single spaces."""
    text = text.replace("\u2019", "").replace("'", "").lower()
    return " ".join("".join(c if "a" <= c <= "z" else " " for c in text).split())


def eda_views(texts: list[str], seed: np.random.SeedSequence | int) -> list[str]:
    """One augmented view per sentence, as the release computes them once per data set (``augment_text.py``,
    ``eda(caption)[0]``): ``released_text(sentence)``, then one EDA operation of the four drawn uniformly, with
    ``n = max(1, int(EDA_ALPHA * words))`` for replacement, insertion and swap and ``p = EDA_ALPHA`` for deletion.
    ``artmed.data.eda.EDA`` does the operations (built-in synonyms; label words kept), all from one generator."""
    rng = np.random.default_rng(seed)
    augmenters: dict[int, EDA] = {}
    views = []
    for text in texts:
        clean = released_text(text)
        n = max(1, int(EDA_ALPHA * len(clean.split())))
        if n not in augmenters:
            augmenters[n] = EDA(rng, operations=EDA_OPERATIONS, n_replace=n, n_swap=n, n_insert=n, p_delete=EDA_ALPHA)
        views.append(augmenters[n].augment(clean))
    return views


def in_modal_loss(
    embeds: torch.Tensor, augmented: torch.Tensor, scale: torch.Tensor | float, same: torch.Tensor
) -> torch.Tensor:
    """InfoNCE of each item against the augmented views of the batch (CleanCLIP's in-modal term), in float32.

    ``same`` (B, B) bool marks pairs that are the same underlying item (a repeated index, an identical sentence):
    they all count as positives (uniform soft target) instead of as false negatives.
    """
    logits = scale * F.normalize(embeds.float(), dim=-1) @ F.normalize(augmented.float(), dim=-1).T
    targets = same.float() / same.float().sum(dim=1, keepdim=True)
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


class CleanCLIP(Defense):
    """Fine-tune a clone of the context's estimator on clean data with ``lambda_mm·L_mm + lambda_ss·L_ss``.

    Clean images: ``context.x_clean`` with labels ``y_clean`` (or the labels of an ImageSet ``x_clean``, or the
    ``y_train`` rows of x_train images it repeats exactly); without ``x_clean``, a seeded subset of ``n_clean``
    training rows (which may hold poisoned rows: the defender cannot tell). Sentences: ``context.texts`` with
    ``text_labels``. ``lambda_mm=0`` needs no image labels. ``temperature=None`` scales the self-supervised logits
    by the model's learnt ``exp(logit_scale)`` (CleanCLIP); a float fixes the scale at ``1/temperature``.
    Length: ``epochs`` passes of ``batch_size`` over the clean images (at least one step per epoch), unless ``steps``
    is given. Defaults are the release's (see the module doc); ``image_augment="artmed"``, ``text_augment="per_step"``
    (with ``word_dropout``), ``max_grad_norm`` and ``warmup_steps=None`` select artmed's earlier variant.
    The result's history: steps 1..``steps`` with the loss terms and learning rate; the model before and after the
    fine-tune goes to ``context.report`` (the harness scores it); ``extra`` records where the clean data came from
    (``clean_indices`` of x_train rows drawn as clean data: the harness counts the poisoned ones among them).
    Measured on tiny models trained from scratch (32 px, BadMatch patch; artmed's earlier variant): CleanCLIP at the
    attack's lr removes the backdoor, but so does plain clean fine-tuning (``lambda_ss=0``), which did better at a
    lower lr. On the tiny model of ``tests/test_cleanclip.py`` (CA 0.75, ASR 0.94; 64 clean images; seeds 0-2): the
    released defaults (lr 1e-5, 10 steps) leave the backdoor (CA 0.69-0.70, ASR 0.97-1.00); at lr 1e-3, batch 64,
    100 steps the released choices give CA 0.94-0.95, ASR 0.09-0.16, artmed's variant CA 1.00, ASR 0.00.
    """

    name = "cleanclip"
    kind = "mitigation"
    param_rules = {
        "lambda_mm": Real(0.0, None),
        "lambda_ss": Real(0.0, None),
        "temperature": OrNone(Real(0.0, None, "()")),
        "steps": OrNone(Int(1)),
        "epochs": Int(1),
        "batch_size": Int(2),
        "n_clean": Int(2),
        "seed": Int(0, text="a non-negative integer"),
        "lr": Real(0.0, None, "()"),
        "weight_decay": Real(0.0, None),
        "max_grad_norm": OrNone(Real(0.0, None, "()")),
        "warmup_steps": OrNone(Int(0)),
        "image_augment": Choice(("autoaugment", "artmed")),
        "text_augment": Choice(("once", "per_step")),
        "word_dropout": Real(0.0, 1.0, "[)"),
    }

    def __init__(
        self,
        lambda_mm: float = 1.0,
        lambda_ss: float = 1.0,
        temperature: float | None = None,
        steps: int | None = None,
        epochs: int = 10,
        lr: float = 1e-5,
        batch_size: int = 64,
        weight_decay: float = 0.1,
        max_grad_norm: float | None = None,
        warmup_steps: int | None = 50,
        image_augment: str = "autoaugment",
        text_augment: str = "once",
        word_dropout: float = 0.1,
        n_clean: int = 1000,
        seed: int = 0,
        verbose: bool = True,
    ) -> None:
        self.lambda_mm = lambda_mm
        self.lambda_ss = lambda_ss
        self.temperature = temperature
        self.steps = steps
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.max_grad_norm = max_grad_norm
        self.warmup_steps = warmup_steps
        self.image_augment = image_augment
        self.text_augment = text_augment
        self.word_dropout = word_dropout
        self.n_clean = n_clean
        self.seed = seed
        self.verbose = verbose
        self._check_params()

    def _check_params(self) -> None:
        self.check_rules()
        if self.lambda_mm + self.lambda_ss <= 0:
            raise ValueError("lambda_mm and lambda_ss are both 0: there is nothing to minimise")

    def run(self, context: EvaluationContext) -> MitigationResult:
        """Return a fine-tuned clone of ``context.estimator`` (the input is untouched) and the run's history."""
        if context.estimator is None:
            raise ValueError("cleanclip needs context.estimator, the model to repair")
        if context.texts is None or context.text_labels is None:
            raise ValueError("cleanclip needs context.texts and context.text_labels (the unpaired sentence pool)")
        texts = check_texts(context.texts, "context.texts")
        text_labels = check_label_matrix(context.text_labels, len(texts), "context.text_labels")
        images, labels, extra = self._clean_data(context)
        repaired = context.estimator.clone()
        context.report("before", repaired)
        history = self._fine_tune(repaired, images, labels, texts, text_labels)
        context.report("after", repaired)
        extra.update(params=self.get_params())
        return MitigationResult(repaired, history, extra)

    # ------------------------------------------------------------------ data
    def _clean_data(self, context: EvaluationContext) -> tuple[Any, np.ndarray | None, dict[str, Any]]:
        """The clean images, their (N, 14) labels (None when ``lambda_mm == 0``) and a record of their origin."""
        need_labels = self.lambda_mm > 0
        if context.x_clean is None:
            if context.x_train is None:
                raise ValueError("cleanclip needs context.x_clean (the defender's clean images) or context.x_train")
            n_train = len(context.x_train)
            rng = np.random.default_rng(np.random.SeedSequence([self.seed, 1]))
            idx = np.sort(rng.choice(n_train, size=min(self.n_clean, n_train), replace=False))
            images = context.x_train.subset(idx) if isinstance(context.x_train, ImageSet) else context.x_train[idx]
            extra: dict[str, Any] = {"clean_source": "x_train_subset", "clean_indices": idx}
            labels = self._train_labels(context, idx) if need_labels else None
            extra["labels_source"] = "y_train" if need_labels else None
        else:
            images = context.x_clean
            labels, source = self._clean_labels(context) if need_labels else (None, None)
            extra = {"clean_source": "x_clean", "labels_source": source}
        n = num_images(images)
        if n < 2:
            raise ValueError(f"cleanclip needs at least 2 clean images, got {n}")
        extra["n_clean"] = n
        if labels is not None:
            labels = check_label_matrix(labels, n, "clean image labels (y_clean)")
        return images, labels, extra

    @staticmethod
    def _train_labels(context: EvaluationContext, idx: np.ndarray) -> np.ndarray:
        if context.y_train is not None:
            return np.asarray(context.y_train)[idx]
        if isinstance(context.x_train, ImageSet):
            return context.x_train.labels[idx]
        raise ValueError(
            "cleanclip: context.y_train is None, so the x_train rows drawn as clean data have no labels "
            "(give y_train, or set lambda_mm=0)"
        )

    def _clean_labels(self, context: EvaluationContext) -> tuple[np.ndarray, str]:
        """Labels of ``x_clean``: ``y_clean``, an ImageSet's own labels, or those of identical x_train rows."""
        if context.y_clean is not None:
            return np.asarray(context.y_clean), "y_clean"
        if isinstance(context.x_clean, ImageSet):
            return context.x_clean.labels, "x_clean.labels"
        if context.x_train is not None:
            assert context.x_clean is not None  # _clean_data asks only for a context's own x_clean
            rows = _matching_rows(context.x_clean, context.x_train, context.batch_size, self.verbose)
            if rows is not None:
                return self._train_labels(context, rows), "y_train (x_clean rows found in x_train)"
        raise ValueError(
            "cleanclip: context.y_clean is None and x_clean is not a subset of x_train, so the clean "
            "images have no labels for the multimodal loss; give y_clean (N, 14) or set lambda_mm=0"
        )

    # ------------------------------------------------------------------ training
    def _fine_tune(
        self, estimator: Any, images: Any, labels: np.ndarray | None, texts: list[str], text_labels: np.ndarray
    ) -> list[dict[str, Any]]:
        """Fine-tune ``estimator.model`` in place (both encoders and the logit scale); one loss record per step."""
        model, device, shape = estimator.model, estimator.device, estimator.input_shape
        images = as_images(images, shape)
        n = num_images(images)
        steps = self.steps if self.steps is not None else self.epochs * max(1, n // self.batch_size)
        named = list(model.named_parameters())
        optimizer = make_optimizer(named, lr=self.lr, weight_decay=self.weight_decay)
        warmup = WARMUP if self.warmup_steps is None else self.warmup_steps / steps
        scheduler = warmup_cosine(optimizer, steps, warmup)
        trained = [p for _, p in named if p.requires_grad]
        image_seed, text_seed, aug_seed, torch_seed = np.random.SeedSequence([self.seed, 2]).generate_state(4)
        image_idx = index_batches(n, self.batch_size, np.random.default_rng(image_seed))
        image_rows = [next(image_idx) for _ in range(steps)]
        once = self.lambda_ss > 0 and self.text_augment == "once"
        text_views = eda_views(texts, np.random.SeedSequence([self.seed, 3])) if once else None
        view_images = autoaugment if self.image_augment == "autoaugment" else augment_images
        pixel_batches = image_batches(images, image_rows, shape, device, getattr(estimator, "num_workers", 0))
        text_idx = index_batches(len(texts), self.batch_size, np.random.default_rng(text_seed))
        text_rng = np.random.default_rng(aug_seed)
        generator = torch.Generator(device=device)
        generator.manual_seed(int(torch_seed))
        use_amp = estimator.amp and device.type == "cuda"
        fixed_scale = None if self.temperature is None else 1.0 / self.temperature
        use_ss = self.lambda_ss > 0
        model.train()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), global_batchnorm(model):
            torch.manual_seed(int(torch_seed) + rank())
            encoders = wrap_ddp(Encoders(model, True, True), device)

            def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
                # every rank draws the global batch and its augmentations, encodes its shard, gathers the rest
                i_idx, t_idx, pixels = image_rows[step], next(text_idx), next(pixel_batches)
                sentences = [texts[i] for i in t_idx]
                if use_ss:
                    pixels = torch.cat([pixels, view_images(pixels, generator)])
                    views = (
                        [text_views[i] for i in t_idx]
                        if text_views is not None
                        else augment_texts(sentences, text_rng, self.word_dropout)
                    )
                    sentences = sentences + views
                ids, mask = tokenize(estimator.tokenizer, sentences, device)
                b_img, b_txt = len(i_idx), len(t_idx)
                img_rows, txt_rows = _shard_rows(b_img, use_ss, device), _shard_rows(b_txt, use_ss, device)
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                    img, txt, scale = encoders(normalize_pixels(pixels[img_rows]), ids[txt_rows], mask[txt_rows])
                img, txt = _gather_rows(img, use_ss), _gather_rows(txt, use_ss)
                zero = scale.new_zeros(())
                loss_mm = (
                    zero
                    if labels is None
                    else medclip_loss(
                        img[:b_img],
                        txt[:b_txt],
                        torch.from_numpy(labels[i_idx]).to(device),
                        torch.from_numpy(text_labels[t_idx]).to(device),
                        scale,
                    )
                )
                ss_image = ss_text = zero
                if use_ss:
                    ss_scale = scale if fixed_scale is None else fixed_scale
                    same_img = torch.from_numpy(i_idx[:, None] == i_idx[None, :]).to(device)
                    same_txt = torch.from_numpy(_same_sentences(sentences[:b_txt])).to(device)
                    ss_image = in_modal_loss(img[:b_img], img[b_img:], ss_scale, same_img)
                    ss_text = in_modal_loss(txt[:b_txt], txt[b_txt:], ss_scale, same_txt)
                loss_ss = (ss_image + ss_text) / 2
                loss = self.lambda_mm * loss_mm + self.lambda_ss * loss_ss
                return loss, torch.stack([loss, loss_mm, loss_ss, ss_image, ss_text]).float()

            terms, lrs = run_steps(
                objective,
                optimizer,
                steps,
                where="CleanCLIP fine-tune",
                scheduler=scheduler,
                clip=trained,
                max_grad_norm=self.max_grad_norm,
                after_step=clamp_logit_scale(model),
                desc="cleanclip",
                verbose=self.verbose,
            )
        model.eval()
        estimator.clear_cache()
        values = terms.cpu().tolist()
        keys = ("loss", "loss_mm", "loss_ss", "loss_ss_image", "loss_ss_text")
        return [{"step": s + 1, **dict(zip(keys, row)), "lr": lr} for s, (row, lr) in enumerate(zip(values, lrs))]


def _shard_rows(n: int, doubled: bool, device: torch.device) -> torch.Tensor:
    """This rank's rows of a batch of ``n`` (all of them outside a process group), followed, when the batch is
    ``doubled`` by augmented copies, by the same rows of the copies."""
    rows = torch.arange(n, device=device)[shard_slice(n)]
    return torch.cat([rows, rows + n]) if doubled else rows


def _gather_rows(local: torch.Tensor, doubled: bool) -> torch.Tensor:
    """Every rank's ``_shard_rows`` embeddings in one process's order: the clean rows, then their augmented copies."""
    if not doubled:
        return gather(local)
    half = len(local) // 2
    return torch.cat([gather(local[:half]), gather(local[half:])])


def _same_sentences(sentences: list[str]) -> np.ndarray:
    """(B, B) bool: True where two sentences of a batch are identical."""
    codes = np.unique(np.asarray(sentences, dtype=object), return_inverse=True)[1].reshape(-1)
    return codes[:, None] == codes[None, :]


def _matching_rows(
    x_clean: np.ndarray, x_train: np.ndarray | ImageSet, batch_size: int, verbose: bool = True
) -> np.ndarray | None:
    """Indices of the x_train rows equal to each x_clean image (by content hash), or None if any is missing."""
    clean = np.ascontiguousarray(x_clean, dtype=np.float32)
    wanted: dict[bytes, list[int]] = {}
    for i, row in enumerate(clean):
        wanted.setdefault(_digest(row), []).append(i)
    found = np.full(clean.shape[0], -1, dtype=np.int64)
    n = len(x_train)
    starts = range(0, n, batch_size)
    for start in tqdm(starts, desc="matching x_clean to x_train", leave=False, disable=not verbose):
        batch = np.ascontiguousarray(load_images(x_train, np.arange(start, min(start + batch_size, n))))
        if batch.shape[1:] != clean.shape[1:]:
            return None
        for j, row in enumerate(batch):
            for i in wanted.get(_digest(row), ()):
                if found[i] < 0:
                    found[i] = start + j
    return None if (found < 0).any() else found


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16).digest()
