"""faiss-flash: exact Lloyd k-means on a fused, memory-traffic-aware engine, as a FAISS plug-in.

    from faiss_flash import Kmeans          # drop-in for faiss.Kmeans
    from faiss_flash import batch_kmeans    # (B, N, d) numpy arrays or torch tensors, no copies
    from faiss_flash import train_index, install_assign_index, uninstall_assign_index, refresh_ivf
    from faiss_flash import read_checkpoint  # what a resumable run's checkpoint holds
"""
from ._faiss_flash import BadCheckpointError, FaissError, cuda_available
from .kmeans import Kmeans
from .batch import BatchKmeansResult, batch_kmeans
from .indexes import install_assign_index, refresh_ivf, train_index, uninstall_assign_index
from .checkpoint import CheckpointInfo, read_checkpoint

__all__ = ["Kmeans", "batch_kmeans", "BatchKmeansResult", "train_index", "install_assign_index",
           "uninstall_assign_index", "refresh_ivf", "cuda_available", "FaissError", "read_checkpoint",
           "CheckpointInfo", "BadCheckpointError"]
