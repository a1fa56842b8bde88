"""refresh_ivf (C++ faiss_flash::refresh_ivf): warm-started coarse centroids, rebuilt lists."""
import faiss
import numpy as np
import pytest

import faiss_flash
from conftest import gaussian

D = 16
NLIST = 32


def ivf_contents(index):
    """{id: vector} and {id: list number} read straight from an IVF-Flat index's lists."""
    ivf = faiss.extract_index_ivf(index)
    inv = ivf.invlists
    vec, lst = {}, {}
    for l in range(ivf.nlist):
        ls = inv.list_size(l)
        if ls == 0:
            continue
        ids = faiss.rev_swig_ptr(inv.get_ids(l), ls).copy()
        codes = faiss.rev_swig_ptr(inv.get_codes(l), ls * ivf.code_size).copy().view("float32").reshape(ls, ivf.d)
        for i, c in zip(ids, codes):
            vec[int(i)] = c
            lst[int(i)] = l
    return vec, lst


def centroids_of(index):
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


@pytest.fixture
def drift():
    rs = np.random.RandomState(11)
    print("data seed 11")
    old = gaussian(rs, 6000, D, centres=40, spread=2.0)
    new = gaussian(rs, 6000, D, centres=40, spread=2.0) + 2.0 * rs.randn(1, D).astype("float32")
    return old, new


def trained_ivf(old, kind="IVF%d,Flat" % NLIST):
    index = faiss.index_factory(D, kind)
    faiss_flash.train_index(index, old, device="cpu")
    return index


def test_warm_start_is_faiss_kmeans_from_the_old_centroids(drift):
    old, new = drift
    xb = np.vstack([old, new])
    index = trained_ivf(old)
    index.add(xb)
    c_old = centroids_of(index)
    info = faiss_flash.refresh_ivf(index, xb, niter=4, max_train=len(xb), rebalance=0, objective=True,
                                   device="cpu")
    # max_train = all rows: no sampling, the refresh is FAISS' k-means started from the old
    # centroids
    ref = faiss.Kmeans(D, NLIST, niter=4, max_points_per_centroid=10**6)
    ref.train(xb, init_centroids=c_old)
    assert np.array_equal(centroids_of(index), ref.centroids)
    assert info["n_train"] == 12000 and info["ntotal"] == 12000 == index.ntotal
    assert info["obj_before"] == pytest.approx(ref.obj[0], rel=1e-6)
    assert info["obj_after"] < info["obj_before"]
    assert info["mean_shift"] > 0
    # every vector sits in the list of its nearest refreshed centroid
    vec, lst = ivf_contents(index)
    ids = np.array(sorted(vec))
    assert np.array_equal(ids, np.arange(12000))
    _, nearest = faiss.extract_index_ivf(index).quantizer.search(xb, 1)
    assert all(lst[i] == nearest[i, 0] for i in range(0, 12000, 7))


def test_keep_existing_keeps_vectors_and_ids(drift):
    old, new = drift
    rs = np.random.RandomState(5)
    ids_old = np.unique(rs.randint(0, 10**9, 2 * len(old)).astype("int64"))[:len(old)]
    rs.shuffle(ids_old)
    ids_new = np.arange(len(new), dtype="int64") + 2 * 10**9
    index = trained_ivf(old)
    index.add_with_ids(old, ids_old)
    info = faiss_flash.refresh_ivf(index, new, ids=ids_new, keep_existing=True, niter=3, device="cpu")
    assert info["ntotal"] == index.ntotal == len(old) + len(new)
    vec, lst = ivf_contents(index)
    assert set(vec) == set(ids_old) | set(ids_new)
    for i in range(0, len(old), 13):
        assert np.array_equal(vec[int(ids_old[i])], old[i])
    for i in range(0, len(new), 13):
        assert np.array_equal(vec[int(ids_new[i])], new[i])
    q = faiss.extract_index_ivf(index).quantizer
    _, nearest = q.search(np.stack([vec[i] for i in ids_new[:500]]), 1)
    assert all(lst[int(i)] == n for i, n in zip(ids_new[:500], nearest[:, 0]))


def test_keep_existing_with_array_direct_map(drift):
    old, new = drift
    index = trained_ivf(old)
    index.make_direct_map()
    index.add(old)
    faiss_flash.refresh_ivf(index, new, keep_existing=True, niter=2, device="cpu")
    assert index.ntotal == len(old) + len(new)
    for i in (0, 1, 777, len(old) - 1):
        assert np.array_equal(index.reconstruct(i), old[i])
    for i in (0, 5, len(new) - 1):
        assert np.array_equal(index.reconstruct(len(old) + i), new[i])
    with pytest.raises(ValueError, match="direct map"):
        faiss_flash.refresh_ivf(index, new[:10], ids=np.arange(10), keep_existing=True, device="cpu")


def test_sample_and_train_extra(drift):
    old, new = drift
    index = trained_ivf(old)
    index.add(old)
    # index ends up holding only `new`; a sample of old vectors shapes the centroids too
    info = faiss_flash.refresh_ivf(index, new, train_extra=old[:2000], max_train=3000, niter=3, device="cpu")
    assert info["n_train"] == 3000 and index.ntotal == len(new)
    info = faiss_flash.refresh_ivf(index, new, niter=0, rebalance=0, objective=True, device="cpu")
    assert info["obj_after"] == pytest.approx(info["obj_before"], rel=1e-6)


def test_refresh_improves_stale_index(drift):
    old, new = drift
    xb = np.vstack([old, new])
    xq = np.vstack([new[:150], old[:150]]) + 0.05
    gt = faiss.IndexFlatL2(D)
    gt.add(xb)
    _, I0 = gt.search(xq, 10)

    def recall(index):
        index.nprobe = 2
        _, I = index.search(xq, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I0, I)])

    for kind in ("IVF%d,Flat" % NLIST, "IVF%d,PQ8np" % NLIST):
        index = trained_ivf(old, kind)
        index.add(xb)
        before = recall(index)
        info = faiss_flash.refresh_ivf(index, xb, niter=5, objective=True, device="cpu")
        after = recall(index)
        print(f"{kind}: recall@10 {before:.3f} -> {after:.3f}, objective {info['obj_before']:.4g} -> "
              f"{info['obj_after']:.4g}")
        assert after > before and index.ntotal == len(xb)


def test_ivfpq_precomputed_tables_follow_the_new_centroids(drift):
    old, new = drift
    xb = np.vstack([old, new])
    index = trained_ivf(old, "IVF%d,PQ8np" % NLIST)
    ivfpq = faiss.downcast_index(faiss.extract_index_ivf(index))
    ivfpq.use_precomputed_table = 1
    ivfpq.precompute_table()
    index.add(xb)
    faiss_flash.refresh_ivf(index, xb, niter=3, device="cpu")
    index.nprobe = 4
    D1, I1 = index.search(xb[:200], 5)
    ivfpq.use_precomputed_table = 0  # distances computed without tables must agree
    D2, I2 = index.search(xb[:200], 5)
    np.testing.assert_allclose(D1, D2, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="IndexIVFFlat"):
        faiss_flash.refresh_ivf(index, new[:100], keep_existing=True, device="cpu")


@pytest.mark.parametrize("make, exc, word", [
    (lambda o: (faiss.index_factory(D, "IVF8,Flat"), o), ValueError, "not trained"),
    (lambda o: (faiss.IndexFlatL2(D), o), TypeError, "index"),
    (lambda o: (trained_ivf(o), o[:, :8]), ValueError, "x"),
    (lambda o: (trained_ivf(o), o[:4]), ValueError, "training rows"),
])
def test_bad_arguments(drift, make, exc, word):
    index, x = make(drift[0])
    with pytest.raises(exc, match=word):
        faiss_flash.refresh_ivf(index, x, device="cpu")


def test_bad_ids_and_niter(drift):
    old, _ = drift
    index = trained_ivf(old)
    with pytest.raises(ValueError, match="ids"):
        faiss_flash.refresh_ivf(index, old, ids=np.arange(5), device="cpu")
    with pytest.raises(ValueError, match="niter"):
        faiss_flash.refresh_ivf(index, old, niter=-1, device="cpu")


def test_rebalance_spreads_centroids_into_a_new_dense_region(drift):
    old, _ = drift
    rs = np.random.RandomState(2)
    # a dense region far from every old centroid: Lloyd from the old centroids leaves it to
    # the few centroids that capture it first; rebalancing splits those
    new = gaussian(rs, 6000, D, centres=10, spread=1.0) + 12.0
    xb = np.vstack([old, new])

    def imbalance(index):
        inv = faiss.extract_index_ivf(index).invlists
        h = np.array([inv.list_size(i) for i in range(NLIST)], dtype="float64")
        return NLIST * (h ** 2).sum() / h.sum() ** 2

    results = {}
    for reb in (0, -1):
        index = trained_ivf(old)
        info = faiss_flash.refresh_ivf(index, xb, niter=5, rebalance=reb, objective=True, device="cpu")
        results[reb] = (imbalance(index), info["obj_after"], info["n_rebalanced"])
        print(f"rebalance={reb}: imbalance {results[reb][0]:.2f}, objective {info['obj_before']:.4g} -> "
              f"{results[reb][1]:.4g}, {results[reb][2]} centroids moved")
    assert results[0][2] == 0 and 0 < results[-1][2] <= NLIST // 4
    assert results[-1][0] < results[0][0]
    assert results[-1][1] < results[0][1]


def test_rebalance_rounds_share_the_iterations(drift):
    # Two rounds of (rebalance, 3 Lloyd iterations): each round rebalances again, so at least as
    # many centroids move as with one round, and each round lowers the objective. (One round of
    # 6 iterations ended lower on this data: rounds are an option, not the default.)
    old, _ = drift
    rs = np.random.RandomState(3)
    xb = np.vstack([old, gaussian(rs, 6000, D, centres=10, spread=1.0) + 12.0])
    out = {}
    for rounds in (1, 2):
        index = trained_ivf(old)
        out[rounds] = faiss_flash.refresh_ivf(index, xb, niter=6, rebalance=-1, rebalance_rounds=rounds,
                                              objective=True, device="cpu")
    assert out[2]["n_rebalanced"] >= out[1]["n_rebalanced"] > 0
    assert out[2]["obj_after"] < out[2]["obj_before"]
    assert out[2]["ntotal"] == len(xb)
