"""Helpers taking faiss Python indexes: training, the assignment hook, refresh."""
import gc

import faiss
import numpy as np
import pytest

import faiss_flash
from conftest import gaussian


def recall(index, xb, xq, k=10, nprobe=16):
    gt = faiss.IndexFlatL2(xb.shape[1])
    gt.add(xb)
    _, I0 = gt.search(xq, k)
    index.nprobe = nprobe
    _, I = index.search(xq, k)
    return np.mean([len(set(a) & set(b)) / k for a, b in zip(I0, I)])


def stock_index(kind, xb):
    """A stock FAISS index of that kind, trained on and holding xb."""
    index = faiss.index_factory(xb.shape[1], kind)
    index.train(xb)
    index.add(xb)
    return index


@pytest.fixture
def data(rs):
    xb = gaussian(rs, 20000, 32, centres=200, spread=2.0)
    xq = gaussian(np.random.RandomState(7), 200, 32, centres=200, spread=2.0)
    return xb, xq


@pytest.mark.parametrize("kind", ["IVF64,Flat", "IVF64,PQ8x4"])
def test_train_index_matches_stock_recall(data, kind):
    xb, xq = data
    stock = stock_index(kind, xb)
    ours = faiss.index_factory(32, kind)
    faiss_flash.train_index(ours, xb, device="cpu")
    ours.add(xb)
    assert recall(ours, xb, xq) == pytest.approx(recall(stock, xb, xq), abs=0.01)


def test_install_assign_index(data):
    xb, xq = data
    index = faiss.index_factory(32, "IVF64,Flat")
    assert faiss_flash.install_assign_index(index, device="cpu") == "clustering_index"
    index.train(xb)
    index.add(xb)
    assert recall(index, xb, xq) == pytest.approx(recall(stock_index("IVF64,Flat", xb), xb, xq), abs=0.01)
    pq = faiss.IndexPQ(32, 4, 6)
    assert faiss_flash.install_assign_index(pq, device="cpu") == "pq.assign_index"
    pq.train(xb)
    with pytest.raises(TypeError, match="index"):
        faiss_flash.install_assign_index(faiss.IndexFlatL2(4))


def quantizer_centroids(index):
    ivf = faiss.extract_index_ivf(index)
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def test_assign_index_outlives_a_temporary_proxy(data):
    # faiss.extract_index_ivf / downcast_index return proxies that do not own the index and die at
    # once: the hook must live until index.train (it was once freed with the proxy, and training
    # then read freed memory: "Index dimension 1507352575 not the same as data dimension 32").
    xb, xq = data
    index = faiss.index_factory(32, "IVF64,Flat")
    assert faiss_flash.install_assign_index(faiss.extract_index_ivf(index), device="cpu") == "clustering_index"
    gc.collect()
    junk = [faiss.IndexFlatL2(7) for _ in range(200)]  # would reuse the hook's memory, were it freed
    index.train(xb)
    ref = faiss.index_factory(32, "IVF64,Flat")
    faiss_flash.install_assign_index(ref, device="cpu")
    ref.train(xb)
    assert np.array_equal(quantizer_centroids(index), quantizer_centroids(ref))
    index.add(xb)
    assert recall(index, xb, xq) == pytest.approx(recall(stock_index("IVF64,Flat", xb), xb, xq), abs=0.01)
    pq_owner = faiss.IndexPQ(32, 4, 6)
    assert faiss_flash.install_assign_index(faiss.downcast_index(pq_owner), device="cpu") == "pq.assign_index"
    gc.collect()
    junk += [faiss.IndexFlatL2(5) for _ in range(200)]
    pq_owner.train(xb)
    pq_ref = faiss.IndexPQ(32, 4, 6)
    faiss_flash.install_assign_index(pq_ref, device="cpu")
    pq_ref.train(xb)
    assert np.array_equal(faiss.vector_to_array(pq_owner.pq.centroids), faiss.vector_to_array(pq_ref.pq.centroids))


def test_install_again_replaces_and_uninstall_clears(rs):
    # FAISS' k-means resets the assignment index it uses and adds the centroids to it every
    # iteration: after index.train the hook that was used holds the nlist final centroids, and
    # one that was not holds none.
    xb = gaussian(rs, 4000, 8)
    ref = faiss.index_factory(8, "IVF16,Flat")
    faiss_flash.install_assign_index(ref, device="cpu")
    ref.train(xb)
    index = faiss.index_factory(8, "IVF16,Flat")
    ivf = faiss.extract_index_ivf(index)
    faiss_flash.install_assign_index(index, device="cpu")
    # A view of the first hook, and its owner held so that it outlives its replacement.
    replaced = ivf.clustering_index
    replaced_owner = faiss_flash.indexes._installed[int(ivf.this)]
    faiss_flash.install_assign_index(faiss.extract_index_ivf(index), device="cpu")
    current = ivf.clustering_index
    index.train(xb)
    assert replaced.ntotal == 0, "training went through the replaced hook"
    assert current.ntotal == 16
    assert np.array_equal(current.reconstruct_n(0, 16), quantizer_centroids(index))
    assert np.array_equal(quantizer_centroids(index), quantizer_centroids(ref))
    del replaced, replaced_owner
    # A replaced hook that nothing else holds is freed at once; training uses the new one.
    again = faiss.index_factory(8, "IVF16,Flat")
    faiss_flash.install_assign_index(again, device="cpu")
    faiss_flash.install_assign_index(faiss.extract_index_ivf(again), device="cpu")
    gc.collect()
    again.train(xb)
    assert faiss.extract_index_ivf(again).clustering_index.ntotal == 16
    assert np.array_equal(quantizer_centroids(again), quantizer_centroids(ref))
    assert faiss_flash.uninstall_assign_index(again) == "clustering_index"
    assert faiss_flash.uninstall_assign_index(faiss.extract_index_ivf(index)) == "clustering_index"
    assert ivf.clustering_index is None
    assert faiss_flash.uninstall_assign_index(index) is None
    # back to FAISS' own k-means
    fresh = faiss.index_factory(8, "IVF16,Flat")
    faiss_flash.install_assign_index(fresh, device="cpu")
    assert faiss_flash.uninstall_assign_index(fresh) == "clustering_index"
    fresh.train(xb)
    stock = faiss.index_factory(8, "IVF16,Flat")
    stock.train(xb)
    assert np.array_equal(quantizer_centroids(fresh), quantizer_centroids(stock))
    pq = faiss.IndexPQ(8, 2, 4)
    faiss_flash.install_assign_index(pq, device="cpu")
    assert faiss_flash.uninstall_assign_index(pq) == "pq.assign_index" and pq.pq.assign_index is None
    with pytest.raises(TypeError, match="index"):
        faiss_flash.uninstall_assign_index(faiss.IndexFlatL2(4))


def test_refresh_ivf_recovers_recall_after_drift(rs):
    d = 32
    old = gaussian(rs, 20000, d, centres=100, spread=2.0)
    shift = np.random.RandomState(3).randn(1, d).astype("float32") * 3
    new = gaussian(np.random.RandomState(5), 20000, d, centres=100, spread=2.0) + shift
    xq = np.vstack([new[:100], old[:100]]) + 0.1
    index = faiss.index_factory(d, "IVF64,Flat")
    faiss_flash.train_index(index, old, device="cpu")
    index.add(np.vstack([old, new]))
    before = recall(index, np.vstack([old, new]), xq, nprobe=4)
    info = faiss_flash.refresh_ivf(index, np.vstack([old, new]), niter=5, device="cpu")
    after = recall(index, np.vstack([old, new]), xq, nprobe=4)
    assert index.ntotal == 40000
    assert after >= before
    assert info["kmeans_s"] > 0
