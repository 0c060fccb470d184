"""Torch linear algebra for the detectors: streamed per-group PCA (top principal directions and projections) and
FastICA, on the given device.

A label group's rows are read from the (N, D) feature array in float32 chunks of ``CHUNK_ROWS`` rows through one
reused buffer (on a GPU, from one device-resident copy of the array), so memory stays O(chunk + D^2) whatever the
group's size. The principal directions come from one pass that sums the D x D scatter of the rows minus a shift
(a sample of the group's mean): float32 matrix products on the small shifted values, accumulated in float64, then
a float64 eigendecomposition. No float64 copy of the features and no SVD of the data is ever made.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

CHUNK_ROWS = 8192
"""Rows per streamed chunk (16 MiB of 512-d float32 features)."""
_SHIFT_SAMPLE = 1024


class RowStream:
    """Chunks of ``feats[rows] - shift`` as float32 tensors on `device`, all written into one reused buffer.

    Each yielded chunk is only valid until the next one is requested. With `resident` (the default on a GPU) the
    whole array is copied to the device once, as float32 and chunk by chunk, so later passes over any group never
    cross the host-device link again; otherwise chunks are gathered from the array itself.
    """

    def __init__(
        self, feats: np.ndarray, device: torch.device, chunk_rows: int = CHUNK_ROWS, resident: bool | None = None
    ) -> None:
        if feats.ndim != 2:
            raise ValueError(f"features must be a 2-D (N, D) array, got shape {feats.shape}")
        self.n, self.dim = feats.shape
        self.device = device
        self.chunk_rows = max(1, int(chunk_rows))
        self._feats = feats
        resident = device.type != "cpu" if resident is None else resident
        self._source = self._upload(feats) if resident else None
        if self._source is None and feats.dtype == np.float32 and feats.flags.c_contiguous:
            with warnings.catch_warnings():  # the defense's features are read-only; this tensor is only read
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                self._source = torch.from_numpy(feats)
        self._buffer = torch.empty(min(self.chunk_rows, max(self.n, 1)), self.dim, dtype=torch.float32, device=device)

    def _upload(self, feats: np.ndarray) -> torch.Tensor:
        out = torch.empty(feats.shape, dtype=torch.float32, device=self.device)
        for lo in range(0, feats.shape[0], self.chunk_rows):
            hi = min(lo + self.chunk_rows, feats.shape[0])
            out[lo:hi] = torch.from_numpy(np.ascontiguousarray(feats[lo:hi], dtype=np.float32)).to(self.device)
        return out

    def chunks(self, rows: np.ndarray, shift: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
        """``feats[rows] - shift`` chunk by chunk ((m, D) float32, m <= chunk_rows), in the order of `rows`."""
        index = torch.as_tensor(rows, dtype=torch.long)
        if self._source is not None and self._source.device != index.device:
            index = index.to(self._source.device)
        for lo in range(0, rows.shape[0], self.chunk_rows):
            hi = min(lo + self.chunk_rows, rows.shape[0])
            out = self._buffer[: hi - lo]
            if self._source is not None:
                torch.index_select(self._source, 0, index[lo:hi], out=out)
            else:
                out.copy_(torch.from_numpy(np.asarray(self._feats[rows[lo:hi]], dtype=np.float32)))
            if shift is not None:
                out.sub_(shift)
            yield out

    def gather(self, rows: np.ndarray, shift: torch.Tensor | None = None) -> torch.Tensor:
        """``feats[rows] - shift`` as one float64 (len(rows), D) tensor on the device (for groups small enough)."""
        return torch.cat([chunk.to(torch.float64) for chunk in self.chunks(rows, shift)])

    def mean_of(self, rows: np.ndarray, limit: int | None = None) -> torch.Tensor:
        """float64 mean (D,) of ``feats[rows]`` (of an even sample of at most `limit` of them when given)."""
        if limit is not None and rows.shape[0] > limit:
            rows = rows[np.linspace(0, rows.shape[0] - 1, limit).astype(np.int64)]
        total = torch.zeros(self.dim, dtype=torch.float64, device=self.device)
        for chunk in self.chunks(rows):
            total += chunk.sum(0).to(torch.float64)
        return total / max(rows.shape[0], 1)


@dataclass
class GroupPCA:
    """Principal axes of one label group: float64 mean (D,), top-k directions (D, k) and the centred scatter's
    eigenvalues (k,) (squared singular values), plus the float32 shift the rows were streamed with."""

    mean: torch.Tensor
    directions: torch.Tensor
    eigenvalues: torch.Tensor
    shift: torch.Tensor

    def project(self, stream: RowStream, rows: np.ndarray, centered: bool = True) -> torch.Tensor:
        """float64 (N, k) projections of ``feats[rows] - mean`` (or of the raw rows, ``centered=False``) on the
        directions: float32 products of the shifted rows plus a float64 offset for the shift."""
        directions32 = self.directions.to(torch.float32)
        origin = self.mean if centered else torch.zeros_like(self.mean)
        offset = (self.shift.to(torch.float64) - origin) @ self.directions
        parts = [(chunk @ directions32).to(torch.float64) for chunk in stream.chunks(rows, self.shift)]
        if not parts:
            return torch.empty(0, self.directions.shape[1], dtype=torch.float64, device=stream.device)
        return torch.cat(parts) + offset


def group_pca(stream: RowStream, rows: np.ndarray, k: int) -> GroupPCA:
    """Mean, top-`k` principal directions and eigenvalues of ``feats[rows]``, in one streamed pass.

    scatter = sum (x - s)(x - s)^T - n (mean - s)(mean - s)^T with s the mean of an even sample of the rows, so
    the float32 products see values of the size of the spread, not of the mean. A group with fewer rows than D
    goes through the n x n Gram matrix of its centred rows instead.
    """
    n, d = rows.shape[0], stream.dim
    if n == 0:
        raise ValueError("cannot compute principal directions of an empty group")
    shift = stream.mean_of(rows, _SHIFT_SAMPLE).to(torch.float32)
    if n < d:
        x = stream.gather(rows, shift)
        delta = x.mean(0)
        directions, evals = _gram_directions(x - delta, k)
    else:
        total = torch.zeros(d, dtype=torch.float64, device=stream.device)
        scatter = torch.zeros(d, d, dtype=torch.float64, device=stream.device)
        for chunk in stream.chunks(rows, shift):
            total += chunk.sum(0).to(torch.float64)
            _add_upper_scatter(scatter, chunk)
        delta = total / n
        scatter -= n * torch.outer(delta, delta)
        directions, evals = _top_eigenpairs(scatter, k)
    return GroupPCA(shift.to(torch.float64) + delta, directions, evals, shift)


def _add_upper_scatter(scatter: torch.Tensor, chunk: torch.Tensor, blocks: int = 4) -> None:
    """Add the upper triangle (by column blocks, diagonal blocks included) of ``chunk.T @ chunk`` to the float64
    `scatter`: a third fewer multiply-adds than the full product; the eigensolver reads only that triangle."""
    d = chunk.shape[1]
    step = -(-d // blocks)
    for lo in range(0, d, step):
        hi = min(lo + step, d)
        scatter[lo:hi, lo:] += (chunk[:, lo:hi].T @ chunk[:, lo:]).to(torch.float64)


def _top_eigenpairs(upper: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` largest eigenpairs of the symmetric matrix whose upper triangle is `upper`, largest first: on the
    CPU LAPACK computes only those (4x faster than a full decomposition at D=512), on a GPU the device's full
    ``eigh`` runs."""
    d = upper.shape[0]
    if upper.device.type == "cpu":
        evals, evecs = scipy.linalg.eigh(upper.numpy(), lower=False, subset_by_index=[d - k, d - 1])
        evals, evecs = torch.from_numpy(evals), torch.from_numpy(evecs)
    else:
        evals, evecs = torch.linalg.eigh(upper, UPLO="U")
    return evecs[:, -k:].flip(1), evals[-k:].flip(0).clamp_min(0)


def _gram_directions(centered: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-`k` right singular vectors (D, k) and squared singular values (k,) of a centred (n, D) matrix, n < D."""
    evals, u = torch.linalg.eigh(centered @ centered.T)
    evals, u = evals[-k:].flip(0).clamp_min(0), u[:, -k:].flip(1)
    v = centered.T @ u
    return v / v.norm(dim=0, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny), evals


def pca(
    stream: RowStream, rows: np.ndarray, k: int, generator: torch.Generator | None = None, fit_rows: int | None = None
) -> torch.Tensor:
    """Project the rows ``feats[rows]`` on their top-`k` principal components: (N, k) float64 scores. With
    `fit_rows` (and a `generator`), the components come from a seeded sample of at most that many rows."""
    return group_pca(stream, fit_subset(rows, fit_rows, generator), k).project(stream, rows)


def fit_subset(rows: np.ndarray, fit_rows: int | None, generator: torch.Generator | None) -> np.ndarray:
    """`rows`, or a seeded sorted sample of `fit_rows` of them when there are more."""
    if fit_rows is None or rows.shape[0] <= fit_rows:
        return rows
    if generator is None:
        raise ValueError("sampling fit_rows rows needs a seeded generator")
    return rows[sample_rows(rows.shape[0], fit_rows, generator, torch.device("cpu")).numpy()]


def _sym_decorrelation(w: torch.Tensor) -> torch.Tensor:
    s, u = torch.linalg.eigh(w @ w.T)
    return (u * s.clamp_min(torch.finfo(w.dtype).tiny).rsqrt()) @ u.T @ w


def fast_ica(
    stream: RowStream,
    rows: np.ndarray,
    k: int,
    generator: torch.Generator,
    max_iter: int = 200,
    tol: float = 1e-4,
    fit_rows: int | None = None,
) -> tuple[torch.Tensor, bool]:
    """Parallel FastICA (logcosh contrast) of the rows ``feats[rows]`` to `k` unit-variance sources:
    ((N, k) float64, converged).

    Same algorithm as scikit-learn's ``FastICA(whiten="unit-variance")``: PCA whitening to `k` dimensions, then
    symmetric fixed-point updates (the (n, k) products in float32: the tolerance is far above their rounding) from
    a seeded random unmixing matrix. With `fit_rows`, the whitening and the unmixing are fitted on a seeded sample
    of at most that many rows and then applied to every row.
    """
    fit = fit_subset(rows, fit_rows, generator)
    axes = group_pca(stream, fit, k)
    scale = (axes.eigenvalues / fit.shape[0]).clamp_min(torch.finfo(torch.float64).tiny).rsqrt()
    white_fit = axes.project(stream, fit) * scale
    w = _sym_decorrelation(torch.randn(k, k, generator=generator, dtype=torch.float64).to(white_fit))
    w, converged = _fixed_point(white_fit.to(torch.float32), w, max_iter, tol)
    white = white_fit if fit is rows else axes.project(stream, rows) * scale
    sources = white @ w.to(white.dtype).T
    return sources / sources.std(0, keepdim=True).clamp_min(torch.finfo(white.dtype).tiny), converged


def sample_rows(n: int, size: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """A seeded, sorted sample of `size` distinct row positions out of `n`."""
    return torch.randperm(n, generator=generator)[:size].sort().values.to(device)


def _fixed_point(white: torch.Tensor, w: torch.Tensor, max_iter: int, tol: float) -> tuple[torch.Tensor, bool]:
    """FastICA's symmetric logcosh iterations on whitened (n, k) float32 rows from the float64 unmixing `w`:
    (w, converged).

    The (n, k) products run in float32 with the rows held as a (k, n) matrix (the small products run 3-5x faster
    that way round), and tanh is taken as 2·sigmoid(2x) - 1 (the same function; PyTorch's CPU sigmoid kernel is
    10x faster than its tanh). The k x k update and its decorrelation stay in float64: in float32 an
    ill-conditioned update can lose orthogonality and blow the unmixing up."""
    columns = white.T.contiguous()
    n = columns.shape[1]
    for _ in range(max_iter):
        g = torch.sigmoid(2.0 * (w.to(columns.dtype) @ columns)).mul_(2.0).sub_(1.0)
        g_prime = 1.0 - (g * g).mean(1).to(w.dtype)
        w_new = _sym_decorrelation((g @ columns.T).to(w.dtype) / n - g_prime[:, None] * w)
        change = ((w_new * w).sum(1).abs() - 1.0).abs().max()
        w = w_new
        if change < tol:
            return w, True
    return w, False
