"""Helpers that take faiss Python indexes: whole-index training, the assignment-index hook,
and warm-start refresh of an IVF index as its data changes."""
import numpy as np

from . import _faiss_flash
from ._arrays import parse_device
from ._faiss import faiss


def _ptr(index):
    if not hasattr(index, "this"):
        raise TypeError(f"index: expected a faiss index, got {type(index).__name__}")
    return int(index.this)


def train_index(index, x, device="auto"):
    """index.train(x) with every k-means on faiss-flash (IndexIVFFlat, IndexIVFPQ, IndexPQ)."""
    backend, dev = parse_device(device)
    x = np.ascontiguousarray(x, dtype="float32")
    _faiss_flash.train_index(_ptr(index), x, backend, dev)


class _AssignIndex:
    """Owns a C++ FlashAssignIndex (freed with this object; _installed keeps it while in use)."""

    def __init__(self, d, inner_product, device):
        backend, dev = parse_device(device)
        self.ptr = _faiss_flash.new_assign_index(int(d), bool(inner_product), backend, dev)

    def __del__(self):
        if getattr(self, "ptr", 0):
            _faiss_flash.free_assign_index(self.ptr)
            self.ptr = 0


# The hooks installed, by the address of the faiss index that uses them. FAISS does not own
# clustering_index / pq.assign_index, and the Python object passed in may be a temporary proxy
# (faiss.extract_index_ivf(index), faiss.downcast_index(index)) that dies long before the
# C++ index is trained: the hook lives here until it is replaced by another install on the
# same index or removed by uninstall_assign_index.
_installed = {}


def _hook_target(index):
    """(concrete index, field name, dsub or d, inner product) of an IndexIVF* or IndexPQ."""
    concrete = faiss.downcast_index(index)
    if isinstance(concrete, faiss.IndexPQ):
        return concrete, "pq.assign_index", concrete.pq.dsub, False
    if isinstance(concrete, faiss.IndexIVF):
        return concrete, "clustering_index", concrete.d, concrete.metric_type == faiss.METRIC_INNER_PRODUCT
    raise TypeError(f"index: expected an IndexIVF* or IndexPQ, got {type(concrete).__name__}")


def install_assign_index(index, device="auto"):
    """Makes FAISS' own k-means inside index.train() assign points on faiss-flash: sets
    `clustering_index` of an IVF index, or `pq.assign_index` of an IndexPQ. Returns the field set.

    The hook is kept alive by this module, not by `index` (which may be a temporary such as
    faiss.extract_index_ivf(idx)); installing again on the same index replaces it, and
    uninstall_assign_index(index) clears the field and frees it."""
    concrete, _, d, inner = _hook_target(index)
    hook = _AssignIndex(d, inner, device)
    field = _faiss_flash.install_assign_index(_ptr(concrete), type(concrete).__name__, hook.ptr)
    # The index points to the new hook now: the one it replaces (if any) may be freed.
    _installed[_ptr(concrete)] = hook
    return field


def uninstall_assign_index(index):
    """Undoes install_assign_index: frees the hook and clears the field it set, unless the field
    was pointed elsewhere since. Returns that field's name, or None when no hook was installed on
    index. (Hooks live until replaced or uninstalled: uninstall those of indexes trained in a loop.)"""
    concrete, field, _, _ = _hook_target(index)
    hook = _installed.pop(_ptr(concrete), None)
    if hook is None:
        return None
    owner = concrete.pq if field == "pq.assign_index" else concrete
    name = field.split(".")[-1]
    current = getattr(owner, name)
    if current is not None and int(current.this) == hook.ptr:
        setattr(owner, name, None)
    return field


def refresh_ivf(index, x=None, ids=None, keep_existing=False, train_extra=None, niter=5, max_train=None,
                seed=1234, rebalance=-1, rebalance_rounds=1, verbose=False, objective=False, device="auto"):
    """Refreshes a trained IVF index whose data has drifted (C++: faiss_flash::refresh_ivf).

    The coarse centroids are warm-started from the current ones and refined by `niter`
    k-means iterations on a sample of the training pool, the quantizer gets the refined
    centroids and the inverted lists are rebuilt.

    x: (n, d) float32 vectors, with `ids` (n,) int64 or None for sequential ids.
    keep_existing: False (default): the index is reset and holds exactly x afterwards (pass the
        whole set, old and new); True (IndexIVFFlat only): the vectors the index holds stay (read
        back exactly from its lists, ids kept) and x holds only the new vectors to add.
    train_extra: (m, d) rows used only for the k-means (e.g. a sample of old vectors that are
        not re-added).
    The training pool is [kept vectors; x; train_extra]; max_train rows are drawn from it
    (default cp.max_points_per_centroid * nlist).
    rebalance: before iterating, move up to this many centroids from clusters under half the
        mean size to split clusters over twice the mean size (Lloyd alone cannot spread
        centroids into a dense region that appeared far from them); one more assignment pass.
        -1 (default): nlist // 4; 0: off (the refresh is then exactly FAISS' k-means started
        from the current centroids).
    rebalance_rounds: rebalance this many times, sharing the niter iterations between rounds.
    objective: also compute obj_after (one more assignment pass over the sample).
    Returns a dict: n_train, ntotal, obj_before / obj_after (objective of the old / refreshed
    centroids on the training sample; obj_after is NaN unless objective=True), mean_shift,
    n_rebalanced, kmeans_s, rebuild_s.
    """
    concrete = faiss.downcast_index(index)
    if not isinstance(concrete, faiss.IndexIVF):
        raise TypeError(f"index: expected an IndexIVF* (IndexIVFFlat, IndexIVFPQ, ...), got {type(concrete).__name__}")
    backend, dev = parse_device(device)

    def rows(a, name):
        if a is None:
            return None
        a = np.ascontiguousarray(a, dtype="float32")
        if a.ndim != 2 or a.shape[1] != concrete.d:
            raise ValueError(f"{name}: expected shape (n, {concrete.d}), got {a.shape}")
        return a

    x, train_extra = rows(x, "x"), rows(train_extra, "train_extra")
    if ids is not None:
        if x is None:
            raise ValueError("ids: given without x")
        ids = np.ascontiguousarray(ids, dtype="int64")
        if ids.shape != (x.shape[0],):
            raise ValueError(f"ids: expected shape ({x.shape[0]},), got {ids.shape}")
    if not isinstance(niter, (int, np.integer)) or niter < 0:
        raise ValueError(f"niter: expected a non-negative integer, got {niter!r}")
    return _faiss_flash.refresh_ivf(_ptr(concrete), type(concrete).__name__, x, ids, train_extra, bool(keep_existing),
                                    int(niter), int(max_train or 0), int(seed), int(rebalance), int(rebalance_rounds), bool(verbose),
                                    bool(objective),
                                    backend, dev)
