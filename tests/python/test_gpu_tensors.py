"""batch_kmeans on torch CUDA tensors: read in place on the device, results on the device.

Imports neither faiss nor anything built on it, so that the GPU script can run this file with a
Python that has torch but not FAISS's Python package. Skipped without torch or a CUDA device.
"""
import numpy as np
import pytest

import faiss_flash
from conftest import gaussian

torch = pytest.importorskip("torch", reason="torch is not installed (Debian package python3-torch)")
pytestmark = pytest.mark.skipif(not (faiss_flash.cuda_available() and torch.cuda.is_available()),
                                reason="no CUDA device visible to faiss_flash and torch: GPU test skipped")


def cuda_batch(rs, b, n, d, dtype):
    return torch.from_numpy(np.stack([gaussian(rs, n, d) for _ in range(b)])).cuda().to(dtype)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_results_stay_on_the_device_and_match_the_cpu_engine(rs, dtype):
    x = cuda_batch(rs, 4, 5000, 64, getattr(torch, dtype))
    r = faiss_flash.batch_kmeans(x, 32, niter=1)
    assert r.centroids.is_cuda and r.labels.is_cuda
    assert r.centroids.device == x.device and r.centroids.dtype == torch.float32
    assert r.labels.shape == (4, 5000) and r.centroids.shape == (4, 32, 64)
    cpu = faiss_flash.batch_kmeans(x.cpu(), 32, niter=1, device="cpu")
    # One iteration from the same initial rows: labels differ only at near-ties (the tensor cores
    # see centroids rounded to the input type: bf16 keeps 8 bits, so more points sit within its
    # rounding of a tie), and a cluster whose members agree has the same mean up to float rounding.
    lg, lc = r.labels.cpu(), cpu.labels
    assert (lg == lc).double().mean().item() > {"float32": 0.9999, "float16": 0.999, "bfloat16": 0.99}[dtype]
    for b in range(4):
        for c in range(32):
            if torch.equal(lg[b] == c, lc[b] == c):
                assert torch.allclose(r.centroids[b, c].cpu(), cpu.centroids[b, c], rtol=1e-4, atol=1e-4), (b, c)
    # Several iterations: trajectories may part at near-ties; the objectives stay close.
    r5 = faiss_flash.batch_kmeans(x, 32, niter=5)
    c5 = faiss_flash.batch_kmeans(x.cpu(), 32, niter=5, device="cpu")
    assert torch.allclose(r5.obj, c5.obj, rtol=2e-2)


def test_no_copy_of_the_points(rs):
    # The points are read where they are: torch's allocator sees at most the (B, k, d) centroids
    # and (B, N) labels of the result, never a second copy of x (converted or made contiguous).
    x = cuda_batch(rs, 8, 20000, 128, torch.float16)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    r = faiss_flash.batch_kmeans(x, 64, niter=3)
    torch.cuda.synchronize()
    grown = torch.cuda.max_memory_allocated() - before
    results = r.centroids.numel() * 4 + r.labels.numel() * 8
    assert grown < results + x.numel() * x.element_size() // 4, (grown, results)


def test_a_batch_equals_its_problems_run_alone(rs):
    x = cuda_batch(rs, 3, 4000, 32, torch.float16)
    r = faiss_flash.batch_kmeans(x, 20, niter=6)
    for b in range(3):
        one = faiss_flash.batch_kmeans(x[b], 20, niter=6, seed=1234 + b)
        assert torch.equal(one.centroids, r.centroids[b]), b


def test_sharded_and_streamed_runs_match_one_gpu(rs):
    # Integer-valued points: exact sums, so every placement gives the same bits.
    x = rs.randint(0, 16, size=(20000, 32)).astype("float32")
    ref = faiss_flash.batch_kmeans(x, 24, niter=5, device="cuda")
    assert ref.placement_report is None  # the in-memory engine
    for kw, shards, streamed in ((dict(devices=[0, 0], piece_rows=5000), 2, 0), (dict(streaming="force"), 1, 20000)):
        r = faiss_flash.batch_kmeans(x, 24, niter=5, device="cuda", **kw)
        assert np.array_equal(r.centroids, ref.centroids), kw
        p = r.placement_report  # (without piece_rows, 20000 rows are one piece: one shard)
        assert (p["shards"], p["resident_rows"], p["streamed_rows"]) == (shards, 20000 - streamed, streamed), p
        assert p["streamed_bytes"] == streamed * 32 * 4 and p["copy_s"] >= 0 and p["compute_s"] > 0, p
    # fp32 points sent as fp16 run as fp16 points do (these integers are exact in fp16); the
    # streamed rows are converted once, into pinned host memory.
    half = faiss_flash.batch_kmeans(x.astype("float16"), 24, niter=5, device="cuda")
    for streaming in ("auto", "force"):
        r = faiss_flash.batch_kmeans(x, 24, niter=5, device="cuda", transfer_dtype="float16", streaming=streaming)
        assert np.array_equal(r.centroids, half.centroids), streaming
        p = r.placement_report
        streamed = 20000 if streaming == "force" else 0
        assert (p["streamed_rows"], p["converted_rows"], p["host_pinned"]) == (streamed, streamed, streamed > 0), p


def test_tf32_mode_close_to_exact(rs):
    # fp32_mode='tf32' (opt-in): TF32-class products; the objective stays within 1e-3 of the
    # exact mode's from the same start, and the same bits run to run.
    x = cuda_batch(rs, 2, 20000, 64, torch.float32)
    exact = faiss_flash.batch_kmeans(x, 50, niter=5)
    fast = faiss_flash.batch_kmeans(x, 50, niter=5, fp32_mode="tf32")
    again = faiss_flash.batch_kmeans(x, 50, niter=5, fp32_mode="tf32")
    assert torch.equal(fast.centroids, again.centroids)
    assert torch.allclose(fast.obj, exact.obj, rtol=1e-3), (fast.obj, exact.obj)


def test_bad_cuda_inputs_raise(rs):
    x = cuda_batch(rs, 2, 1000, 16, torch.float32)
    with pytest.raises(ValueError, match="contiguous"):
        faiss_flash.batch_kmeans(x.transpose(1, 2), 4)
    with pytest.raises((TypeError, ValueError), match="dtype"):
        faiss_flash.batch_kmeans(x.double(), 4)
    with pytest.raises(ValueError, match="device"):
        faiss_flash.batch_kmeans(x, 4, device="cpu")
    bad = x.clone()
    bad[1, 7, 3] = float("nan")
    with pytest.raises(ValueError):
        faiss_flash.batch_kmeans(bad, 4)


def test_waits_for_the_work_queued_on_torchs_stream(rs):
    # The engine reads x on its own stream: batch_kmeans first waits for what torch queued on its
    # current stream. Here x is written by a copy queued behind a ~0.1 s spin on a side stream, and
    # init_centroids is given, so no torch operation on x (which would wait too) precedes the engine.
    src = cuda_batch(rs, 2, 20000, 64, torch.float32)
    init = src[:, :16].cpu().numpy()
    ref = faiss_flash.batch_kmeans(src, 16, niter=3, init_centroids=init)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        x = torch.zeros_like(src)
        torch.cuda._sleep(200_000_000)
        x.copy_(src)
        r = faiss_flash.batch_kmeans(x, 16, niter=3, init_centroids=init)
    torch.cuda.synchronize()
    assert torch.equal(r.centroids, ref.centroids) and torch.equal(r.labels, ref.labels)


def test_tensor_that_requires_grad(rs):
    # Read in place without autograd (x.detach() shares the storage), results without grad.
    x = cuda_batch(rs, 2, 3000, 32, torch.float32).requires_grad_()
    ref = faiss_flash.batch_kmeans(x.detach().clone(), 8, niter=3)
    r = faiss_flash.batch_kmeans(x, 8, niter=3)
    assert torch.equal(r.centroids, ref.centroids) and not r.centroids.requires_grad
    init = ref.centroids.clone().requires_grad_()
    w = torch.ones(2, 3000, device=x.device, requires_grad=True)
    r = faiss_flash.batch_kmeans(x, 8, niter=3, init_centroids=init, weights=w)
    assert r.centroids.shape == (2, 8, 32)
