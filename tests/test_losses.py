"""MedCLIP's soft-label contrastive loss against a value worked out by hand."""

import math

import pytest
import torch

from artmed.constants import CHEXPERT_LABELS
from artmed.losses import medclip_loss


def _label(**values: float) -> list[float]:
    row = [0.0] * len(CHEXPERT_LABELS)
    for name, v in values.items():
        row[CHEXPERT_LABELS.index(name.replace("_", " "))] = v
    return row


def _example():
    img = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    txt = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # normalised inside to the identity
    img_labels = torch.tensor([_label(No_Finding=1), _label(Cardiomegaly=1, Edema=-1)])
    txt_labels = torch.tensor([_label(No_Finding=1), _label(Cardiomegaly=1, Edema=1)])
    return img, txt, img_labels, txt_labels


def _soft_ce(logits, targets):
    total = 0.0
    for row, target in zip(logits, targets):
        lse = math.log(sum(math.exp(v) for v in row))
        total -= sum(t * (v - lse) for v, t in zip(row, target))
    return total / len(logits)


def test_two_by_two_matches_hand_computation():
    img, txt, img_labels, txt_labels = _example()
    # Z = 2 * V Tᵀ with T normalised to the identity; S = L_img L_txtᵀ = [[1, 0], [0, 1·1 + (-1)·1 = 0]]:
    # the uncertain -1 is used raw, as in the released code (clipping it to 0 would make S[1,1] = 1).
    z = [[2.0, 0.0], [1.2, 1.6]]
    zt = [[2.0, 1.2], [0.0, 1.6]]
    e = math.e
    y = [[e / (e + 1), 1 / (e + 1)], [0.5, 0.5]]  # softmax rows of S; S is symmetric so Y_txt = Y_img
    expected = 0.5 * (_soft_ce(z, y) + _soft_ce(zt, y))
    loss = medclip_loss(img, txt, img_labels, txt_labels, logit_scale=2.0)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    clipped = txt_labels.clamp_min(0), img_labels.clamp_min(0)
    assert medclip_loss(img, txt, clipped[1], clipped[0], 2.0).item() != pytest.approx(expected, rel=1e-3)


def test_loss_normalises_embeddings_and_takes_tensor_scale():
    img, txt, img_labels, txt_labels = _example()
    a = medclip_loss(img, txt, img_labels, txt_labels, logit_scale=torch.tensor(2.0))
    b = medclip_loss(img * 5.0, txt * 0.1, img_labels, txt_labels, logit_scale=2.0)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_loss_with_augmented_texts_is_the_mean_of_both():
    img, txt, img_labels, txt_labels = _example()
    aug = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    plain = medclip_loss(img, txt, img_labels, txt_labels, 2.0)
    other = medclip_loss(img, aug, img_labels, txt_labels, 2.0)
    both = medclip_loss(img, txt, img_labels, txt_labels, 2.0, aug_text_embeds=aug)
    assert both.item() == pytest.approx((plain.item() + other.item()) / 2, rel=1e-6)


def test_loss_prefers_images_aligned_with_texts_of_matching_labels():
    labels = torch.tensor([_label(No_Finding=1), _label(Pneumonia=1)])
    texts = torch.eye(2)
    aligned = medclip_loss(torch.eye(2), texts, labels, labels, 10.0)
    swapped = medclip_loss(torch.eye(2).flip(0), texts, labels, labels, 10.0)
    assert aligned.item() < swapped.item()


@pytest.mark.parametrize(
    "shapes, message",
    [
        (((2, 4), (3, 5), (2, 14), (3, 14)), "embeddings"),
        (((2, 4), (3, 4), (3, 14), (3, 14)), "img_labels"),
        (((2, 4), (3, 4), (2, 14), (2, 14)), "text_labels"),
        (((2, 4), (3, 4), (2, 14), (3, 13)), "same width"),
    ],
)
def test_loss_rejects_mismatched_shapes(shapes, message):
    tensors = [torch.zeros(s) for s in shapes]
    with pytest.raises(ValueError, match=message):
        medclip_loss(*tensors, logit_scale=1.0)
