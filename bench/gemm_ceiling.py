#!/usr/bin/env python3
"""The tensor-core ceiling under the GPU's power cap: cuBLAS GEMMs through torch.mm (fp32
accumulation), each shape run long enough to reach the cap and then timed with CUDA events
(median over groups of 10 products). k-means' distance work at large k runs at the same cap,
so its rate is best read against these (bench/RESULTS.md, run 52). Run beside nvidia-smi's
clock and power log (scripts/gpu.sh ceiling does).

    python3 bench/gemm_ceiling.py [--seconds 12]
"""
import argparse
import time

import torch

SHAPES = [  # (m, n, k, dtype)
    (8192, 8192, 8192, torch.float16),
    (16384, 16384, 16384, torch.float16),
    (16384, 16384, 4096, torch.float16),
    (16384, 16384, 1024, torch.float16),
    (65536, 16384, 128, torch.float16),  # k-means' shape as a plain GEMM: writes the distance matrix
    (8192, 8192, 8192, torch.bfloat16),
]


def time_gemm(m, n, k, dtype, seconds):
    a = torch.randn(m, k, device="cuda", dtype=dtype)
    b = torch.randn(k, n, device="cuda", dtype=dtype)
    c = torch.empty(m, n, device="cuda", dtype=dtype)
    t0 = time.time()
    while time.time() - t0 < seconds / 2:  # the first half: reach the power cap
        for _ in range(10):
            torch.mm(a, b, out=c)
        torch.cuda.synchronize()
    ms = []
    t0 = time.time()
    while not ms or time.time() - t0 < seconds / 2:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(10):
            torch.mm(a, b, out=c)
        e.record()
        e.synchronize()
        ms.append(s.elapsed_time(e) / 10)
    ms.sort()
    return ms[len(ms) // 2], ms[0], ms[-1], len(ms)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12.0, help="per shape: half to warm, half timed")
    args = ap.parse_args()
    if not args.seconds > 0:
        ap.error(f"--seconds: expected a positive number, got {args.seconds}")
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False  # fp32 accumulation throughout
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    for m, n, k, dtype in SHAPES:
        med, fastest, slowest, count = time_gemm(m, n, k, dtype, args.seconds)
        flop = 2.0 * m * n * k
        print(f"{time.strftime('%H:%M:%S')} mm {str(dtype).split('.')[-1]:8s} m={m} n={n} k={k}: "
              f"median {med:.3f} ms, {flop / med / 1e9:.0f} TFLOP/s "
              f"(range {flop / slowest / 1e9:.0f}-{flop / fastest / 1e9:.0f}), {count} samples", flush=True)


if __name__ == "__main__":
    main()
