"""A ResNet written here with torchvision's exact parameter names, so released MedCLIP-ResNet weights load.

torchvision from PyPI fails to import beside the pinned CPU torch (torch==2.13.0), so the architecture is rebuilt:
``conv1``, ``bn1``, ``layer1..4`` of ``BasicBlock``/``Bottleneck`` (``.conv1``, ``.bn1``, ..., ``.downsample.0/.1``)
and ``fc``, with torchvision's initialisation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BasicBlock", "Bottleneck", "MaxPool", "ResNet", "resnet50"]


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class MaxPool(nn.MaxPool2d):
    """torch's max pooling (square kernel, stride and padding, no dilation), computed without autograd as the
    elementwise maximum of the kernel's strided shifts: the same values bit for bit (a maximum rounds nothing; NaN
    propagates as in torch's) and on torch 2.13's CPU kernels ~3x faster on NCHW inputs, which dominate inference
    (STRIP's overlays, feature extraction). With autograd, torch's kernel, whose gradient goes to one element of a
    tie as training has always had it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad or x.dim() != 4 or self.dilation != 1 or self.ceil_mode or self.return_indices:
            return super().forward(x)
        k, s, p = (int(v) if isinstance(v, int) else -1 for v in (self.kernel_size, self.stride, self.padding))
        if min(k, s, p) < 0:
            return super().forward(x)
        padded = nn.functional.pad(x, (p, p, p, p), value=float("-inf")) if p else x
        rows, cols = (padded.shape[-2] - k) // s + 1, (padded.shape[-1] - k) // s + 1
        out = padded[..., 0 : s * (rows - 1) + 1 : s, 0 : s * (cols - 1) + 1 : s].clone()
        for i in range(k):
            for j in range(k):
                if i or j:
                    torch.maximum(
                        out, padded[..., i : i + s * (rows - 1) + 1 : s, j : j + s * (cols - 1) + 1 : s], out=out
                    )
        return out


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (ResNet-18/34 block)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided, torchvision "v1.5") -> 1x1 bottleneck with a residual connection (ResNet-50 block)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = _conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """torchvision-compatible ResNet: stem, four stages, global average pool, ``fc``.

    ``forward_features`` returns the last stage map (B, C, h, w); ``pool`` flattens it to (B, C);
    ``forward`` applies ``fc`` to the pooled features.
    """

    def __init__(
        self,
        block: str = "bottleneck",
        layers: Sequence[int] = (3, 4, 6, 3),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        fc_bias: bool = True,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"block must be one of {sorted(_BLOCKS)}, got {block!r}")
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"layers and widths need 4 stages each, got {list(layers)} and {list(widths)}")
        block_cls = _BLOCKS[block]
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = MaxPool(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block_cls, widths[0], layers[0])
        self.layer2 = self._make_layer(block_cls, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block_cls, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block_cls, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[3] * block_cls.expansion
        self.fc = nn.Linear(self.num_features, num_classes, bias=fc_bias)
        self._init_weights()

    def _make_layer(
        self, block_cls: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block_cls.expansion:
            downsample = nn.Sequential(
                _conv1x1(self.inplanes, planes * block_cls.expansion, stride),
                nn.BatchNorm2d(planes * block_cls.expansion),
            )
        modules = [block_cls(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block_cls.expansion
        modules.extend(block_cls(self.inplanes, planes) for _ in range(1, blocks))
        return nn.Sequential(*modules)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Last stage feature map (B, C, h, w)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """Global average pool of a stage map to (B, C)."""
        return torch.flatten(self.avgpool(features), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.forward_features(x)))


def resnet50(num_classes: int = 1000, fc_bias: bool = True) -> ResNet:
    """ResNet-50 (Bottleneck, [3, 4, 6, 3]) with torchvision's names; 2048 pooled features."""
    return ResNet("bottleneck", (3, 4, 6, 3), (64, 128, 256, 512), num_classes=num_classes, fc_bias=fc_bias)
