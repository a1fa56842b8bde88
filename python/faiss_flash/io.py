"""Readers and writers for .fvecs / .bvecs / .npy files, with clear errors for bad files."""
import os

import numpy as np


class DataFileError(ValueError):
    pass


def read_vectors(path):
    """(n, d) float32 array from .fvecs, .bvecs or .npy; DataFileError names the file and the
    problem (missing, unreadable, truncated, inconsistent headers, wrong shape or dtype)."""
    try:
        return _read_vectors(path)
    except OSError as e:
        raise DataFileError(f"{path}: cannot read ({e.strerror or e})") from None
    except MemoryError:
        raise DataFileError(f"{path}: does not fit in memory") from None


def _read_vectors(path):
    if not os.path.exists(path):
        raise DataFileError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataFileError(f"{path}: is a directory")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        try:
            x = np.load(path, allow_pickle=False)
        except Exception as e:  # numpy raises several types for damaged files
            raise DataFileError(f"{path}: not a valid .npy file ({e})") from None
        if x.ndim != 2:
            raise DataFileError(f"{path}: expected a 2-D array, got shape {x.shape}")
        if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
            raise DataFileError(f"{path}: expected real numbers, got dtype {x.dtype}")
        if x.shape[0] == 0 or x.shape[1] == 0:
            raise DataFileError(f"{path}: empty array of shape {x.shape}")
        x = np.ascontiguousarray(x, dtype="float32")
        if not np.all(np.isfinite(x)):
            bad = int(np.nonzero(~np.isfinite(x).all(axis=1))[0][0])
            raise DataFileError(f"{path}: row {bad} holds NaN or Inf (or a value too large for float32)")
        return x
    if ext not in (".fvecs", ".bvecs"):
        raise DataFileError(f"{path}: unknown extension {ext!r} (expected .fvecs, .bvecs or .npy)")
    raw = np.fromfile(path, dtype="uint8")
    if raw.size == 0:
        raise DataFileError(f"{path}: empty file")
    if raw.size < 4:
        raise DataFileError(f"{path}: file too short for a vector header")
    d = int(raw[:4].view("int32")[0])
    if d <= 0 or d > 1 << 20:
        raise DataFileError(f"{path}: bad dimension {d} in the first header")
    elem = 4 if ext == ".fvecs" else 1
    row = 4 + d * elem
    n_full = raw.size // row
    rows = raw[:n_full * row].reshape(n_full, row)
    dims = rows[:, :4].copy().view("int32").ravel()
    if not np.all(dims == d):  # checked first: a bad header also breaks the size arithmetic
        bad = int(np.nonzero(dims != d)[0][0])
        raise DataFileError(f"{path}: row {bad} has dimension {dims[bad]}, expected {d} (corrupt or not a {ext} file)")
    if raw.size % row >= 4:
        last = int(raw[n_full * row:n_full * row + 4].view("int32")[0])
        if last != d:
            raise DataFileError(f"{path}: row {n_full} has dimension {last}, expected {d} "
                                f"(corrupt or not a {ext} file)")
    if raw.size % row != 0:
        raise DataFileError(f"{path}: truncated file ({raw.size} bytes is not a multiple of the {row}-byte rows "
                            f"of d={d}; the last row has {raw.size % row} bytes)")
    body = rows[:, 4:]
    x = body.copy().view("float32") if elem == 4 else body.astype("float32")
    if elem == 4 and not np.all(np.isfinite(x)):
        bad = int(np.nonzero(~np.isfinite(x).all(axis=1))[0][0])
        raise DataFileError(f"{path}: row {bad} holds NaN or Inf")
    return np.ascontiguousarray(x)


OUTPUT_EXTENSIONS = (".npy", ".fvecs")


def check_output_path(path):
    """Raises DataFileError unless write_vectors can write path: a known extension in an
    existing directory (checked before a long run, not after it)."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in OUTPUT_EXTENSIONS:
        raise DataFileError(f"{path}: unknown output extension {ext!r} (expected .npy or .fvecs)")
    check_output_dir(path)


def check_output_dir(path):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise DataFileError(f"{path}: no such directory {parent}")
    if os.path.isdir(path):
        raise DataFileError(f"{path}: is a directory")


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
