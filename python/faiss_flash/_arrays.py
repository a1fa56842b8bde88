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


def describe(x, name, ndim_choices=(2, 3)):
    """Returns (ptr, dtype, batch, n, d, data_device) for a contiguous array or tensor."""
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
