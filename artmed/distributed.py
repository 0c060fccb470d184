"""Data-parallel training with PyTorch's own engine (``torchrun`` + DistributedDataParallel), CPU (gloo) or GPU (nccl).

Equivalence design: every rank draws the same *global* batch indices from the shared seed and takes a contiguous
shard (``shard_indices``); per-rank outputs are concatenated back into the global batch with ``gather`` (its
backward all-reduces the gradient and returns the local rows), so every rank computes the *full-batch* loss, as
one process would. That makes the objective differentiated across ranks the sum of the ``W`` identical rank
losses; DDP's gradient averaging divides by ``W`` again, so the averaged gradient equals the single-process one
(no loss rescaling; parameters used directly by the loss, like ``logit_scale``, come out right as well).
BatchNorm in training mode normalises with the statistics of the global batch (``global_batchnorm``, a
CPU-capable SyncBatchNorm: torch's own ``SyncBatchNorm`` refuses CPU tensors). Outside a process group every
helper is the identity, so single-process code runs unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

__all__ = [
    "GlobalBatchNorm",
    "all_reduce_mean",
    "barrier",
    "gather",
    "global_batchnorm",
    "init_from_env",
    "is_distributed",
    "is_main_process",
    "on_rank0",
    "rank",
    "shard_indices",
    "shard_slice",
    "shutdown",
    "world_size",
    "wrap_ddp",
]

T = TypeVar("T")
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
"""Environment variables ``torchrun`` sets for every worker."""


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Number of ranks (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """True on rank 0, the rank that logs and writes checkpoints."""
    return rank() == 0


def on_rank0(fn: Callable[..., T]) -> Callable[..., T | None]:
    """Wrap ``fn`` to run on rank 0 only (other ranks get None); for checkpoints, files and printing."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T | None:
        return fn(*args, **kwargs) if is_main_process() else None

    return wrapper


def barrier() -> None:
    """Wait for every rank (no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_from_env(backend: str = "auto") -> torch.device:
    """Join the process group ``torchrun`` describes in the environment; return this rank's device.

    ``backend="auto"`` picks nccl when CUDA is available, else gloo; the device is ``cuda:LOCAL_RANK`` under
    nccl and the CPU otherwise. Without torchrun's variables nothing is initialised and the device is
    ``artmed.device.resolve_device("auto")`` (a plain single-process run). Idempotent.
    """
    from artmed.device import resolve_device

    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("backend 'nccl' needs CUDA, which is not available; use 'gloo'")
    if "WORLD_SIZE" not in os.environ:
        return resolve_device("auto")
    missing = [name for name in TORCHRUN_VARS if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is set but torchrun variables {missing} are not; launch with torchrun")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return device


def shutdown() -> None:
    """Leave the process group (no-op outside one).

    On the normal path call ``barrier()`` first: with gloo, a rank that leaves while a peer is still working can
    make that peer abort.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_slice(n: int, rank_: int | None = None, world: int | None = None) -> slice:
    """Rows of a global batch of ``n`` that ``rank_`` owns: contiguous, sizes differ by at most one, in rank order."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    if world < 1 or not 0 <= rank_ < world:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank_}, world_size={world}")
    if n < world:
        raise ValueError(f"a global batch of {n} cannot be split over {world} ranks; use a batch size >= {world}")
    base, extra = divmod(n, world)
    start = rank_ * base + min(rank_, extra)
    return slice(start, start + base + (rank_ < extra))


def shard_indices(batch_indices: np.ndarray, rank_: int | None = None, world: int | None = None) -> np.ndarray:
    """This rank's shard of a GLOBAL batch of indices (``shard_slice``); all of it outside a process group.

    Concatenating the shards in rank order gives the global batch back, so ``gather`` of per-rank outputs is the
    single-process batch, row for row.
    """
    batch_indices = np.asarray(batch_indices)
    return batch_indices[shard_slice(len(batch_indices), rank_, world)]


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 (shards may differ in size); backward all-reduces the gradient, returns local rows."""

    @staticmethod
    def forward(ctx: Any, local: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        me = dist.get_rank()
        ctx.rows = slice(sum(sizes[:me]), sum(sizes[: me + 1]))
        padded = local.new_zeros((max(sizes), *local.shape[1:]))
        padded[: local.shape[0]] = local
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rows], None


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward sums the gradient over ranks too (every rank's loss depends on every input)."""

    @staticmethod
    def forward(ctx: Any, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.contiguous().clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad


def gather(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``local`` rows in rank order, keeping the graph; ``local`` itself outside a group.

    Backward returns to each rank the gradient of the sum of all ranks' losses w.r.t. its own rows, which DDP's
    averaging turns back into the gradient of one (identical) full-batch loss.
    """
    if not is_distributed():
        return local
    counts = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(world_size())]
    dist.all_gather(counts, torch.tensor([local.shape[0]], dtype=torch.int64, device=local.device))
    return _GatherRows.apply(local, tuple(int(c.item()) for c in counts))


def all_reduce_mean(value: torch.Tensor | float) -> torch.Tensor:
    """Mean of ``value`` over ranks (a detached float tensor); for logging, not for gradients."""
    tensor = torch.as_tensor(value).detach().clone().float()
    if is_distributed():
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":
            tensor = tensor.cuda()
        dist.all_reduce(tensor)
        tensor /= world_size()
    return tensor


def wrap_ddp(module: nn.Module, device: torch.device, find_unused_parameters: bool = True) -> nn.Module:
    """``module`` in DistributedDataParallel inside a process group (rank 0's weights are broadcast), else as is.

    ``find_unused_parameters`` defaults to True: MedCLIP's BERT pooler runs in forward but never reaches the loss,
    and encoders that are not being trained run without gradients.
    """
    if not is_distributed():
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=find_unused_parameters)


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm that, in a process group, normalises with the statistics of the global batch of all ranks.

    A SyncBatchNorm that also runs on CPU (gloo). Two-pass statistics (mean, then centred squares), each summed
    over ranks with an autograd-aware all-reduce; running statistics update as ``F.batch_norm`` would on the whole
    batch (unbiased variance). Outside a process group it is an ordinary BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.ndim < 2:
            raise ValueError(f"expected at least 2D input (N, C, ...), got {input.ndim}D")

    @classmethod
    def sharing(cls, bn: _BatchNorm) -> GlobalBatchNorm:
        """A GlobalBatchNorm holding ``bn``'s own parameter and buffer objects (updates reach ``bn``)."""
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        for name in ("weight", "bias"):
            setattr(new, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        new.train(bn.training)
        return new

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        use_batch_stats = self.training or self.running_mean is None
        if not (use_batch_stats and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        x = input.float()
        dims = [0, *range(2, x.ndim)]
        shape = [1, x.shape[1]] + [1] * (x.ndim - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        totals = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))
        n = totals[-1].detach()
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.training and self.track_running_stats and self.running_mean is not None:
            factor = self.momentum
            if self.num_batches_tracked is not None:
                self.num_batches_tracked.add_(1)
                if self.momentum is None:
                    factor = 1.0 / float(self.num_batches_tracked)
            # torch's BatchNorm: momentum None comes with num_batches_tracked; running_var with running_mean
            assert factor is not None and self.running_var is not None
            with torch.no_grad():
                self.running_mean.mul_(1.0 - factor).add_(mean.detach().to(self.running_mean.dtype), alpha=factor)
                unbiased = var.detach() * n / (n - 1).clamp_min(1.0)
                self.running_var.mul_(1.0 - factor).add_(unbiased.to(self.running_var.dtype), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)


@contextmanager
def global_batchnorm(module: nn.Module) -> Iterator[nn.Module]:
    """Within the block, every BatchNorm in ``module`` is a ``GlobalBatchNorm`` sharing its tensors; restored after.

    A no-op outside a process group. Build DDP *inside* the block, on the swapped module.
    """
    if not is_distributed():
        yield module
        return
    swapped: list[tuple[nn.Module, str, nn.Module]] = []
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
                setattr(parent, name, GlobalBatchNorm.sharing(child))
                swapped.append((parent, name, child))
    try:
        yield module
    finally:
        for parent, name, child in swapped:
            child.train(getattr(parent, name).training)
            setattr(parent, name, child)
