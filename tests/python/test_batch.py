"""batch_kmeans: B problems at once, numpy and torch, no copies."""
import tracemalloc

import numpy as np
import pytest

import faiss
import faiss_flash
from conftest import gaussian

try:
    import torch
except ImportError:  # Debian's python3-torch is optional
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (Debian package python3-torch)")
needs_gpu = pytest.mark.skipif(not faiss_flash.cuda_available(), reason="no CUDA device visible: GPU test skipped")


def test_batch_equals_separate_runs(rs):
    x = np.stack([gaussian(rs, 3000, 16) for _ in range(3)])
    r = faiss_flash.batch_kmeans(x, 12, niter=8, device="cpu")
    assert r.centroids.shape == (3, 12, 16) and r.labels.shape == (3, 3000) and r.obj.shape == (3,)
    # Problem b starts from rows faiss::rand_perm(N, seed + 1 + b)[:k]: given explicitly,
    # each problem run alone gives the same bits.
    inits = np.stack([x[b][faiss_flash._faiss_flash.rand_perm(3000, 1234 + 1 + b)[:12]] for b in range(3)])
    rb = faiss_flash.batch_kmeans(x, 12, niter=8, init_centroids=inits, device="cpu")
    assert np.array_equal(rb.centroids, r.centroids)
    for b in range(3):
        one = faiss_flash.batch_kmeans(x[b], 12, niter=8, init_centroids=inits[b], device="cpu")
        assert np.array_equal(one.centroids, r.centroids[b])
        assert np.array_equal(one.labels, r.labels[b])


def test_single_problem_equals_faiss_kmeans(rs):
    # n <= k * max_points_per_centroid: FAISS does not subsample, and problem 0 starts from
    # FAISS' own initial rows, so the centroids are faiss.Kmeans' bit for bit.
    x = gaussian(rs, 5000, 16)
    ref = faiss.Kmeans(16, 40, niter=10, seed=99)
    ref.train(x)
    r = faiss_flash.batch_kmeans(x, 40, niter=10, seed=99, device="cpu")
    assert np.array_equal(r.centroids, ref.centroids)
    assert [s["obj"] for s in r.iteration_stats[0]] == pytest.approx(list(ref.obj), rel=1e-6)
    D, I = ref.assign(x)
    assert np.array_equal(r.labels, I)
    assert r.obj == pytest.approx(float(D.astype("float64").sum()), rel=1e-5)


def test_weights_and_inner_product(rs):
    x = np.stack([gaussian(rs, 2000, 8) for _ in range(2)])
    w = rs.uniform(0.5, 2, (2, 2000)).astype("float32")
    r = faiss_flash.batch_kmeans(x, 5, niter=4, weights=w, device="cpu")
    for b in range(2):
        one = faiss_flash.batch_kmeans(x[b], 5, niter=4, weights=w[b], init_centroids=x[b][
            faiss_flash._faiss_flash.rand_perm(2000, 1235 + b)[:5]], device="cpu")
        assert np.array_equal(one.centroids, r.centroids[b])
    ip = faiss_flash.batch_kmeans(x, 5, niter=4, metric="ip", spherical=True, device="cpu")
    np.testing.assert_allclose(np.linalg.norm(ip.centroids, axis=2), 1.0, rtol=1e-5)
    sims = np.einsum("bnd,bkd->bnk", x, ip.centroids)
    assert np.array_equal(ip.labels, sims.argmax(axis=2)) or np.mean(ip.labels == sims.argmax(axis=2)) > 0.999


def test_float16_numpy(rs):
    x = gaussian(rs, 4000, 8).astype("float16")
    r = faiss_flash.batch_kmeans(x, 10, niter=5, device="cpu")
    r32 = faiss_flash.batch_kmeans(x.astype("float32"), 10, niter=5, device="cpu")
    assert np.array_equal(r.centroids, r32.centroids)


def test_engine_reads_the_callers_buffer(rs):
    x = np.stack([gaussian(rs, 1000, 8) for _ in range(2)])
    faiss_flash.batch_kmeans(x, 4, niter=2, device="cpu")
    assert faiss_flash._faiss_flash._last_points_ptr() == x.__array_interface__["data"][0]
    h = x.astype("float16")
    faiss_flash.batch_kmeans(h, 4, niter=2, device="cpu")
    assert faiss_flash._faiss_flash._last_points_ptr() == h.__array_interface__["data"][0]


def test_no_copy_of_contiguous_input(rs):
    x = gaussian(rs, 200000, 32).reshape(4, 50000, 32)
    faiss_flash.batch_kmeans(x[:, :1000].copy(), 4, niter=1, device="cpu")  # warm-up
    tracemalloc.start()
    faiss_flash.batch_kmeans(x, 16, niter=2, device="cpu")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # outputs (labels, distances) are allocated; a copy of x would be x.nbytes
    assert peak < x.nbytes / 2, f"peak Python allocation {peak} bytes for a {x.nbytes}-byte input"


@pytest.mark.parametrize("bad, exc, word", [
    (lambda: faiss_flash.batch_kmeans([[1.0, 2.0]], 1), TypeError, "x"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((4, 4), "int32"), 2), TypeError, "dtype"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((2, 3, 4, 5), "float32"), 2), ValueError, "dimensions"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32")[::2], 2), ValueError, "contiguous"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 9), ValueError, "k"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, metric="cos"), ValueError, "metric"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, device=3), TypeError, "device"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, device="tpu"), ValueError, "device"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, niter=-1), ValueError, "niter"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, seed=1.5), TypeError, "seed"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, init_centroids=np.zeros((3, 4))),
     ValueError, "init_centroids"),
    # the right size, not the right shape: (d, k) for (k, d), (B, d, k) for (B, k, d), (N, B) for (B, N)
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, init_centroids=np.zeros((4, 2))),
     ValueError, r"init_centroids: expected shape \(2, 4\), got \(4, 2\)"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((3, 8, 4), "float32"), 2, init_centroids=np.zeros((3, 4, 2))),
     ValueError, r"init_centroids: expected shape \(3, 2, 4\), got \(3, 4, 2\)"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((3, 8, 4), "float32"), 2, init_centroids=np.zeros((6, 4))),
     ValueError, r"init_centroids: expected shape \(3, 2, 4\)"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, weights=np.ones(7)), ValueError, "weights"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((3, 8, 4), "float32"), 2, weights=np.ones((8, 3))), ValueError,
     r"weights: expected shape \(3, 8\), got \(8, 3\)"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, weights=np.r_[np.ones(7), np.nan]),
     ValueError, "weights: .*nan at index 7"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((3, 8, 4), "float32"), 2, weights=-np.ones((3, 8))), ValueError,
     r"weights: .*-1.0 at index \(0, 0\)"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, weights=np.full(8, np.inf)), ValueError,
     "weights"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((0, 4), "float32"), 2), ValueError, "empty"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, devices=[0, -1]), ValueError, "devices"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, devices=0), ValueError, "devices"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, streaming="yes"), ValueError, "streaming"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, max_gpu_memory=-5), ValueError,
     "max_gpu_memory"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, transfer_dtype="int8"), ValueError,
     "transfer_dtype"),
    (lambda: faiss_flash.Kmeans(4, 2, streaming="sometimes"), ValueError, "streaming"),
    (lambda: faiss_flash.batch_kmeans(np.zeros((8, 4), "float32"), 2, fp32_mode="fast"), ValueError, "fp32_mode"),
    (lambda: faiss_flash.Kmeans(4, 2, fp32_mode="TF32"), ValueError, "fp32_mode"),
])
def test_bad_arguments(bad, exc, word):
    with pytest.raises(exc, match=word):
        bad()


@needs_torch
def test_torch_cpu_tensors_in_and_out(rs):
    x = torch.from_numpy(np.stack([gaussian(rs, 2000, 8) for _ in range(2)]))
    r = faiss_flash.batch_kmeans(x, 6, niter=4, device="cpu")
    assert isinstance(r.centroids, torch.Tensor) and r.centroids.shape == (2, 6, 8)
    assert faiss_flash._faiss_flash._last_points_ptr() == x.data_ptr()  # assign read x in place
    assert r.labels.dtype == torch.int64 and r.labels.shape == (2, 2000)
    ref = faiss_flash.batch_kmeans(x.numpy(), 6, niter=4, device="cpu")
    assert np.array_equal(r.centroids.numpy(), ref.centroids)
    rb = faiss_flash.batch_kmeans(x.to(torch.bfloat16), 6, niter=4, device="cpu")
    assert rb.centroids.dtype == torch.float32
    with pytest.raises(ValueError, match="contiguous"):
        faiss_flash.batch_kmeans(x.transpose(1, 2), 3)


def test_init_centroids_and_weights_shapes(rs):
    # (k, d) or (1, k, d) for a 2-D x; (B, k, d) for a 3-D x; weights (N,) or (B, N) likewise.
    x = gaussian(rs, 1000, 6)
    init = x[:5].copy()
    ref = faiss_flash.batch_kmeans(x, 5, niter=3, init_centroids=init, weights=np.ones(1000), device="cpu")
    r = faiss_flash.batch_kmeans(x, 5, niter=3, init_centroids=init[None], weights=np.ones((1, 1000)), device="cpu")
    assert np.array_equal(r.centroids, ref.centroids) and r.centroids.shape == (5, 6)
    zero = faiss_flash.batch_kmeans(x, 5, niter=3, init_centroids=init, weights=np.r_[np.zeros(10), np.ones(990)],
                                    device="cpu")  # zero weights are allowed
    assert np.all(np.isfinite(zero.centroids))
    with pytest.raises(ValueError, match="init_centroids"):
        faiss_flash.batch_kmeans(x[None], 5, niter=3, init_centroids=init, device="cpu")


@needs_torch
def test_torch_tensors_that_require_grad(rs):
    # Inputs of a model being trained: read without autograd (x.detach(): same storage, no copy).
    x = torch.from_numpy(np.stack([gaussian(rs, 1000, 8) for _ in range(2)])).requires_grad_()
    ref = faiss_flash.batch_kmeans(x.detach().numpy(), 4, niter=3, device="cpu")
    r = faiss_flash.batch_kmeans(x, 4, niter=3, device="cpu")
    assert faiss_flash._faiss_flash._last_points_ptr() == x.data_ptr()
    assert np.array_equal(r.centroids.numpy(), ref.centroids) and not r.centroids.requires_grad
    init = torch.from_numpy(ref.centroids).requires_grad_()
    w = torch.ones(2, 1000, requires_grad=True)
    r = faiss_flash.batch_kmeans(x, 4, niter=3, init_centroids=init, weights=w, device="cpu")
    assert r.centroids.shape == (2, 4, 8)
    with pytest.raises(ValueError, match=r"init_centroids: expected shape \(2, 4, 8\)"):
        faiss_flash.batch_kmeans(x, 4, init_centroids=init.transpose(1, 2), device="cpu")
    with pytest.raises(ValueError, match="weights: .*nan"):
        faiss_flash.batch_kmeans(x, 4, weights=torch.full((2, 1000), float("nan")), device="cpu")


def test_placement_options_ignored_on_the_cpu_engine(rs):
    # The several-GPU / streaming options concern the CUDA engine; the CPU engine runs as usual.
    x = gaussian(rs, 3000, 16)
    ref = faiss_flash.batch_kmeans(x, 8, niter=4, device="cpu")
    r = faiss_flash.batch_kmeans(x, 8, niter=4, device="cpu", devices=[0, 0], streaming="force",
                                 max_gpu_memory=1 << 30, transfer_dtype="float16", fp32_mode="tf32")
    assert np.array_equal(r.centroids, ref.centroids)


@needs_gpu
def test_sharded_and_streamed_kmeans_matches_one_gpu(rs):
    # Integer-valued points: exact sums, so every placement gives the same bits (batch_kmeans'
    # placements: test_gpu_tensors.py).
    x = rs.randint(0, 16, size=(20000, 32)).astype("float32")
    ref = faiss_flash.batch_kmeans(x, 24, niter=5, device="cuda")
    km = faiss_flash.Kmeans(32, 24, niter=5, device="cuda", devices=[0, 0], streaming="force")
    km.train(x)
    assert np.array_equal(km.centroids, ref.centroids)
