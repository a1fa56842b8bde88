"""Array introspection shared by the Python API: numpy arrays and torch tensors (CPU or CUDA)
are described by (data pointer, dtype, shape, device) without copying them."""
import numpy as np

_NUMPY_DTYPES = {np.dtype("float32"): "float32", np.dtype("float16"): "float16"}


def is_torch(x):
    return type(x).__module__.startswith("torch")


def parse_device(device):
    """'auto' | 'cpu' | 'cuda' | 'cuda:N' -> (backend, cuda_device)."""
    if not isinstance(device, str):
        raise TypeError(f"device: expected a string like 'auto', 'cpu' or 'cuda:0', got {type(device).__name__}")
    if device in ("auto", "cpu", "cuda"):
        return device, -1
    if device.startswith("cuda:") and device[5:].isdigit():
        return "cuda", int(device[5:])
    raise ValueError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {device!r}")


def _positive_int(v, name, expected):
    if not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{name}: expected {expected}, got {v!r}")
    return int(v)


def parse_placement(devices=None, streaming="auto", max_gpu_memory=None, transfer_dtype=None, piece_rows=None,
                    fp32_mode="exact"):
    """Several GPUs, data larger than the GPU and the fp32 mode (flash::LloydOptions), validated -> dict.

    devices: list of CUDA ordinals to shard the points over (a device may repeat); None: one.
    streaming: 'auto' (stream what does not fit), 'off' (must fit), 'force' (stream everything).
    max_gpu_memory: cap in bytes per device. transfer_dtype: 'float16' / 'bfloat16' to send
    float32 points at half the bytes. piece_rows: rows per streamed piece. fp32_mode: 'exact'
    (float32 points on the GPU: the exact fp32 argmin except near-ties) or 'tf32' (opt-in:
    TF32-class products, about twice as fast, may misassign close points).
    """
    out = {}
    if fp32_mode not in ("exact", "tf32"):
        raise ValueError(f"fp32_mode: expected 'exact' or 'tf32', got {fp32_mode!r}")
    out["fp32_mode"] = fp32_mode
    if devices is not None:
        if isinstance(devices, (int, np.integer)) or isinstance(devices, str) or \
                not all(isinstance(v, (int, np.integer)) and v >= 0 for v in devices) or len(devices) == 0:
            raise ValueError(f"devices: expected a non-empty list of CUDA ordinals (>= 0), got {devices!r}")
        out["devices"] = [int(v) for v in devices]
    if streaming not in ("auto", "off", "force"):
        raise ValueError(f"streaming: expected 'auto', 'off' or 'force', got {streaming!r}")
    out["streaming"] = streaming
    if max_gpu_memory is not None:
        out["max_gpu_memory"] = _positive_int(max_gpu_memory, "max_gpu_memory", "a positive number of bytes")
    if transfer_dtype is not None:
        if transfer_dtype not in ("float32", "float16", "bfloat16"):
            raise ValueError(f"transfer_dtype: expected 'float32', 'float16' or 'bfloat16', got {transfer_dtype!r}")
        out["transfer_dtype"] = transfer_dtype
    if piece_rows is not None:
        out["piece_rows"] = _positive_int(piece_rows, "piece_rows", "a positive integer")
    return out


def check_weights(w, name="weights"):
    """ValueError unless every weight of the float32 array w is finite and non-negative."""
    bad = ~(w >= 0) | np.isinf(w)  # NaN compares false
    if bad.any():
        i = tuple(int(v) for v in np.unravel_index(int(np.argmax(bad)), w.shape))
        where = i[0] if len(i) == 1 else i
        raise ValueError(f"{name}: expected finite non-negative values, got {w[i]} at index {where}")


def describe(x, name, ndim_choices=(2, 3)):
    """Returns (ptr, dtype, batch, n, d, data_device) for a contiguous array or tensor; waits for
    the work torch has queued on a CUDA tensor."""
    if is_torch(x):
        import torch
        dtypes = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}
        if x.dtype not in dtypes:
            raise TypeError(f"{name}: dtype {x.dtype} is not supported (float32, float16, bfloat16)")
        if x.dim() not in ndim_choices:
            raise ValueError(f"{name}: expected {' or '.join(map(str, ndim_choices))} dimensions, got shape {tuple(x.shape)}")
        if not x.is_contiguous():
            raise ValueError(f"{name}: tensor must be contiguous (call .contiguous())")
        device = x.device.index if x.is_cuda else -1
        if x.is_cuda and device is None:
            device = torch.cuda.current_device()
        if x.is_cuda:
            # The engine reads x on its own stream: what torch has queued on its current stream
            # (the kernels that wrote x) must be finished first.
            torch.cuda.current_stream(x.device).synchronize()
        shape = tuple(x.shape)
        ptr, dtype = x.data_ptr(), dtypes[x.dtype]
    else:
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name}: expected a numpy array or a torch tensor, got {type(x).__name__}")
        if x.dtype not in _NUMPY_DTYPES:
            raise TypeError(f"{name}: dtype {x.dtype} is not supported (float32, float16; bfloat16 via torch)")
        if x.ndim not in ndim_choices:
            raise ValueError(f"{name}: expected {' or '.join(map(str, ndim_choices))} dimensions, got shape {x.shape}")
        if not x.flags.c_contiguous:
            raise ValueError(f"{name}: array must be C-contiguous (use np.ascontiguousarray)")
        shape, ptr, dtype, device = x.shape, x.__array_interface__["data"][0], _NUMPY_DTYPES[x.dtype], -1
    if len(shape) == 2:
        shape = (1,) + shape
    b, n, d = shape
    if b <= 0 or n <= 0 or d <= 0:
        raise ValueError(f"{name}: empty shape {shape}")
    return ptr, dtype, b, n, d, device
