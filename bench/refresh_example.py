"""Measured example for README: refresh a stale IVF index after a distribution shift
(faiss_flash.refresh_ivf) vs a full retrain. Run: PYTHONPATH=build/python /usr/bin/python3 bench/refresh_example.py"""
import time, numpy as np, faiss, faiss_flash
d, nlist = 64, 256
rs = np.random.RandomState(0)
centres = 1.5 * rs.randn(400, d).astype("float32")
centres_new = 1.5 * rs.randn(400, d).astype("float32") + 1.0
def draw(n, shift, seed):
    r = np.random.RandomState(seed)
    c = centres_new if shift is not None else centres
    return (c[r.randint(0, 400, n)] + r.randn(n, d)).astype("float32")
old = draw(100000, None, 1)
drift = 2.0 * rs.randn(1, d).astype("float32")
new = draw(100000, drift, 2)
xb = np.vstack([old, new]); xq = np.vstack([draw(500, drift, 3), draw(500, None, 4)])
gt = faiss.IndexFlatL2(d); gt.add(xb); _, I0 = gt.search(xq, 10)
def recall(index):
    index.nprobe = 4; _, I = index.search(xq, 10)
    return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I0, I)])
index = faiss.index_factory(d, f"IVF{nlist},Flat"); faiss_flash.train_index(index, old, device="cpu"); index.add(xb)
r_before = recall(index)
t = time.perf_counter(); info = faiss_flash.refresh_ivf(index, xb, niter=5, device="cpu"); t_refresh = time.perf_counter() - t
r_after = recall(index)
full = faiss.index_factory(d, f"IVF{nlist},Flat"); t = time.perf_counter(); faiss_flash.train_index(full, xb, device="cpu"); full.add(xb); t_full_ours = time.perf_counter() - t
stock = faiss.index_factory(d, f"IVF{nlist},Flat"); t = time.perf_counter(); stock.train(xb); stock.add(xb); t_full_stock = time.perf_counter() - t
print(f"recall@10 nprobe=4: stale index {r_before:.4f}; refreshed {r_after:.4f}; full retrain (faiss-flash) {recall(full):.4f}; full retrain (stock) {recall(stock):.4f}")
print(f"time: refresh {t_refresh:.2f} s (k-means {info['kmeans_s']:.2f} s + rebuild {info['rebuild_s']:.2f} s); full retrain+add faiss-flash {t_full_ours:.2f} s; stock FAISS {t_full_stock:.2f} s")
