"""MedCLIP's soft-label contrastive loss: the semantic-matching objective that lets images and texts train unpaired.

Matches the released ``ImageTextContrastiveLoss._soft_clip_loss`` (RyanWangZf/MedCLIP, ``medclip/losses.py``):
the label similarity is the *raw* dot product of the 14-d label vectors, uncertain entries (-1) included and
nothing clipped (the release's docstring mentions clamping to [-1, 1], its code does not clamp).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of row-wise ``softmax(logits)`` against row-stochastic ``targets``, averaged over rows."""
    return -(targets * F.log_softmax(logits, dim=1)).sum() / logits.shape[0]


def _check_shapes(img_embeds, text_embeds, img_labels, text_labels) -> None:
    if img_embeds.ndim != 2 or text_embeds.ndim != 2 or img_embeds.shape[1] != text_embeds.shape[1]:
        raise ValueError(
            f"embeddings must be (B, D) and (M, D), got {tuple(img_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    if img_labels.ndim != 2 or img_labels.shape[0] != img_embeds.shape[0]:
        raise ValueError(f"img_labels must be ({img_embeds.shape[0]}, L), got {tuple(img_labels.shape)}")
    if text_labels.ndim != 2 or text_labels.shape[0] != text_embeds.shape[0]:
        raise ValueError(f"text_labels must be ({text_embeds.shape[0]}, L), got {tuple(text_labels.shape)}")
    if img_labels.shape[1] != text_labels.shape[1]:
        raise ValueError(
            f"img_labels and text_labels must have the same width, got {img_labels.shape[1]} and {text_labels.shape[1]}"
        )


def medclip_loss(
    img_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    img_labels: torch.Tensor,
    text_labels: torch.Tensor,
    logit_scale: torch.Tensor | float,
    aug_text_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """MedCLIP's soft-label image-text contrastive loss (targets from label similarity, as released), a scalar tensor.

    ``logit_scale`` is the multiplier itself (``exp`` of the learnt parameter). Embeddings are L2-normalised here;
    ``Z = logit_scale * V Tᵀ``, soft targets ``softmax_rows(L_img L_txtᵀ)`` and ``softmax_rows(L_txt L_imgᵀ)``,
    loss ``½[CE(Z, Y_img) + CE(Zᵀ, Y_txt)]``. With ``aug_text_embeds`` (augmented sentences, same labels as
    ``text_embeds``) the loss is the mean of the plain and augmented losses, as in the release.
    The computation runs in float32 whatever the autocast dtype of the embeddings.
    """
    _check_shapes(img_embeds, text_embeds, img_labels, text_labels)
    image = F.normalize(img_embeds.float(), dim=-1)
    label_sim = img_labels.float().to(image.device) @ text_labels.float().to(image.device).T
    target_img = F.softmax(label_sim, dim=1)
    target_txt = F.softmax(label_sim.T, dim=1)

    def one_side(texts: torch.Tensor) -> torch.Tensor:
        logits = logit_scale * image @ F.normalize(texts.float(), dim=-1).T
        return (soft_cross_entropy(logits, target_img) + soft_cross_entropy(logits.T, target_txt)) / 2

    loss = one_side(text_embeds)
    if aug_text_embeds is not None:
        if aug_text_embeds.shape != text_embeds.shape:
            raise ValueError(
                f"aug_text_embeds must match text_embeds {tuple(text_embeds.shape)}, got {tuple(aug_text_embeds.shape)}"
            )
        loss = (loss + one_side(aug_text_embeds)) / 2
    return loss
