"""Readers and writers for .fvecs / .bvecs / .npy files, with clear errors for bad files."""
import os

import numpy as np


class DataFileError(ValueError):
    pass


def read_vectors(path):
    """(n, d) float32 array from .fvecs, .bvecs or .npy."""
    if not os.path.exists(path):
        raise DataFileError(f"{path}: no such file")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises several types for damaged files
            raise DataFileError(f"{path}: not a valid .npy file ({e})") from None
        if x.ndim != 2:
            raise DataFileError(f"{path}: expected a 2-D array, got shape {x.shape}")
        if not np.issubdtype(x.dtype, np.number):
            raise DataFileError(f"{path}: expected numbers, got dtype {x.dtype}")
        return np.ascontiguousarray(x, dtype="float32")
    if ext not in (".fvecs", ".bvecs"):
        raise DataFileError(f"{path}: unknown extension {ext!r} (expected .fvecs, .bvecs or .npy)")
    raw = np.fromfile(path, dtype="uint8")
    if raw.size < 4:
        raise DataFileError(f"{path}: file too short for a vector header")
    d = int(raw[:4].view("int32")[0])
    if d <= 0 or d > 1 << 20:
        raise DataFileError(f"{path}: bad dimension {d} in the first header")
    elem = 4 if ext == ".fvecs" else 1
    row = 4 + d * elem
    if raw.size % row != 0:
        raise DataFileError(f"{path}: truncated file ({raw.size} bytes is not a multiple of the {row}-byte rows)")
    rows = raw.reshape(-1, row)
    dims = rows[:, :4].copy().view("int32").ravel()
    if not np.all(dims == d):
        bad = int(np.nonzero(dims != d)[0][0])
        raise DataFileError(f"{path}: row {bad} has dimension {dims[bad]}, expected {d}")
    body = rows[:, 4:]
    x = body.copy().view("float32") if elem == 4 else body.astype("float32")
    return np.ascontiguousarray(x)


def write_vectors(path, x):
    x = np.ascontiguousarray(x, dtype="float32")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        np.save(path, x)
    elif ext == ".fvecs":
        n, d = x.shape
        out = np.empty((n, d + 1), dtype="float32")
        out[:, 0] = np.array([d], dtype="int32").view("float32")[0]
        out[:, 1:] = x
        out.tofile(path)
    else:
        raise DataFileError(f"{path}: unknown output extension {ext!r} (expected .npy or .fvecs)")
