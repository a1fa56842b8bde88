"""Kmeans: the faiss.Kmeans API (FAISS 1.7.3) on the faiss-flash engine."""
import os

import numpy as np

from . import _faiss_flash
from ._arrays import check_weights, parse_device, parse_placement
from ._faiss import faiss

_PLACEMENT = ("devices", "streaming", "max_gpu_memory", "transfer_dtype", "piece_rows", "fp32_mode")

# faiss.ClusteringParameters fields, handed to the C++ FlashClustering at train time.
_CP_FIELDS = ("niter", "nredo", "verbose", "spherical", "int_centroids", "update_index", "frozen_centroids",
              "min_points_per_centroid", "max_points_per_centroid", "seed", "decode_block_size")


class Kmeans:
    """Drop-in for faiss.Kmeans: same constructor keywords (ClusteringParameters fields, kept in
    `self.cp` as FAISS does, so `km.cp.niter = 10` after construction works too), same train /
    assign, same centroids, obj, iteration_stats and index attributes. With the CPU engine the
    centroids are bit-identical to faiss.Kmeans with the same seed (except at exact ties).

    Extra keywords: device ('auto', 'cpu', 'cuda', 'cuda:N'), checkpoint_path (str or
    os.PathLike) and checkpoint_every (resumable training: iterations between checkpoints, 1
    unless given; 0: only at the end and when stopped), and for several GPUs or data larger
    than the GPU:
    devices (list of CUDA ordinals to shard over), streaming ('auto', 'off', 'force'),
    max_gpu_memory (bytes per device), transfer_dtype ('float16' / 'bfloat16'), piece_rows;
    fp32_mode ('exact', the default, or 'tf32': opt-in TF32-class float32 products on the GPU,
    about twice as fast, may misassign close points). `gpu=` is accepted as FAISS does: a true value
    selects device='auto' (the CUDA engine when a GPU is visible). `progressive_dim_steps`
    (progressive-dimension clustering) is delegated to faiss.Kmeans.
    """

    def __init__(self, d, k, **kwargs):
        if not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"d: expected a positive integer, got {d!r}")
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        self.d, self.k = int(d), int(k)
        self.gpu = False
        self.device = "auto"
        self.checkpoint = {}
        self.placement_report = None
        self.placement = parse_placement(**{key: kwargs.pop(key) for key in _PLACEMENT if key in kwargs})
        self._delegate = None
        if "progressive_dim_steps" in kwargs:
            faiss_kwargs = {key: v for key, v in kwargs.items() if key != "device"}
            self._delegate = faiss.Kmeans(d, k, **faiss_kwargs)
            self.cp = self._delegate.cp
            self.centroids = None
            return
        self.cp = faiss.ClusteringParameters()
        for key, value in kwargs.items():
            if key == "device":
                parse_device(value)
                self.device = value
            elif key == "gpu":
                self.gpu = value
                self.device = "auto" if value else "cpu"
            elif key == "checkpoint_path":
                if not isinstance(value, (str, os.PathLike)) or os.fspath(value) in ("", b""):
                    raise ValueError(f"checkpoint_path: expected a file name (str or os.PathLike), got {value!r}")
                self.checkpoint[key] = os.fsdecode(value)
            elif key == "checkpoint_every":
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**31:
                    raise ValueError(f"checkpoint_every: expected an integer in [0, 2**31), got {value!r}")
                self.checkpoint[key] = int(value)
            else:
                # as faiss.Kmeans: an unknown field raises AttributeError
                getattr(self.cp, key)
                setattr(self.cp, key, value)
        if "checkpoint_every" in self.checkpoint and "checkpoint_path" not in self.checkpoint:
            raise ValueError("checkpoint_every: given without checkpoint_path")
        if "checkpoint_path" in self.checkpoint:  # as the CLI: a checkpoint every iteration unless told
            self.checkpoint.setdefault("checkpoint_every", 1)
        self.centroids = None

    def train(self, x, weights=None, init_centroids=None):
        """k-means of x (n, d); returns the final objective. Sets centroids (k, d), obj
        (per-iteration objectives), iteration_stats (list of dicts: obj, time, time_search,
        imbalance_factor, nsplit), index (an IndexFlatL2, or IndexFlatIP when spherical,
        holding the centroids) and placement_report: None, or where the CUDA engine sharded or
        streamed host points, a dict: shards, pieces, resident_rows, streamed_rows,
        streamed_bytes (per iteration), host_pinned (streamed rows sent by DMA from pinned
        memory), converted_rows (converted once to transfer_dtype), setup_s, and per iteration
        copy_s and compute_s (the slowest device's, CUDA events) and iteration_s."""
        self.placement_report = None
        if self._delegate is not None:
            obj = self._delegate.train(x, weights=weights, init_centroids=init_centroids)
            self.centroids, self.obj = self._delegate.centroids, self._delegate.obj
            self.iteration_stats = self._delegate.iteration_stats
            return obj
        x = np.ascontiguousarray(x, dtype="float32")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x: expected shape (n, {self.d}), got {x.shape}")
        if weights is not None:
            weights = np.ascontiguousarray(weights, dtype="float32")
            check_weights(weights)
        if init_centroids is not None:
            init_centroids = np.ascontiguousarray(init_centroids, dtype="float32")
        params = {f: getattr(self.cp, f) for f in _CP_FIELDS}
        params.update(self.checkpoint)
        self.index = faiss.IndexFlatIP(self.d) if self.cp.spherical else faiss.IndexFlatL2(self.d)
        backend, dev = parse_device(self.device)
        centroids, stats, self.placement_report = _faiss_flash.train_clustering(
            x, self.k, params, weights, init_centroids, int(self.index.this), backend, dev, self.placement)
        self.centroids = centroids.reshape(self.k, self.d)
        self.obj = np.array([s["obj"] for s in stats])
        self.iteration_stats = stats
        return self.obj[-1] if self.obj.size > 0 else 0.0

    def assign(self, x):
        """(D, I): distance to and index of the nearest centroid of each row of x."""
        if self._delegate is not None:
            return self._delegate.assign(x)
        x = np.ascontiguousarray(x, dtype="float32")
        assert self.centroids is not None, "should train before assigning"
        self.index.reset()
        self.index.add(self.centroids)
        D, I = self.index.search(x, 1)
        return D.ravel(), I.ravel()
