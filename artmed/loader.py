"""Image batches read ahead of the model: worker processes read and decode them, pinned host memory feeds the GPU.

The order of the batches is fixed by the caller's index arrays, so runs stay reproducible whatever the number of
workers; a worker only reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from artmed.inputs import Images, image_batch

BatchTransform = Callable[[np.ndarray], np.ndarray]


class _IndexedBatches(Dataset):
    """Batch ``i`` = the checked float32 images of `images` at ``batches[i]``, through `transform` when given."""

    def __init__(
        self,
        images: Images,
        batches: Sequence[np.ndarray],
        input_shape: tuple[int, ...],
        transform: BatchTransform | None = None,
    ) -> None:
        self.images = images
        self.batches = batches
        self.input_shape = input_shape
        self.transform = transform

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        batch = image_batch(self.images, self.batches[i], self.input_shape)
        if self.transform is not None:
            batch = self.transform(batch)
        return torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))


def check_num_workers(num_workers: int) -> int:
    """`num_workers` as an int, refused unless it is a non-negative integer."""
    if isinstance(num_workers, bool) or int(num_workers) != num_workers or num_workers < 0:
        raise ValueError(f"num_workers must be a non-negative integer, got {num_workers!r}")
    return int(num_workers)


def image_batches(
    images: Images,
    batches: Sequence[np.ndarray],
    input_shape: tuple[int, ...],
    device: torch.device,
    num_workers: int = 0,
    transform: BatchTransform | None = None,
) -> Iterator[torch.Tensor]:
    """The images at each index array of `batches`, in order, as float32 (B, C, H, W) tensors on `device`.

    With ``num_workers > 0`` that many processes prepare the next batches while the model runs; on CUDA the
    batches come through pinned memory and are copied without blocking the host. `transform` (numpy batch ->
    numpy batch, e.g. appending triggered copies) runs where the batch is read, so in the workers; it must be
    picklable where workers are spawned rather than forked.
    """
    num_workers = check_num_workers(num_workers)
    dataset = _IndexedBatches(images, batches, input_shape, transform)
    pin = device.type == "cuda"
    if num_workers == 0 and not pin:
        for i in range(len(dataset)):
            yield dataset[i].to(device)
        return
    # its own generator: a DataLoader otherwise draws its workers' base seed from torch's global RNG, which would
    # shift every later dropout mask of the caller's seeded run
    loader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin,
        prefetch_factor=2 if num_workers else None,
        generator=torch.Generator().manual_seed(0),
    )
    for batch in loader:
        yield batch.to(device, non_blocking=pin)
