#!/usr/bin/env python3
"""Times flash-kmeans' out-of-core path (kmeans_largeN: host points copied to the GPU in
chunks every iteration) on the same shapes as bench_scale, in one process per data set.

flash-kmeans (svg-project/flash-kmeans) is imported from --flash-kmeans-path; its code is
never part of this repository. Points: (N, d) in pinned host memory (the peer's own
benchmark pins them; where the host refuses to pin that much, e.g. 102 GB of fp32 points on a
125 GiB host, pageable memory, said so in the output and the CSV), drawn like
kernels/synthetic_points.h (256 centres plus noise).
Per-iteration time = (wall time of a (2 + m)-iteration call - wall time of a 2-iteration
call) / m, with torch.cuda.synchronize() around each call: set-up and the first copies cancel.
"""
import argparse
import csv
import sys
import time

import torch


def make_points(n, d, dtype, chunk=1 << 22):
    """(points, 'pinned' or 'pageable')."""
    g = torch.Generator(device="cuda").manual_seed(0)
    centres = 2 * torch.rand(256, d, device="cuda", generator=g) - 1
    try:
        x, memory = torch.empty(n, d, dtype=dtype, pin_memory=True), "pinned"
    except RuntimeError as e:
        print(f"could not pin {n * d * torch.finfo(dtype).bits // 8 / 1e9:.1f} GB ({str(e).splitlines()[0]}): "
              "pageable host points", flush=True)
        x, memory = torch.empty(n, d, dtype=dtype), "pageable"
    for r0 in range(0, n, chunk):
        r1 = min(n, r0 + chunk)
        which = torch.randint(0, 256, (r1 - r0,), device="cuda", generator=g)
        part = 2 * centres[which] + 0.5 * (2 * torch.rand(r1 - r0, d, device="cuda", generator=g) - 1)
        x[r0:r1].copy_(part.to(dtype))
    torch.cuda.synchronize()
    return x, memory


def timed(fn):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flash-kmeans-path", required=True)
    ap.add_argument("--n", type=int, required=True)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--dtype", default="f32", choices=["f32", "f16"])
    ap.add_argument("--k", default="4096")
    ap.add_argument("--m", type=int, default=2, help="extra iterations timed")
    ap.add_argument("--devices", default="0", help="'0' = cuda:0 only, 'all' = every GPU (the peer's multi-GPU path)")
    ap.add_argument("--csv", default=None)
    args = ap.parse_args()

    sys.path.insert(0, args.flash_kmeans_path)
    import flash_kmeans
    if flash_kmeans.kmeans_largeN.__module__ != "flash_kmeans.kmeans_large":
        sys.exit("flash-kmeans: kmeans_largeN is not the Triton out-of-core path (import failed): not timed")
    dtype = torch.float16 if args.dtype == "f16" else torch.float32
    t0 = time.perf_counter()
    x, memory = make_points(args.n, args.d, dtype)
    print(f"flash-kmeans kmeans_largeN, {torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}, "
          f"N={args.n} d={args.d} {args.dtype} {memory} host points ({x.numel() * x.element_size() / 1e9:.1f} GB, "
          f"made in {time.perf_counter() - t0:.1f} s)", flush=True)
    device = None if args.devices == "all" else f"cuda:{args.devices}"
    rows = []
    for k in [int(v) for v in args.k.split(",")]:
        init = x[:: args.n // k][:k].clone()
        run = lambda it: flash_kmeans.kmeans_largeN(x, k, max_iters=it, tol=-1.0, init_centroids=init,
                                                    device=device)
        run(1)  # warm-up: Triton compilation and autotuning
        t2 = timed(lambda: run(2))
        tm = timed(lambda: run(2 + args.m))
        ms = 1e3 * (tm - t2) / args.m
        tflops = 2 * args.n * k * args.d / (ms / 1e3) / 1e12
        print(f"K={k:6d} devices={args.devices:4s} flash-kmeans {ms:10.1f} ms/iter  {tflops:6.1f} TFLOP/s "
              f"(2-iteration call {t2:.2f} s)", flush=True)
        rows.append((args.n, args.d, args.dtype, k, args.devices, memory, ms))
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["n", "d", "dtype", "k", "devices", "host_memory", "flash_kmeans_ms"])
            w.writerows(rows)


if __name__ == "__main__":
    main()
