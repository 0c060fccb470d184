"""MedCLIP's unpaired training, and the one optimisation loop (``run_steps``), optimiser and schedule that every
trainer in artmed shares (BadDist and CleanCLIP run their objectives through it; fine-pruning fine-tunes with fit).

Each step draws an image batch and an *independent* text batch and minimises the soft-label loss
(``artmed.losses.medclip_loss``); AdamW without decay on biases and norm weights, linear warm-up then cosine
decay, gradient clipping, bf16 autocast on CUDA only. Seeded: the same seed gives the same run.
Inside a ``torchrun`` process group the loop runs data-parallel (DDP) and matches one process with the same global
batch (see ``artmed.distributed``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from artmed.data.eda import EDA
from artmed.data.report_sampling import ReportSampler
from artmed.distributed import (
    gather,
    global_batchnorm,
    is_distributed,
    is_main_process,
    rank,
    shard_indices,
    shard_slice,
    world_size,
    wrap_ddp,
)
from artmed.inputs import (
    Images,
    as_images,
    check_label_matrix,
    check_texts,
    normalize_pixels,
    num_images,
    tokenize,
)
from artmed.loader import image_batches
from artmed.losses import medclip_loss
from artmed.models.medclip import LOGIT_SCALE_MAX, MedCLIPModel
from artmed.progress import tqdm


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict[str, Any]]:
    """Split parameters into a decayed group and an undecayed one (biases, norm weights, scalars: ndim <= 1)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]], lr: float = 2e-5, weight_decay: float = 1e-4
) -> torch.optim.AdamW:
    """AdamW over ``named_params`` with no weight decay on biases and LayerNorm/BatchNorm weights."""
    return torch.optim.AdamW(param_groups(named_params, weight_decay), lr=lr)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.1
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over the first ``warmup`` share of ``total_steps``, then cosine decay to zero."""
    warm = int(round(warmup * total_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, total_steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def index_batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Endless batches of ``min(batch_size, n)`` indices, walking through fresh random permutations of ``range(n)``."""
    size = min(batch_size, n)
    buffer = np.empty(0, dtype=np.int64)
    while True:
        while buffer.shape[0] < size:
            buffer = np.concatenate([buffer, rng.permutation(n)])
        yield buffer[:size]
        buffer = buffer[size:]


class Encoders(nn.Module):
    """One step's forward (image and text embeddings, temperature) as a module, so DDP can wrap and sync it; the
    encoders not trained run without gradients."""

    def __init__(self, model: nn.Module, train_vision: bool, train_text: bool) -> None:
        super().__init__()
        self.model: Any = model  # a MedCLIPModel or a module with its encode_image / encode_text / scale
        self.train_vision = train_vision
        self.train_text = train_text

    def forward(
        self,
        pixels: torch.Tensor,
        ids: torch.Tensor,
        mask: torch.Tensor,
        aug_ids: torch.Tensor | None = None,
        aug_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(image, text, scale) embeddings; with ``aug_ids`` also the augmented texts' embeddings, last."""
        with torch.set_grad_enabled(self.train_vision):
            img_emb = self.model.encode_image(pixels)
        with torch.set_grad_enabled(self.train_text):
            txt_emb = self.model.encode_text(ids, mask)
            if aug_ids is not None:
                return img_emb, txt_emb, self.model.scale(), self.model.encode_text(aug_ids, aug_mask)
        return img_emb, txt_emb, self.model.scale()


def _check_train_params(
    batch_size: int,
    text_batch_size: int,
    lr: float,
    weight_decay: float,
    warmup: float,
    max_grad_norm: float | None,
    steps: int | None,
    nb_epochs: int | None,
    schedule_epochs: int | None = None,
) -> None:
    if batch_size < 2 or text_batch_size < 2:
        raise ValueError(f"batch sizes must be >= 2, got batch_size={batch_size}, text_batch_size={text_batch_size}")
    if lr <= 0 or weight_decay < 0:
        raise ValueError(f"need lr > 0 and weight_decay >= 0, got lr={lr}, weight_decay={weight_decay}")
    if not 0.0 <= warmup < 1.0:
        raise ValueError(f"warmup must be a share in [0, 1), got {warmup}")
    if max_grad_norm is not None and max_grad_norm <= 0:
        raise ValueError(f"max_grad_norm must be positive or None, got {max_grad_norm}")
    if steps is None and nb_epochs is None:
        raise ValueError("give steps or nb_epochs")
    if (steps is not None and steps < 1) or (steps is None and nb_epochs is not None and nb_epochs < 1):
        raise ValueError(f"steps and nb_epochs must be >= 1, got steps={steps}, nb_epochs={nb_epochs}")
    if schedule_epochs is not None and (
        isinstance(schedule_epochs, bool) or not isinstance(schedule_epochs, int) or schedule_epochs < 1
    ):
        raise ValueError(f"schedule_epochs must be a positive integer or None, got {schedule_epochs!r}")


class NonFiniteLossError(FloatingPointError):
    """Training diverged: the loss at a step was NaN or infinite (a model trained on it would score as garbage)."""


def check_loss(loss: torch.Tensor, step: int, where: str) -> None:
    """Raise ``NonFiniteLossError`` naming ``where``, the (1-based) step and the value when ``loss`` is not finite."""
    if not bool(torch.isfinite(loss.detach()).all()):
        raise NonFiniteLossError(
            f"{where}: the loss is {loss.item()} at step {step + 1}; training diverged "
            "(lower the learning rate, or check the inputs for NaN)"
        )


def run_steps(
    objective: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    steps: int,
    *,
    where: str,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    clip: Sequence[torch.Tensor] = (),
    max_grad_norm: float | None = None,
    after_step: Callable[[], None] | None = None,
    desc: str | None = None,
    verbose: bool = False,
    postfix: Callable[[torch.Tensor], dict[str, str]] | None = None,
) -> tuple[torch.Tensor, list[float]]:
    """The optimisation loop every trainer here shares (unpaired training, BadDist, CleanCLIP).

    Per step: ``objective(step)`` returns the loss to minimise and a 1-d tensor of terms to record; a non-finite loss
    raises ``NonFiniteLossError`` naming ``where``; then zero the gradients, backward, clip the ``clip`` parameters
    to ``max_grad_norm`` (when given), step the optimiser and the ``scheduler``, and run ``after_step`` (e.g. clamp the
    logit scale). Returns the (steps, T) recorded terms and the learning rate each step used. A progress bar named
    ``desc`` shows ``postfix(terms)`` every 10 steps when ``verbose`` (on the main process only).
    """
    records: list[torch.Tensor] = []
    lrs: list[float] = []
    bar = tqdm(range(steps), desc=desc or where, leave=False, disable=not (verbose and is_main_process()))
    for step in bar:
        loss, terms = objective(step)
        check_loss(loss, step, where)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(clip, max_grad_norm)
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        records.append(terms.detach())
        if verbose and postfix is not None and step % 10 == 0:
            bar.set_postfix(postfix(terms))
    return torch.stack(records), lrs


def clamp_logit_scale(model: nn.Module) -> Callable[[], None]:
    """An ``after_step`` for ``run_steps``: keep MedCLIP's logit scale in [0, its ``config.logit_scale_max``] (another
    module: [0, LOGIT_SCALE_MAX]), as released."""
    cap = model.config.logit_scale_max if isinstance(model, MedCLIPModel) else LOGIT_SCALE_MAX

    @torch.no_grad()
    def clamp() -> None:
        cast(torch.Tensor, model.logit_scale).clamp_(0.0, cap)

    return clamp


def train_unpaired(
    model: nn.Module,
    tokenizer: Any,
    images: Images,
    image_labels: np.ndarray,
    texts: list[str],
    text_labels: np.ndarray,
    *,
    input_shape: tuple[int, int, int],
    device: torch.device,
    steps: int | None = None,
    nb_epochs: int | None = 1,
    batch_size: int = 32,
    text_batch_size: int | None = None,
    lr: float = 2e-5,
    weight_decay: float = 1e-4,
    warmup: float = 0.1,
    schedule_epochs: int | None = None,
    max_grad_norm: float | None = 1.0,
    seed: int = 0,
    train_vision: bool = True,
    train_text: bool = True,
    amp: bool = True,
    num_workers: int = 0,
    verbose: bool = True,
    eda: bool | EDA = False,
    report_sampler: ReportSampler | None = None,
) -> dict[str, list[float]]:
    """Train ``model`` (a MedCLIPModel) in place on unpaired images and sentences; return the per-step history.

    ``steps`` wins over ``nb_epochs`` (an epoch = ``ceil(N / batch_size)`` steps). The learning rate warms up over
    the first ``warmup`` share of the schedule and decays by a cosine to zero at its end; the schedule spans the steps
    run, or ``schedule_epochs`` epochs when given (the released MedCLIP trainer sizes it for 10 epochs and stops at a
    step count, so a run may end mid-schedule; steps past its end run at learning rate zero). Returns
    ``{"loss": [...], "lr": [...]}``. Parts not trained run without gradients and stay in eval mode.
    ``amp`` runs the encoders under bf16 autocast on CUDA (the loss stays float32; ignored on CPU).
    ``num_workers`` processes read the image batches ahead (``artmed.loader``; the batch order is fixed first).
    In a process group (``torchrun``) each rank encodes its shard of every global batch under DDP, the loss is
    computed on the gathered global batch, BatchNorm uses global statistics, and only rank 0 shows progress;
    ``model`` ends up identical on every rank. Dropout masks are drawn per rank (seed ``seed + rank``).

    The released protocol's text side, both off by default (then the run is exactly as without them):
    ``eda=True`` augments every text batch with ``artmed.data.eda.EDA`` (seeded from ``seed``; or pass an ``EDA``),
    encodes the augmented batch too and minimises the mean of the plain and augmented losses (the released
    ``ImageTextContrastiveLoss``; both pair the texts with the plain sentences' labels). ``report_sampler`` (an
    ``artmed.data.report_sampling.ReportSampler`` over the same images) pairs each image of a batch with a sentence
    of its own report (released fallbacks), instead of drawing an independent batch from ``texts``, which are then
    unused (``text_batch_size`` is the image batch size).
    """
    images = as_images(images, input_shape)
    n = num_images(images)
    image_labels = check_label_matrix(image_labels, n, "image labels (y)")
    texts = check_texts(texts)
    text_labels = check_label_matrix(text_labels, len(texts), "text_labels")
    text_batch_size = batch_size if text_batch_size is None else text_batch_size
    _check_train_params(
        batch_size, text_batch_size, lr, weight_decay, warmup, max_grad_norm, steps, nb_epochs, schedule_epochs
    )
    if n < 2:
        raise ValueError(f"need at least 2 training images, got {n}")
    if not (train_vision or train_text):
        raise ValueError("nothing to train: train_vision and train_text are both False")
    if is_distributed() and min(batch_size, n, text_batch_size, len(texts)) < world_size():
        raise ValueError(
            f"distributed training over {world_size()} ranks needs batch sizes and pool sizes >= "
            f"{world_size()}, got batch_size={batch_size}, text_batch_size={text_batch_size}, "
            f"{n} images, {len(texts)} texts"
        )
    if report_sampler is not None and len(report_sampler) != n:
        raise ValueError(f"report_sampler covers {len(report_sampler)} images, the training set has {n}")
    epoch = math.ceil(n / min(batch_size, n))
    if steps is not None:
        total = steps
    else:
        assert nb_epochs is not None  # _check_train_params refuses neither steps nor nb_epochs
        total = nb_epochs * epoch
    horizon = total if schedule_epochs is None else schedule_epochs * epoch

    named: list[tuple[str, nn.Parameter]] = [("logit_scale", cast(nn.Parameter, model.logit_scale))]
    if train_vision:
        named += [(f"vision_model.{k}", p) for k, p in cast(nn.Module, model.vision_model).named_parameters()]
    if train_text:
        named += [(f"text_model.{k}", p) for k, p in cast(nn.Module, model.text_model).named_parameters()]
    optimizer = make_optimizer(named, lr=lr, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, horizon, warmup)
    trained = [p for _, p in named if p.requires_grad]

    image_seq, text_seq, eda_seq, sampler_seq = np.random.SeedSequence(seed).spawn(4)
    image_idx = index_batches(n, batch_size, np.random.default_rng(image_seq))
    image_rows = [next(image_idx) for _ in range(total)]
    pixel_batches = image_batches(
        images, [shard_indices(rows) for rows in image_rows], input_shape, device, num_workers
    )
    text_idx = index_batches(len(texts), text_batch_size, np.random.default_rng(text_seq))
    augment = eda if isinstance(eda, EDA) else EDA(eda_seq) if eda else None
    sampler_rng = np.random.default_rng(sampler_seq)
    use_amp = amp and device.type == "cuda"
    was_training = model.training
    model.train()
    cast(nn.Module, model.vision_model).train(train_vision)
    cast(nn.Module, model.text_model).train(train_text)
    fork_devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices), global_batchnorm(model):
        torch.manual_seed(seed + rank())
        encoders = wrap_ddp(Encoders(model, train_vision, train_text), device)

        def objective(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            i_idx, pixels = image_rows[step], next(pixel_batches)
            if report_sampler is None:
                t_idx = next(text_idx)
                batch_texts, batch_labels = [texts[i] for i in t_idx], text_labels[t_idx]
            else:
                batch_texts, batch_labels = report_sampler.sample(i_idx, image_labels[i_idx], sampler_rng)
            # the whole global text batch is tokenised so this rank's rows get the padding one process would give
            ids, mask = tokenize(tokenizer, batch_texts, device)
            rows = shard_slice(len(batch_texts))
            aug = () if augment is None else tuple(t[rows] for t in tokenize(tokenizer, augment(batch_texts), device))
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
                img_emb, txt_emb, scale, *aug_emb = encoders(normalize_pixels(pixels), ids[rows], mask[rows], *aug)
            loss = medclip_loss(
                gather(img_emb),
                gather(txt_emb),
                torch.from_numpy(image_labels[i_idx]).to(device),
                torch.from_numpy(batch_labels).to(device),
                scale,
                *(gather(e) for e in aug_emb),
            )
            return loss, loss.reshape(1)

        losses, lrs = run_steps(
            objective,
            optimizer,
            total,
            where="unpaired training",
            scheduler=scheduler,
            clip=trained,
            max_grad_norm=max_grad_norm,
            after_step=clamp_logit_scale(model),
            verbose=verbose,
            postfix=lambda terms: {"loss": f"{terms[0].item():.4f}"},
        )
    model.train(was_training)
    return {"loss": losses[:, 0].float().cpu().tolist(), "lr": lrs}
