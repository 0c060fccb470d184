"""AutoAugment (Cubuk et al., CVPR 2019) with the ImageNet policy, as torchvision's ``transforms.AutoAugment()``
implements it for uint8 image tensors, written in plain torch (artmed cannot install torchvision beside its torch).

CleanCLIP's release draws its augmented image views with ``torchvision.transforms.AutoAugment()`` (ImageNet policy,
nearest-neighbour resampling, black fill). Per image: one of the 25 sub-policies uniformly; each of its two
operations runs with its probability, at its magnitude bin (of 10), negated with probability ½ where the operation
is signed. The operations and their magnitude ranges are torchvision's (``_augmentation_space``): ShearX/Y,
TranslateX/Y, Rotate, Brightness, Color, Contrast, Sharpness, Posterize, Solarize, AutoContrast, Equalize, Invert.
Each follows torchvision's tensor code on uint8 images: the same affine grids and nearest sampling (rounded back to
uint8), the same float32 blends truncated to uint8, the same equalisation table.

Where this differs from the release, and why:

- Input is a float batch (N, 1|3, H, W) in [0, 1] (what artmed holds); it is quantised to uint8 (``round(255·x)``),
  augmented, and returned as float ``/255`` — the release augments the uint8 image it reads from disk.
- The release runs the PIL backend on the file's RGB image, before resizing; here the tensor backend runs on the
  model-sized image. torchvision's tensor ops emulate PIL's; they can differ from it by a grey level or at borders.
- Color (saturation) leaves single-channel images unchanged, as torchvision does for one channel and as PIL does for
  a grey RGB image.
- Draws come from a ``torch.Generator`` (per image: sub-policy, two probabilities, two signs, in that order as
  ``AutoAugment.get_params`` draws them), so a seeded run repeats.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "IMAGENET_POLICY",
    "NUM_BINS",
    "OPERATIONS",
    "apply_op",
    "autoaugment",
    "draw_params",
    "magnitude",
    "policy_images",
]

NUM_BINS: int = 10
"""Magnitude bins of AutoAugment (torchvision's ``_augmentation_space(10, ...)``)."""

IMAGENET_POLICY: tuple[tuple[tuple[str, float, int | None], tuple[str, float, int | None]], ...] = (
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
)
"""The ImageNet policy: 25 sub-policies of two (operation, probability, magnitude bin) each (torchvision's order)."""

_SIGNED: dict[str, bool] = {
    "ShearX": True,
    "ShearY": True,
    "TranslateX": True,
    "TranslateY": True,
    "Rotate": True,
    "Brightness": True,
    "Color": True,
    "Contrast": True,
    "Sharpness": True,
    "Posterize": False,
    "Solarize": False,
    "AutoContrast": False,
    "Equalize": False,
    "Invert": False,
}
OPERATIONS: tuple[str, ...] = tuple(_SIGNED)
"""Every AutoAugment operation (torchvision's augmentation space)."""


def magnitude(op: str, bin_: int | None, height: int, width: int) -> float:
    """The unsigned magnitude of ``op`` at bin ``bin_`` (0..9; None for operations without one) for an image of
    ``height`` x ``width``: torchvision's float32 ``linspace`` value, as it reads it (``float(t.item())``)."""
    if op not in _SIGNED:
        raise ValueError(f"op must be one of {list(OPERATIONS)}, got {op!r}")
    if bin_ is None:
        return 0.0
    ranges = {
        "ShearX": 0.3,
        "ShearY": 0.3,
        "TranslateX": 150.0 / 331.0 * width,
        "TranslateY": 150.0 / 331.0 * height,
        "Rotate": 30.0,
        "Brightness": 0.9,
        "Color": 0.9,
        "Contrast": 0.9,
        "Sharpness": 0.9,
    }
    if op in ranges:
        return float(torch.linspace(0.0, ranges[op], NUM_BINS)[bin_].item())
    if op == "Posterize":
        return float((8 - (torch.arange(NUM_BINS) / ((NUM_BINS - 1) / 4)).round().int())[bin_].item())
    if op == "Solarize":
        return float(torch.linspace(255.0, 0.0, NUM_BINS)[bin_].item())
    return 0.0


# ---------------------------------------------------------------- the operations on uint8 (B, C, H, W) tensors
def _inverse_affine(
    center: tuple[float, float], angle: float, translate: tuple[float, float], shear: tuple[float, float]
) -> list[float]:
    """torchvision's ``_get_inverse_affine_matrix`` at scale 1 (output pixel -> input pixel, centred coordinates)."""
    rot, sx, sy = math.radians(angle), math.radians(shear[0]), math.radians(shear[1])
    cx, cy = center
    tx, ty = translate
    a = math.cos(rot - sy) / math.cos(sy)
    b = -math.cos(rot - sy) * math.tan(sx) / math.cos(sy) - math.sin(rot)
    c = math.sin(rot - sy) / math.cos(sy)
    d = -math.sin(rot - sy) * math.tan(sx) / math.cos(sy) + math.cos(rot)
    m = [d, -b, 0.0, -c, a, 0.0]
    m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
    m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
    m[2] += cx
    m[5] += cy
    return m


def _warp(img: torch.Tensor, matrix: list[float]) -> torch.Tensor:
    """Resample ``img`` through the inverse affine ``matrix`` with nearest neighbours and black outside, on a grid
    built as torchvision's ``_gen_affine_grid`` builds it (pixel centres, normalised after the transform)."""
    h, w = img.shape[-2:]
    dev = img.device
    theta = torch.tensor(matrix, dtype=torch.float32, device=dev).reshape(1, 2, 3)
    base = torch.empty(1, h, w, 3, dtype=torch.float32, device=dev)
    base[..., 0].copy_(torch.linspace(-w * 0.5 + 0.5, w * 0.5 + 0.5 - 1, steps=w, device=dev))
    base[..., 1].copy_(torch.linspace(-h * 0.5 + 0.5, h * 0.5 + 0.5 - 1, steps=h, device=dev).unsqueeze_(-1))
    base[..., 2].fill_(1)
    scaled = theta.transpose(1, 2) / torch.tensor([0.5 * w, 0.5 * h], dtype=torch.float32, device=dev)
    grid = base.view(1, h * w, 3).bmm(scaled).view(1, h, w, 2).expand(img.shape[0], h, w, 2)
    out = F.grid_sample(img.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.round().to(torch.uint8)


def _blend(img1: torch.Tensor, img2: torch.Tensor, ratio: float) -> torch.Tensor:
    """torchvision's ``_blend`` for uint8: float32 mix, clamped, truncated to uint8."""
    ratio = float(ratio)
    return (ratio * img1 + (1.0 - ratio) * img2).clamp(0, 255).to(torch.uint8)


def _grayscale(img: torch.Tensor) -> torch.Tensor:
    """torchvision's ``rgb_to_grayscale`` of a uint8 RGB batch (truncated to uint8), (B, 1, H, W)."""
    r, g, b = img.unbind(dim=-3)
    return (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(dim=-3)


def _contrast(img: torch.Tensor, factor: float) -> torch.Tensor:
    grey = _grayscale(img) if img.shape[-3] == 3 else img
    mean = torch.mean(grey.to(torch.float32), dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, factor)


def _sharpness(img: torch.Tensor, factor: float) -> torch.Tensor:
    if img.shape[-1] <= 2 or img.shape[-2] <= 2:
        return img
    kernel = torch.ones((3, 3), dtype=torch.float32, device=img.device)
    kernel[1, 1] = 5.0
    kernel /= kernel.sum()
    kernel = kernel.expand(img.shape[-3], 1, 3, 3)
    smooth = F.conv2d(img.float(), kernel, groups=img.shape[-3]).round().to(torch.uint8)
    blurred = img.clone()
    blurred[..., 1:-1, 1:-1] = smooth
    return _blend(img, blurred, factor)


def _autocontrast(img: torch.Tensor) -> torch.Tensor:
    low = img.amin(dim=(-2, -1), keepdim=True).to(torch.float32)
    high = img.amax(dim=(-2, -1), keepdim=True).to(torch.float32)
    scale = 255 / (high - low)
    flat = torch.isfinite(scale).logical_not()
    low[flat] = 0
    scale[flat] = 1
    return ((img - low) * scale).clamp(0, 255).to(torch.uint8)


def _equalize(img: torch.Tensor) -> torch.Tensor:
    """torchvision's ``equalize`` (its ``_scale_channel``: PIL's histogram-equalisation table), every channel of
    every image at once: step = (pixels - count of the last occupied level) // 255; no step, no change."""
    b, c, h, w = img.shape
    flat = img.reshape(b * c, h * w).to(torch.int64)
    rows = torch.arange(b * c, device=img.device).unsqueeze(1)
    hist = torch.bincount((flat + 256 * rows).reshape(-1), minlength=256 * b * c).view(b * c, 256)
    last = torch.where(hist > 0, torch.arange(256, device=img.device), -1).amax(dim=1, keepdim=True)
    step = torch.div(h * w - hist.gather(1, last), 255, rounding_mode="floor")
    safe = step.clamp(min=1)
    lut = torch.div(torch.cumsum(hist, 1) + torch.div(safe, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, [1, 0])[:, :-1].clamp(0, 255)
    out = torch.where(step > 0, lut.gather(1, flat), flat)
    return out.to(torch.uint8).view(b, c, h, w)


def apply_op(img: torch.Tensor, op: str, value: float) -> torch.Tensor:
    """Apply one AutoAugment operation at signed magnitude ``value`` to a uint8 batch (B, 1|3, H, W), as
    torchvision's ``autoaugment._apply_op`` does on uint8 tensors (nearest resampling, black fill)."""
    if img.dtype != torch.uint8 or img.ndim != 4 or img.shape[1] not in (1, 3):
        raise ValueError(f"img must be a uint8 (B, 1|3, H, W) tensor, got {img.dtype} {tuple(img.shape)}")
    h, w = img.shape[-2:]
    if op == "ShearX":
        shear = (math.degrees(math.atan(value)), 0.0)
        return _warp(img, _inverse_affine((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), shear))
    if op == "ShearY":
        shear = (0.0, math.degrees(math.atan(value)))
        return _warp(img, _inverse_affine((-w * 0.5, -h * 0.5), 0.0, (0.0, 0.0), shear))
    if op == "TranslateX":
        return _warp(img, _inverse_affine((0.0, 0.0), 0.0, (float(int(value)), 0.0), (0.0, 0.0)))
    if op == "TranslateY":
        return _warp(img, _inverse_affine((0.0, 0.0), 0.0, (0.0, float(int(value))), (0.0, 0.0)))
    if op == "Rotate":
        return _warp(img, _inverse_affine((0.0, 0.0), -value, (0.0, 0.0), (0.0, 0.0)))
    if op == "Brightness":
        return _blend(img, torch.zeros_like(img), 1.0 + value)
    if op == "Color":
        return img if img.shape[1] == 1 else _blend(img, _grayscale(img), 1.0 + value)
    if op == "Contrast":
        return _contrast(img, 1.0 + value)
    if op == "Sharpness":
        return _sharpness(img, 1.0 + value)
    if op == "Posterize":
        return img & -int(2 ** (8 - int(value)))
    if op == "Solarize":
        return torch.where(img >= value, 255 - img, img)
    if op == "AutoContrast":
        return _autocontrast(img)
    if op == "Equalize":
        return _equalize(img)
    if op == "Invert":
        return 255 - img
    raise ValueError(f"op must be one of {list(OPERATIONS)}, got {op!r}")


# ---------------------------------------------------------------- the policy
def draw_params(
    n: int, generator: torch.Generator, device: torch.device | str = "cpu", n_policies: int = len(IMAGENET_POLICY)
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image, what ``AutoAugment.get_params`` draws, in its order (sub-policy index, two probabilities, two
    signs; 0 negates a signed magnitude), image after image: a CPU generator seeded ``s`` gives the draws that
    torchvision makes for the same images one by one after ``torch.manual_seed(s)``. Returns (n,), (n, 2), (n, 2)."""
    policy, probs, signs = [], [], []
    for _ in range(n):
        policy.append(torch.randint(n_policies, (1,), generator=generator, device=device))
        probs.append(torch.rand((2,), generator=generator, device=device))
        signs.append(torch.randint(2, (2,), generator=generator, device=device))
    empty = torch.empty(0, 2, device=device)
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=device), empty, empty.long()
    return torch.cat(policy), torch.stack(probs), torch.stack(signs)


def policy_images(img: torch.Tensor, policy: torch.Tensor, probs: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
    """AutoAugment's forward on a uint8 batch (B, 1|3, H, W) for given draws (see ``draw_params``): image ``i``
    runs sub-policy ``policy[i]``; its operation ``j`` runs when ``probs[i, j] <= p``, negated when signed and
    ``signs[i, j] == 0``. Images sharing an operation and magnitude are processed together."""
    h, w = img.shape[-2:]
    out = img.clone()
    policy_l, probs_l, signs_l = policy.tolist(), probs.tolist(), signs.tolist()
    for j in range(2):
        groups: dict[tuple[str, float], list[int]] = {}
        for i, k in enumerate(policy_l):
            op, p, bin_ = IMAGENET_POLICY[k][j]
            if probs_l[i][j] <= p:
                value = magnitude(op, bin_, h, w)
                if _SIGNED[op] and signs_l[i][j] == 0:
                    value *= -1.0
                groups.setdefault((op, value), []).append(i)
        for (op, value), rows in groups.items():
            idx = torch.tensor(rows, device=img.device)
            out[idx] = apply_op(out[idx], op, value)
    return out


def autoaugment(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An AutoAugment (ImageNet policy) view of float images (B, 1|3, H, W) in [0, 1], drawn from ``generator`` on
    their device: quantised to uint8, augmented as torchvision's ``AutoAugment()`` does, returned as float32 / 255."""
    u8 = (pixels.float() * 255.0).round().clamp(0, 255).to(torch.uint8)
    policy, probs, signs = draw_params(len(pixels), generator, pixels.device)
    return policy_images(u8, policy, probs, signs).float() / 255.0
