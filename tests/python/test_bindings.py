"""The pybind11 layer: faiss Python index pointers across the two libfaiss copies, exception
mapping, the GIL."""
import subprocess
import sys
import threading
import time

import faiss
import numpy as np
import pytest

import faiss_flash
from faiss_flash import _faiss_flash
from conftest import gaussian


@pytest.mark.parametrize("make", [
    lambda: faiss.IndexFlatL2(8),
    lambda: faiss.IndexFlatIP(8),
    lambda: faiss.IndexPQ(8, 2, 4),
    lambda: faiss.IndexIVFFlat(faiss.IndexFlatL2(8), 8, 4),
    lambda: faiss.index_factory(8, "IVF4,PQ2np"),
])
def test_dynamic_cast_across_libfaiss_copies(make):
    # python3-faiss and our module each carry a static libfaiss; dynamic_cast on a pointer to
    # an object built by python3-faiss must still find its concrete class (DESIGN.md section 2).
    owner = make()  # keeps the C++ object alive (downcast_index's proxy does not own it)
    index = faiss.downcast_index(owner)
    assert _faiss_flash._cast_probe(int(index.this)) == type(owner).__name__


def test_type_name_fallback_when_dynamic_cast_is_off(rs):
    # The fallback path (Python class name + static_cast) gives the same results.
    xb = gaussian(rs, 4000, 8)
    _faiss_flash._force_name_cast(True)
    try:
        index = faiss.index_factory(8, "IVF16,Flat")
        assert faiss_flash.install_assign_index(index, device="cpu") == "clustering_index"
        index.train(xb)
        c_fallback = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 16)
        index.add(xb)
        info = faiss_flash.refresh_ivf(index, xb, niter=2, device="cpu")
        assert info["ntotal"] == 4000
        pq = faiss.IndexPQ(8, 2, 4)
        assert faiss_flash.install_assign_index(pq, device="cpu") == "pq.assign_index"
        with pytest.raises(TypeError, match="index"):
            faiss_flash.refresh_ivf(faiss.IndexFlatL2(8), xb)
    finally:
        _faiss_flash._force_name_cast(False)
    ref = faiss.index_factory(8, "IVF16,Flat")
    faiss_flash.install_assign_index(ref, device="cpu")
    ref.train(xb)
    assert np.array_equal(faiss.extract_index_ivf(ref).quantizer.reconstruct_n(0, 16), c_fallback)


def test_faiss_errors_are_runtime_errors():
    # faiss.Kmeans raises RuntimeError for n < k; ours too (and ValueError: it is an argument error)
    x = np.ones((10, 8), "float32")
    with pytest.raises(RuntimeError, match="at least"):
        faiss.Kmeans(8, 40).train(x)
    with pytest.raises(RuntimeError, match="at least") as e:
        faiss_flash.Kmeans(8, 40, device="cpu").train(x)
    assert isinstance(e.value, ValueError) and isinstance(e.value, faiss_flash.FaissError)


def test_invalid_argument_is_value_error():
    with pytest.raises(ValueError, match="x"):
        _faiss_flash.train_clustering(np.zeros(5, "float32"), 2, {}, None, None, 0, "cpu", -1, {})
    with pytest.raises(ValueError, match="unknown clustering parameter"):
        _faiss_flash.train_clustering(np.zeros((5, 2), "float32"), 2, {"nope": 1}, None, None,
                                      int(faiss.IndexFlatL2(2).this), "cpu", -1, {})


def test_gil_is_released_during_compute(rs):
    x = np.stack([gaussian(rs, 20000, 32) for _ in range(2)])
    done = threading.Event()

    def spin(seconds):
        ticks, t_end = 0, time.perf_counter() + seconds
        while time.perf_counter() < t_end:
            ticks += 1
        return ticks

    base_rate = spin(0.2) / 0.2

    def work():
        faiss_flash.batch_kmeans(x, 256, niter=10, device="cpu")
        done.set()

    t = threading.Thread(target=work)
    ticks, t0 = 0, time.perf_counter()
    t.start()
    while not done.is_set():
        ticks += 1
        time.perf_counter()
    t.join()
    elapsed = time.perf_counter() - t0
    # With the GIL held through the engine call this loop would stall for the call's whole
    # duration (a few ms of progress); released, it keeps running on the other core.
    share = ticks / (base_rate * elapsed)
    print(f"main thread ran at {100 * share:.0f}% of its idle rate during {elapsed:.2f} s of clustering")
    assert elapsed > 0.05 and share > 0.15


def test_batch_kmeans_needs_no_faiss_python_package():
    # A PyTorch-only environment: faiss_flash imports, batch_kmeans runs, and the FAISS-based
    # parts say what is missing when first used.
    code = """
import sys
sys.modules["faiss"] = None  # import faiss now raises ImportError
import numpy as np
import faiss_flash
x = np.random.RandomState(0).rand(2, 500, 8).astype("float32")
r = faiss_flash.batch_kmeans(x, 5, niter=3, device="cpu")
assert r.centroids.shape == (2, 5, 8)
try:
    faiss_flash.Kmeans(8, 5)
except ImportError as e:
    assert "python3-faiss" in str(e), e
else:
    raise AssertionError("Kmeans without faiss did not raise")
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_read_checkpoint(tmp_path, rs):
    x = gaussian(rs, 2000, 8)
    ckpt = tmp_path / "run.ckpt"
    assert faiss_flash.read_checkpoint(ckpt) is None  # no file yet
    km = faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=str(ckpt), checkpoint_every=1)
    km.train(x)
    info = faiss_flash.read_checkpoint(ckpt)
    # n: the training set, subsampled as FAISS does to k * max_points_per_centroid (5 * 256) rows
    assert (info.iterations_done, info.batch, info.n, info.d, info.k, info.metric) == (3, 1, 1280, 8, 5, "l2")
    np.testing.assert_array_equal(info.centroids[0], km.centroids)
    np.testing.assert_allclose(info.obj[0], km.obj, rtol=1e-12)
    (tmp_path / "other").write_bytes(b"not a checkpoint at all")
    with pytest.raises(faiss_flash.BadCheckpointError, match="not a faiss-flash checkpoint"):
        faiss_flash.read_checkpoint(tmp_path / "other")


def test_checkpoint_keywords(tmp_path, rs):
    # checkpoint_path takes a path-like; with it, a checkpoint every iteration unless told (as the
    # CLI); wrong types, a negative interval, or an interval without a path are ValueErrors
    # naming the keyword, at construction.
    x = gaussian(rs, 1000, 8)
    ckpt = tmp_path / "run.ckpt"
    km = faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=ckpt)
    assert km.checkpoint == {"checkpoint_path": str(ckpt), "checkpoint_every": 1}
    km.train(x)
    assert faiss_flash.read_checkpoint(ckpt).iterations_done == 3
    assert faiss_flash.Kmeans(8, 5, checkpoint_path=ckpt, checkpoint_every=0).checkpoint["checkpoint_every"] == 0
    for kwargs, name in [({"checkpoint_path": 5}, "checkpoint_path"),
                         ({"checkpoint_path": ckpt, "checkpoint_every": "2"}, "checkpoint_every"),
                         ({"checkpoint_path": ckpt, "checkpoint_every": -1}, "checkpoint_every"),
                         ({"checkpoint_path": ckpt, "checkpoint_every": True}, "checkpoint_every"),
                         ({"checkpoint_path": ckpt, "checkpoint_every": 2**31}, "checkpoint_every"),
                         ({"checkpoint_path": ""}, "checkpoint_path"),
                         ({"checkpoint_every": 2}, "without checkpoint_path")]:
        with pytest.raises(ValueError, match=name):
            faiss_flash.Kmeans(8, 5, **kwargs)


def test_damaged_checkpoint_is_refused(tmp_path, rs):
    # A header whose sizes the file does not hold, or any changed byte (a checksum covers the
    # file), is a BadCheckpointError, found before anything is allocated from the header.
    x = gaussian(rs, 1000, 8)
    ckpt = tmp_path / "run.ckpt"
    faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=ckpt).train(x)
    good = ckpt.read_bytes()
    huge = bytearray(good)
    huge[24:32] = (1 << 20).to_bytes(8, "little")  # d
    huge[32:40] = (1 << 20).to_bytes(8, "little")  # k
    ckpt.write_bytes(bytes(huge))
    with pytest.raises(faiss_flash.BadCheckpointError, match="truncated"):
        faiss_flash.read_checkpoint(ckpt)
    flipped = bytearray(good)
    flipped[-30] ^= 0x10  # a centroid's bit
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(faiss_flash.BadCheckpointError, match="checksum"):
        faiss_flash.read_checkpoint(ckpt)
    with pytest.raises(faiss_flash.BadCheckpointError, match="checksum"):
        faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=ckpt).train(x)
    ckpt.write_bytes(good + b"\0")
    with pytest.raises(faiss_flash.BadCheckpointError, match="damaged"):
        faiss_flash.read_checkpoint(ckpt)


def test_placement_report_without_the_sharded_engine(rs):
    # Only the CUDA engine's sharded / streaming path reports a placement (tests/python/
    # test_gpu_tensors.py checks its contents); the CPU engine leaves it None.
    x = gaussian(rs, 1000, 8)
    km = faiss_flash.Kmeans(8, 5, niter=2, device="cpu")
    assert km.placement_report is None
    km.train(x)
    assert km.placement_report is None
    r = faiss_flash.batch_kmeans(x, 5, niter=2, device="cpu")
    assert r.placement_report is None and len(r) == 4  # still the 4-tuple
    r.placement_report = {"shards": 1}
    assert r._replace(obj=None).placement_report == {"shards": 1}
    centroids, labels, obj, stats = r
    assert centroids.shape == (5, 8) and labels.shape == (1000,)


def test_bad_checkpoint_error(tmp_path, rs):
    # A checkpoint that a run cannot resume from is a BadCheckpointError, a ValueError of its own
    # (so callers tell it from other bad input); the file is left as it was.
    assert issubclass(faiss_flash.BadCheckpointError, ValueError)
    x = gaussian(rs, 1000, 8)
    ckpt = tmp_path / "run.ckpt"
    faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=str(ckpt)).train(x)
    before = ckpt.read_bytes()
    other_run = faiss_flash.Kmeans(8, 5, niter=3, seed=7, device="cpu", checkpoint_path=str(ckpt))
    with pytest.raises(faiss_flash.BadCheckpointError, match="another run of this data"):
        other_run.train(x)
    with pytest.raises(faiss_flash.BadCheckpointError, match="more than niter"):
        faiss_flash.Kmeans(8, 5, niter=2, device="cpu", checkpoint_path=str(ckpt)).train(x)
    ckpt.write_bytes(before[:100])
    with pytest.raises(faiss_flash.BadCheckpointError, match="truncated"):
        faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=str(ckpt)).train(x)
    with pytest.raises(ValueError) as bad_input:  # other bad input stays a plain ValueError
        faiss_flash.Kmeans(8, 5, niter=3, device="cpu", checkpoint_path=str(ckpt)).train(x[:3])
    assert not isinstance(bad_input.value, faiss_flash.BadCheckpointError)
