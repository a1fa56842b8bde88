"""Kmeans: the faiss.Kmeans API (FAISS 1.7.3) on the faiss-flash engine."""
import faiss
import numpy as np

from . import _faiss_flash
from ._arrays import parse_device

_PARAMS = ("niter", "nredo", "verbose", "spherical", "int_centroids", "update_index", "frozen_centroids",
           "min_points_per_centroid", "max_points_per_centroid", "seed", "decode_block_size")


class Kmeans:
    """Drop-in for faiss.Kmeans: same constructor keywords (ClusteringParameters fields), same
    train / assign, same centroids, obj, iteration_stats and index attributes.

    Extra keywords: device ('auto', 'cpu', 'cuda', 'cuda:N'), checkpoint_path and
    checkpoint_every (resumable training). `gpu=` is accepted for compatibility: a true value
    means device='cuda'.
    """

    def __init__(self, d, k, **kwargs):
        if not isinstance(d, (int, np.integer)) or d <= 0:
            raise ValueError(f"d: expected a positive integer, got {d!r}")
        if not isinstance(k, (int, np.integer)) or k <= 0:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        self.d, self.k = int(d), int(k)
        self.device = "auto"
        self.params = {}
        defaults = faiss.ClusteringParameters()
        for key, value in kwargs.items():
            if key == "device":
                parse_device(value)
                self.device = value
            elif key == "gpu":
                self.device = "cuda" if value else "cpu"
            elif key in ("checkpoint_path", "checkpoint_every"):
                self.params[key] = value
            elif key in _PARAMS:
                self.params[key] = value
            else:
                raise AttributeError(f"Kmeans: unknown parameter {key!r}")
        self.cp = defaults
        for key, value in self.params.items():
            if key in _PARAMS:
                setattr(self.cp, key, value)
        self.centroids = None

    def train(self, x, weights=None, init_centroids=None):
        """k-means of x (n, d) float32; returns the final objective."""
        x = np.ascontiguousarray(x, dtype="float32")
        if x.ndim != 2 or x.shape[1] != self.d:
            raise ValueError(f"x: expected shape (n, {self.d}), got {x.shape}")
        if weights is not None:
            weights = np.ascontiguousarray(weights, dtype="float32")
        if init_centroids is not None:
            init_centroids = np.ascontiguousarray(init_centroids, dtype="float32")
        spherical = bool(self.params.get("spherical", False))
        self.index = faiss.IndexFlatIP(self.d) if spherical else faiss.IndexFlatL2(self.d)
        backend, dev = parse_device(self.device)
        centroids, stats = _faiss_flash.train_clustering(x, self.k, self.params, weights, init_centroids,
                                                         int(self.index.this), backend, dev)
        self.centroids = centroids.reshape(self.k, self.d)
        self.obj = np.array([s["obj"] for s in stats])
        self.iteration_stats = stats
        return self.obj[-1] if self.obj.size > 0 else 0.0

    def assign(self, x):
        """(D, I): distance to and index of the nearest centroid of each row of x."""
        x = np.ascontiguousarray(x, dtype="float32")
        assert self.centroids is not None, "should train before assigning"
        self.index.reset()
        self.index.add(self.centroids)
        D, I = self.index.search(x, 1)
        return D.ravel(), I.ravel()
