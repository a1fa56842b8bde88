#!/usr/bin/env python3
"""Bar chart of time per Lloyd iteration in steady state: faiss-flash (iter_ms) vs flash-kmeans
(its marginal iteration, flash_kmeans_iter_ms, where the CSV has it) vs dense PyTorch.
usage: plot_gpu.py OURS.csv PEERS.csv OUT.png"""
import csv
import math
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(ours_csv, peers_csv, out_png):
    ours = {r["config"]: float(r["iter_ms"]) for r in csv.DictReader(open(ours_csv))}
    peers = {r["config"]: r for r in csv.DictReader(open(peers_csv))}
    names = [n for n in ours if n in peers]
    series = [("faiss-flash", [ours[n] for n in names]),
              ("flash-kmeans (Triton)",
               [float(peers[n].get("flash_kmeans_iter_ms") or peers[n]["flash_kmeans_ms"]) for n in names]),
              ("dense PyTorch", [float(peers[n]["dense_torch_ms"]) for n in names])]
    fig, ax = plt.subplots(figsize=(12, 5))
    w = 0.27
    for i, (label, vals) in enumerate(series):
        xs = [j + (i - 1) * w for j in range(len(names))]
        ax.bar(xs, [v if math.isfinite(v) else 0 for v in vals], w, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("ms per Lloyd iteration (log scale)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.legend()
    ax.set_title(sys.argv[4] if len(sys.argv) > 4 else "Time per iteration, d = 128 (lower is better)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:4])
