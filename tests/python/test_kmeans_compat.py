"""faiss_flash.Kmeans against faiss.Kmeans, and the properties of FAISS' tests/test_clustering.py."""
import faiss
import numpy as np
import pytest

import faiss_flash
from conftest import gaussian


def both(d, k, **kw):
    return faiss.Kmeans(d, k, **kw), faiss_flash.Kmeans(d, k, device="cpu", **kw)


def test_same_centroids_as_faiss_kmeans(rs):
    x = gaussian(rs, 10000, 24)
    ref, ours = both(24, 50, niter=12, seed=7)
    o1, o2 = ref.train(x), ours.train(x)
    assert np.array_equal(ref.centroids, ours.centroids)
    assert o2 == pytest.approx(o1, rel=1e-5)
    assert len(ours.iteration_stats) == 12
    assert set(ours.iteration_stats[0]) == set(ref.iteration_stats[0])
    np.testing.assert_allclose(ours.obj, ref.obj, rtol=1e-5)


def test_same_with_subsampling_weights_and_init(rs):
    x = gaussian(rs, 6000, 16)
    w = rs.uniform(0.5, 2.0, 6000).astype("float32")
    init = x[:5].copy()
    ref, ours = both(16, 20, niter=6, max_points_per_centroid=100)
    ref.train(x, weights=w, init_centroids=init)
    ours.train(x, weights=w, init_centroids=init)
    assert np.array_equal(ref.centroids, ours.centroids)


def test_script_for_faiss_kmeans_runs_unchanged(rs):
    x = gaussian(rs, 3000, 8)
    for Kmeans in (faiss.Kmeans, faiss_flash.Kmeans):
        km = Kmeans(8, 10, niter=5, verbose=False, spherical=False, seed=3)
        km.train(x)
        D, I = km.assign(x)
        assert km.centroids.shape == (10, 8) and D.shape == (3000,) and I.shape == (3000,)
        assert km.index.ntotal == 10 and km.obj.shape == (5,)


def test_objective_decreases(rs):
    km = faiss_flash.Kmeans(32, 64, niter=20)
    km.train(gaussian(rs, 5000, 32, centres=64))
    assert np.all(np.diff(km.obj) <= 1e-6 * km.obj[:-1])


def test_more_centroids_lower_error(rs):
    x = gaussian(rs, 8000, 16, centres=100)
    errs = []
    for k in (8, 32, 128):
        km = faiss_flash.Kmeans(16, k, max_points_per_centroid=10000)
        km.train(x)
        errs.append(km.assign(x)[0].sum())
    assert errs[0] > errs[1] > errs[2]


def test_int_centroids(rs):
    x = rs.randint(0, 256, (3000, 8)).astype("float32")
    km = faiss_flash.Kmeans(8, 20, int_centroids=True)
    km.train(x)
    assert np.all(km.centroids == np.round(km.centroids))


def test_nasty_data_does_not_crash():
    x = np.tile(np.array([[0, 0], [1, 3], [2, 6], [3, 9], [4, 12]], dtype="float32"), (200, 1))
    km = faiss_flash.Kmeans(2, 10)
    km.train(x)
    assert np.all(np.isfinite(km.centroids))
    assert sum(s["nsplit"] for s in km.iteration_stats) > 0


def test_nredo_keeps_the_best(rs):
    x = gaussian(rs, 4000, 8, centres=40)
    ref, ours = both(8, 30, niter=6, nredo=4)
    ref.train(x)
    ours.train(x)
    assert ours.obj[-1] == pytest.approx(ref.obj[-1], rel=1e-6)
    single = min(faiss_flash.Kmeans(8, 30, niter=6, seed=1234 + r * 15486557).train(x) for r in range(4))
    assert ours.obj[-1] == pytest.approx(single, rel=1e-6)


def test_spherical(rs):
    km = faiss_flash.Kmeans(12, 16, spherical=True)
    km.train(gaussian(rs, 3000, 12))
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, rtol=1e-5)
    assert isinstance(km.index, faiss.IndexFlatIP)


@pytest.mark.parametrize("bad, exc, word", [
    (lambda: faiss_flash.Kmeans(8, 0), ValueError, "k"),
    (lambda: faiss_flash.Kmeans(8, 4, not_a_param=1), AttributeError, "not_a_param"),
    (lambda: faiss_flash.Kmeans(8, 4, device="tpu"), ValueError, "device"),
    (lambda: faiss_flash.Kmeans(8, 4).train(np.zeros((10, 3), "float32")), ValueError, "x"),
    (lambda: faiss_flash.Kmeans(8, 40).train(np.ones((10, 8), "float32")), ValueError, "at least"),
    (lambda: faiss_flash.Kmeans(2, 2).train(np.array([[0, 1], [np.nan, 1], [3, 3]], "float32")), ValueError, "NaN"),
    # faiss.Kmeans accepts these and gives NaN centroids (weights) or crashes (max_points_per_centroid)
    (lambda: faiss_flash.Kmeans(2, 2).train(np.eye(3, 2, dtype="float32"), weights=[1, np.nan, 1]), ValueError,
     "weights: .*nan at index 1"),
    (lambda: faiss_flash.Kmeans(2, 2).train(np.eye(3, 2, dtype="float32"), weights=[1, 1, -0.5]), ValueError,
     "weights: .*-0.5 at index 2"),
    (lambda: faiss_flash.Kmeans(2, 2).train(np.eye(3, 2, dtype="float32"), weights=[np.inf, 1, 1]), ValueError,
     "weights"),
    (lambda: faiss_flash.Kmeans(2, 2, max_points_per_centroid=0).train(np.eye(3, 2, dtype="float32")), ValueError,
     "max_points_per_centroid"),
])
def test_bad_input(bad, exc, word):
    with pytest.raises(exc, match=word):
        bad()


def test_cp_edited_after_construction(rs):
    # faiss.Kmeans reads its ClusteringParameters at train time; so do we
    x = gaussian(rs, 3000, 8)
    ref, ours = both(8, 12)
    ref.cp.niter = ours.cp.niter = 3
    ref.cp.seed = ours.cp.seed = 77
    ref.train(x)
    ours.train(x)
    assert ours.obj.shape == (3,) and np.array_equal(ref.centroids, ours.centroids)


def test_frozen_centroids_and_update_index(rs):
    x = gaussian(rs, 4000, 8)
    init = x[:4].copy()
    ref, ours = both(8, 10, niter=5, frozen_centroids=True, update_index=True)
    ref.train(x, init_centroids=init)
    ours.train(x, init_centroids=init)
    assert np.array_equal(ours.centroids[:4], init)
    assert np.array_equal(ref.centroids, ours.centroids)


def test_second_train_and_assign_like_faiss(rs):
    x = gaussian(rs, 3000, 8)
    ref, ours = both(8, 12, niter=4)
    for km in (ref, ours):
        km.train(x)
        km.train(x[:2000])
    assert np.array_equal(ref.centroids, ours.centroids)
    assert len(ours.iteration_stats) == len(ref.iteration_stats) == 4
    D1, I1 = ref.assign(x)
    D2, I2 = ours.assign(x)
    assert np.array_equal(I1, I2) and np.array_equal(D1, D2)


def test_gpu_keyword_and_progressive_dim_fallback(rs):
    x = gaussian(rs, 2000, 8)
    km = faiss_flash.Kmeans(8, 6, niter=3, gpu=False)
    km.train(x)
    assert km.gpu is False and km.device == "cpu"
    pd = faiss_flash.Kmeans(8, 6, niter=3, progressive_dim_steps=2)
    pd.train(x)
    ref = faiss.Kmeans(8, 6, niter=3, progressive_dim_steps=2)
    ref.train(x)
    assert np.array_equal(pd.centroids, ref.centroids)


@pytest.mark.skipif(not faiss_flash.cuda_available(), reason="no CUDA device visible: GPU test skipped")
def test_cuda_engine_agrees_with_faiss(rs):
    x = gaussian(rs, 20000, 32)
    ref = faiss.Kmeans(32, 64, niter=10)
    ours = faiss_flash.Kmeans(32, 64, niter=10, device="cuda")
    ref.train(x)
    ours.train(x)
    np.testing.assert_allclose(ours.obj, ref.obj, rtol=1e-4)
    assert np.mean(ref.assign(x)[1] == ours.assign(x)[1]) > 0.999


def test_seeds(rs):
    x = gaussian(rs, 3000, 8)
    runs = {}
    for seed in (1, 2, 1):
        km = faiss_flash.Kmeans(8, 16, niter=5, seed=seed)
        km.train(x)
        runs.setdefault(seed, []).append(km.centroids)
    assert np.array_equal(runs[1][0], runs[1][1])
    assert not np.array_equal(runs[1][0], runs[2][0])


def test_weighted_equals_duplicated_points(rs):
    # FAISS test_clustering.py::test_weighted: weight 2 == the point twice
    x = gaussian(rs, 2000, 8)
    w = rs.randint(1, 3, 2000).astype("float32")
    dup = np.repeat(x, w.astype(int), axis=0)
    init = x[:10].copy()
    a = faiss_flash.Kmeans(8, 10, niter=5, max_points_per_centroid=10**6)
    a.train(x, weights=w, init_centroids=init)
    b = faiss_flash.Kmeans(8, 10, niter=5, max_points_per_centroid=10**6)
    b.train(dup, init_centroids=init)
    np.testing.assert_allclose(a.centroids, b.centroids, rtol=1e-4, atol=1e-4)
    # (the objective itself is unweighted in FAISS 1.7.3, so it differs)
