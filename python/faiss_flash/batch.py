"""batch_kmeans: B independent k-means problems (B, N, d) in one call."""
from collections import namedtuple

import numpy as np

from . import _faiss_flash
from ._arrays import check_weights, describe, is_torch, parse_device, parse_placement

class BatchKmeansResult(namedtuple("BatchKmeansResult", "centroids labels obj iteration_stats")):
    """centroids, labels, obj, iteration_stats (a 4-tuple), and the attribute placement_report:
    None, or where the CUDA engine sharded or streamed host points, how (see
    Kmeans.train)."""
    placement_report = None

    def _replace(self, **fields):
        out = super()._replace(**fields)
        out.placement_report = self.placement_report
        return out


def initial_rows(n, k, seed, batch):
    """FAISS' initialisation, one permutation per problem: problem b starts from rows
    faiss::rand_perm(n, seed + 1 + b)[:k]. Problem 0 thus starts where faiss.Kmeans(seed=seed)
    does, and a 2-D input with n <= k * max_points_per_centroid (no FAISS subsampling) gives
    faiss.Kmeans' centroids."""
    return [_faiss_flash.rand_perm(n, seed + 1 + b)[:k].astype(np.int64) for b in range(batch)]


def batch_kmeans(x, k, niter=25, seed=1234, metric="l2", spherical=False, init_centroids=None, weights=None,
                 device="auto", devices=None, streaming="auto", max_gpu_memory=None, transfer_dtype=None,
                 fp32_mode="exact", piece_rows=None):
    """Clusters each of the B problems of x into k clusters.

    x: (B, N, d) or (N, d); numpy float32/float16, or torch float32/float16/bfloat16 on the CPU
    or a CUDA device. The data is read in place (no copy when contiguous).
    Initial centroids: init_centroids (B, k, d), else rows faiss::rand_perm(N, seed + 1 + b)[:k]
    of each problem b (so a 2-D input starts where faiss.Kmeans(seed=seed) does).
    Returns BatchKmeansResult(centroids (B, k, d) float32, labels (B, N) int64, obj (B,) float64
    = sum of each point's distance (L2: squared) or similarity (ip) to its final centroid,
    iteration_stats [B][niter]) as numpy arrays for numpy input, torch tensors on x's device for
    torch input; a 2-D input gives 2-D / 1-D results.
    Host data on the CUDA engine may be larger than the GPU or spread over several: devices
    (list of CUDA ordinals, sharded in order), streaming ('auto': stream what does not fit,
    'off', 'force'), max_gpu_memory (bytes per device), transfer_dtype ('float16' / 'bfloat16':
    float32 points sent at half the bytes), piece_rows (rows per piece; default about 1 GiB).
    fp32_mode: 'exact' (default) or 'tf32' (opt-in, TF32-class float32 products on the GPU,
    about twice as fast).
    """
    if metric not in ("l2", "ip"):
        raise ValueError(f"metric: expected 'l2' or 'ip', got {metric!r}")
    if not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k: expected a positive integer, got {k!r}")
    if not isinstance(niter, (int, np.integer)) or niter < 0:
        raise ValueError(f"niter: expected a non-negative integer, got {niter!r}")
    if not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed: expected an integer, got {type(seed).__name__}")
    backend, cuda_device = parse_device(device)
    placement = parse_placement(devices, streaming, max_gpu_memory, transfer_dtype, piece_rows, fp32_mode)
    if is_torch(x):
        x = x.detach()  # same storage; the initial rows below are read without autograd
    ptr, dtype, b, n, d, data_device = describe(x, "x")
    squeeze = (x.dim() if is_torch(x) else x.ndim) == 2
    if data_device >= 0:
        if backend == "cpu" or (cuda_device >= 0 and cuda_device != data_device):
            raise ValueError(f"device: x is on cuda:{data_device} but device={device!r}")
        backend = "cuda"
    if k > n:
        raise ValueError(f"k: {k} clusters need at least {k} points per problem, got N={n}")

    if init_centroids is not None:
        c = init_centroids.detach().float().cpu().numpy() if is_torch(init_centroids) else np.asarray(init_centroids)
        c = np.ascontiguousarray(c, dtype="float32")
        # (k, d) for a 2-D x, (B, k, d) for a 3-D one; (1, k, d) also for a 2-D x. A (d, k) array
        # has the right size but not the right shape.
        if c.shape != (b, k, d) and not (squeeze and c.shape == (k, d)):
            raise ValueError(f"init_centroids: expected shape {(k, d) if squeeze else (b, k, d)}, got {c.shape}")
        centroids = c.reshape(b, k, d).copy()
    else:
        rows = initial_rows(n, k, seed, b)
        if is_torch(x):
            import torch
            idx = torch.as_tensor(np.stack(rows), device=x.device).reshape(b, k)
            xb = x.reshape(b, n, d)
            centroids = torch.stack([xb[i, idx[i]] for i in range(b)]).float().cpu().numpy()
        else:
            xb = x.reshape(b, n, d)
            centroids = np.stack([xb[i, rows[i]] for i in range(b)]).astype("float32")
        centroids = np.ascontiguousarray(centroids)
    w = None
    if weights is not None:
        w = weights.detach().float().cpu().numpy() if is_torch(weights) else np.asarray(weights, dtype="float32")
        w = np.ascontiguousarray(w, dtype="float32")
        if w.shape != (b, n) and not (squeeze and w.shape == (n,)):
            raise ValueError(f"weights: expected shape {(n,) if squeeze else (b, n)}, got {w.shape}")
        check_weights(w)
        w = w.reshape(b * n)
    stats, report = _faiss_flash.run_lloyd(ptr, dtype, b, n, d, data_device, centroids, k, niter, metric, spherical,
                                           w, backend, cuda_device, placement)
    dist, labels = _faiss_flash.assign(ptr, dtype, b, n, d, data_device, centroids, k, metric, backend, cuda_device)
    # objective of the returned centroids and labels (iteration_stats[b][-1]["obj"] is, as in
    # FAISS, that of the centroids before the last update)
    obj = dist.sum(axis=1, dtype="float64")
    if is_torch(x):
        import torch
        centroids = torch.from_numpy(centroids).to(x.device)
        labels = torch.from_numpy(labels).to(x.device)
        obj = torch.from_numpy(obj)
    if squeeze:
        centroids, labels = centroids[0], labels[0]
    result = BatchKmeansResult(centroids, labels, obj, stats)
    result.placement_report = report
    return result
