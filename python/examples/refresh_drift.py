"""Refreshing an IVF index after its data drifted: faiss_flash.refresh_ivf vs a full retrain.

A Gaussian-mixture dataset whose mixture moves: the index is trained on the old data, then new
vectors arrive from shifted (and partly new) modes. Compared, on queries drawn from old and
new data alike (recall@10 against exact search, same nprobe):
  stale      the old centroids, new vectors simply added
  refresh    refresh_ivf(keep_existing=True, niter=3/5/10): warm-started centroids from a sample
             of old + new vectors, lists rebuilt (old vectors read back from the lists)
  retrain    full k-means (FAISS parameters, 25 iterations) + add, on faiss-flash and on
             stock FAISS

Run:  PYTHONPATH=build/python /usr/bin/python3 python/examples/refresh_drift.py [--markdown FILE]
"""
import argparse
import os
import platform
import time

import faiss
import numpy as np

import faiss_flash


def mixture(rs, centres, n):
    return (centres[rs.randint(0, len(centres), n)] + rs.randn(n, centres.shape[1])).astype("float32")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--n-old", type=int, default=200000)
    ap.add_argument("--n-new", type=int, default=100000)
    ap.add_argument("--nq", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--markdown", help="write the results table to this file")
    args = ap.parse_args()
    d, nlist = args.d, args.nlist
    rs = np.random.RandomState(args.seed)
    print(f"data seed {args.seed}; d={d} nlist={nlist} old={args.n_old} new={args.n_new}; "
          f"{os.cpu_count()} CPU cores, faiss {faiss.__version__}")
    modes = 1.5 * rs.randn(2000, d).astype("float32")
    # drift: every mode moves by a common shift plus its own jitter, and a quarter of the new
    # data comes from modes that did not exist before
    moved = modes + 2.0 * rs.randn(1, d).astype("float32") + 0.5 * rs.randn(2000, d).astype("float32")
    fresh = 1.5 * rs.randn(500, d).astype("float32") + 3.0
    old = mixture(rs, modes, args.n_old)
    new = np.vstack([mixture(rs, moved, args.n_new * 3 // 4), mixture(rs, fresh, args.n_new - args.n_new * 3 // 4)])
    new = new[rs.permutation(len(new))]
    xb = np.vstack([old, new])
    xq = np.vstack([mixture(rs, modes, args.nq // 2), mixture(rs, moved, args.nq // 4),
                    mixture(rs, fresh, args.nq - args.nq // 2 - args.nq // 4)])
    gt = faiss.IndexFlatL2(d)
    gt.add(xb)
    _, I0 = gt.search(xq, 10)

    def recall(index, nprobe):
        """recall@10 and vectors scanned per query (the search cost at this nprobe)"""
        index.nprobe = nprobe
        faiss.cvar.indexIVF_stats.reset()
        _, I = index.search(xq, 10)
        scanned = faiss.cvar.indexIVF_stats.ndis / len(xq)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(I0, I)]), scanned

    def imbalance(index):
        ivf = faiss.extract_index_ivf(index)
        h = np.array([ivf.invlists.list_size(i) for i in range(ivf.nlist)], dtype="float64")
        return ivf.nlist * (h ** 2).sum() / h.sum() ** 2

    rows = []

    budgets = (0.01, 0.03)  # vectors scanned per query, as a share of the index

    def at_budget(index, share):
        """recall@10 at a fixed search cost: interpolated (in log cost) over nprobe 1..256"""
        pts = [recall(index, p) for p in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
        rec, cost = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
        return float(np.interp(np.log(share * len(xb)), np.log(cost), rec))

    def report(name, index, seconds, detail=""):
        (r8, s8) = recall(index, 8)
        rb = [at_budget(index, b) for b in budgets]
        r = (name, r8, s8, rb[0], rb[1], imbalance(index), seconds, detail)
        rows.append(r)
        print(f"{name:44s} nprobe=8: recall {r8:.4f} ({s8:.0f} scanned); recall at {budgets[0]:.0%} scanned "
              f"{rb[0]:.4f}, at {budgets[1]:.0%} {rb[1]:.4f}; imbalance {r[5]:.2f}; time {seconds:.2f} s {detail}")

    factory = f"IVF{nlist},Flat"
    base = faiss.index_factory(d, factory)
    t = time.perf_counter()
    faiss_flash.train_index(base, old, device="cpu")
    base.add(old)
    print(f"initial index on the old data: {time.perf_counter() - t:.2f} s")
    blob = faiss.serialize_index(base)

    stale = faiss.deserialize_index(blob)
    t = time.perf_counter()
    stale.add(new)
    report("stale centroids + add new", stale, time.perf_counter() - t, "(add only)")

    for niter, per_list, reb in ((3, None, 0), (5, None, 0), (10, None, 0), (3, None, -1), (5, None, -1),
                                 (10, None, -1), (5, 64, -1)):
        idx = faiss.deserialize_index(blob)
        t = time.perf_counter()
        info = faiss_flash.refresh_ivf(idx, new, keep_existing=True, niter=niter,
                                       max_train=per_list and per_list * nlist, rebalance=reb, device="cpu")
        dt = time.perf_counter() - t
        moved = info["n_rebalanced"]
        assert idx.ntotal == len(xb)
        report(f"refresh_ivf(niter={niter}{f', max_train={per_list}*nlist' if per_list else ''}"
               f"{', rebalance=0' if reb == 0 else ''})", idx, dt,
               f"(k-means on {info['n_train']} rows {info['kmeans_s']:.2f} s + rebuild {info['rebuild_s']:.2f} s"
               + (f"; {moved} centroids moved" if reb else "") + ")")

    full = faiss.index_factory(d, factory)
    t = time.perf_counter()
    faiss_flash.train_index(full, xb, device="cpu")
    full.add(xb)
    report("full retrain + add (faiss-flash)", full, time.perf_counter() - t)

    stock = faiss.index_factory(d, factory)
    t = time.perf_counter()
    stock.train(xb)
    stock.add(xb)
    report("full retrain + add (stock FAISS 1.7.3)", stock, time.perf_counter() - t)

    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write("# Incremental IVF refresh: measured example\n\n")
            f.write(f"`python/examples/refresh_drift.py` (data seed {args.seed}), {time.strftime('%Y-%m-%d')}, "
                    f"{platform.machine()} {os.cpu_count()}-core VM, CPU engine, FAISS {faiss.__version__}.\n\n")
            f.write(f"IVF{nlist},Flat, d={d}. The index is trained on {args.n_old} vectors of a 2000-mode Gaussian "
                    f"mixture; then {args.n_new} new vectors arrive: 3/4 from the same modes moved (a common "
                    "shift of 2.0 sigma per dimension plus 0.5 sigma of jitter per mode), 1/4 from 500 modes that "
                    f"did not exist before. Queries: {args.nq}, half from the old modes, a quarter from the "
                    "moved ones and a quarter from the new ones; recall@10 against exact search over all "
                    f"{len(xb)} vectors. Time: from the trained old index to the index holding all vectors. "
                    "At a fixed nprobe an unbalanced index scans more vectors per query, so recall is also "
                    "given at a fixed search cost: 1% and 3% of the index scanned per query (interpolated "
                    "over nprobe 1..256). Imbalance: nlist * sum(h^2) / (sum h)^2 over list sizes h (1 is "
                    "perfect).\n\n")
            f.write("| index | recall@10, nprobe=8 (vectors scanned) | recall@10 at 1% scanned | "
                    "recall@10 at 3% scanned | imbalance | time (s) | detail |\n")
            f.write("|---|---|---|---|---|---|---|\n")
            for name, r8, s8, b1, b3, imb, sec, detail in rows:
                f.write(f"| {name} | {r8:.4f} ({s8:.0f}) | {b1:.4f} | {b3:.4f} | {imb:.2f} | {sec:.2f} | "
                        f"{detail.strip('()')} |\n")
        print(f"written to {args.markdown}")


if __name__ == "__main__":
    main()
