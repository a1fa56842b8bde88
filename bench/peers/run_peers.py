#!/usr/bin/env python3
"""Times the peers on the same named configs as bench_gpu, in one process on the GPU:

- flash-kmeans (svg-project/flash-kmeans, Triton): batch_kmeans_Euclid, imported from the
  directory given with --flash-kmeans-path (its code is never part of this repository);
  the script refuses to time it if its Triton path is not the one loaded.
- dense PyTorch: the N x K distance matrix with torch.bmm, argmin, index_add_ update.

Per-iteration time = CUDA-event time of a whole niter-iteration call / niter, median of
--repeats calls after one warm-up call (Triton compilation happens there). flash-kmeans is also
timed in steady state: (a 2 * niter call - a niter call) / niter, which drops its per-call setup
(compare with bench_gpu's iter_ms; the whole-call figure compares with its call_ms), and as the
least-squares slope of call time over calls of 5, 10, 20 and 40 iterations (median over
--repeats), which averages out more of the host-side noise of its launch-bound iterations.
"""
import argparse
import csv
import statistics
import sys
import time

import torch

CONFIGS = {
    "b32_n75600_k1000_fp16": (32, 75600, 1000, 128, torch.float16),
    "b32_n65536_k1024_fp16": (32, 65536, 1024, 128, torch.float16),
    "b1_n1M_k8192_fp16": (1, 1 << 20, 8192, 128, torch.float16),
    "b1_n8M_k1024_fp16": (1, 8 << 20, 1024, 128, torch.float16),
    "b1_n1M_k1024_fp32": (1, 1 << 20, 1024, 128, torch.float32),
    "b1_n1M_k16384_fp32": (1, 1 << 20, 16384, 128, torch.float32),
    "b32_n4096_k64_fp16": (32, 4096, 64, 128, torch.float16),
    "b8_n16384_k100_fp16": (8, 16384, 100, 128, torch.float16),
    "b1_n65536_k1024_fp16": (1, 65536, 1024, 128, torch.float16),
}


def make_data(B, N, d, dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    centres = 2 * torch.rand(256, d, device="cuda", generator=g) - 1
    which = torch.randint(0, 256, (B, N), device="cuda", generator=g)
    x = 2 * centres[which] + 0.5 * (2 * torch.rand(B, N, d, device="cuda", generator=g) - 1)
    return x.to(dtype).contiguous()


def dense_torch_kmeans(x, init, niter):
    c = init.clone()
    B, N, d = x.shape
    K = c.shape[1]
    x_sq = (x.float() ** 2).sum(-1)
    for _ in range(niter):
        dist = x_sq[:, :, None] + (c.float() ** 2).sum(-1)[:, None, :] - 2 * torch.bmm(x, c.transpose(1, 2)).float()
        ids = dist.argmin(-1)
        sums = torch.zeros(B, K, d, device=x.device, dtype=torch.float32)
        sums.scatter_add_(1, ids[..., None].expand(-1, -1, d), x.float())
        cnt = torch.bincount((ids + K * torch.arange(B, device=x.device)[:, None]).view(-1), minlength=B * K).view(B, K)
        c = torch.where(cnt[..., None] > 0, sums / cnt.clamp_min(1)[..., None], c.float()).to(x.dtype)
    return c


def elapsed_ms(fn, it):
    """CUDA-event time of one fn(it) call, in ms."""
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn(it)
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b)


def time_call(fn, niter, repeats):
    fn(2)  # warm-up (compilation, autotuning, allocator)
    torch.cuda.synchronize()
    return statistics.median(elapsed_ms(fn, niter) / niter for _ in range(repeats))


def time_marginal(fn, niter, repeats):
    """Steady-state time per iteration: (time of a 2 * niter call - time of a niter call) / niter;
    the per-call setup cancels out. Returns the median of the paired differences and the best
    case, (fastest 2 * niter call - fastest niter call) / niter (its iterations are bound by
    host-side launches and vary with the host's state; the smallest paired difference could go
    below zero when one niter call was slow)."""
    fn(2)
    torch.cuda.synchronize()
    diffs, ones, twos = [], [], []
    for _ in range(repeats):
        ones.append(elapsed_ms(fn, niter))
        twos.append(elapsed_ms(fn, 2 * niter))
        diffs.append((twos[-1] - ones[-1]) / niter)
    return statistics.median(diffs), (min(twos) - min(ones)) / niter


def slope(xs, ys):
    """Least-squares slope of ys against xs."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def time_fit(fn, repeats, counts=(5, 10, 20, 40)):
    """Steady-state time per iteration: the slope of call time against the iteration count
    (one call per count, in turn), median over repeats; the per-call setup is the intercept."""
    fn(2)
    torch.cuda.synchronize()
    return statistics.median(slope(counts, [elapsed_ms(fn, c) for c in counts]) for _ in range(repeats))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--flash-kmeans-path", required=True)
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--skip-dense", default="b1_n8M_k1024_fp16")
    ap.add_argument("--settle-ms", type=int, default=0,
                    help="idle pause before each config (as bench_gpu's: clocks recover from the power limit)")
    args = ap.parse_args()

    sys.path.insert(0, args.flash_kmeans_path)
    import flash_kmeans
    fk = flash_kmeans.batch_kmeans_Euclid
    triton_path = fk.__module__ == "flash_kmeans.kmeans_triton_impl"
    print(f"flash-kmeans from {flash_kmeans.__file__}: batch_kmeans_Euclid is {fk.__module__} "
          f"({'Triton path' if triton_path else 'TORCH FALLBACK: not timed'})")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    rows = []
    print(f"{'config':24s} {'flash-kmeans ms':>16s} {'(steady state)':>15s} {'(best)':>8s} {'(fit)':>8s} "
          f"{'dense torch ms':>15s}")
    for name in args.configs.split(","):
        B, N, K, d, dtype = CONFIGS[name]
        time.sleep(args.settle_ms / 1000)
        x = make_data(B, N, d, dtype)
        init = x[:, :K].clone()
        fk_ms = fk_iter_ms = fk_iter_min_ms = fk_fit_ms = float("nan")
        if triton_path:
            run = lambda it: fk(x, K, max_iters=it, tol=0.0, init_centroids=init.clone())  # noqa: E731
            fk_ms = time_call(run, args.niter, args.repeats)
            fk_iter_ms, fk_iter_min_ms = time_marginal(run, args.niter, args.repeats)
            fk_fit_ms = time_fit(run, args.repeats)
        dense_ms = float("nan")
        if name not in args.skip_dense.split(","):
            try:
                dense_ms = time_call(lambda it: dense_torch_kmeans(x, init, it), args.niter, args.repeats)
            except torch.OutOfMemoryError:
                dense_ms = float("inf")
            torch.cuda.empty_cache()
        print(f"{name:24s} {fk_ms:16.3f} {fk_iter_ms:15.3f} {fk_iter_min_ms:8.3f} {fk_fit_ms:8.3f} {dense_ms:15.3f}",
              flush=True)
        rows.append((name, fk_ms, fk_iter_ms, fk_iter_min_ms, dense_ms, fk_fit_ms))
        del x, init
        torch.cuda.empty_cache()
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["config", "flash_kmeans_ms", "flash_kmeans_iter_ms", "flash_kmeans_iter_min_ms",
                        "dense_torch_ms", "flash_kmeans_iter_fit_ms"])
            w.writerows(rows)


if __name__ == "__main__":
    main()
