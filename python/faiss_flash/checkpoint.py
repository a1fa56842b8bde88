"""What a resumable run's checkpoint holds (checkpoint_path of Kmeans, the C++ API and the
command-line tools): read without running anything, e.g. to see how far a run got."""
from typing import NamedTuple, Optional

import numpy as np

from . import _faiss_flash


class CheckpointInfo(NamedTuple):
    iterations_done: int
    batch: int
    n: int
    d: int
    k: int
    metric: str              # "l2" or "ip"
    obj: np.ndarray          # (batch, iterations_done) objective after each finished iteration
    centroids: np.ndarray    # (batch, k, d) float32: the centroids after those iterations


def read_checkpoint(path) -> Optional[CheckpointInfo]:
    """The checkpoint at path, or None when there is no file there. Raises BadCheckpointError (a
    ValueError) when the file is not a faiss-flash checkpoint (or is truncated, or of another
    format version); training raises it too for a checkpoint of another run."""
    info = _faiss_flash.read_checkpoint(str(path))
    return None if info is None else CheckpointInfo(**info)
