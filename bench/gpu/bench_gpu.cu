// GPU benchmark of the CUDA engine on named configurations (DESIGN.md section 4).
//   bench_gpu [--configs name,name,...] [--niter 10] [--repeats 5] [--csv out.csv] [--settle-ms 0]
// Data lives on the device (filled by a hash kernel, not zeros). For each config: one
// warm-up run, then `repeats` timed runs of `niter` Lloyd iterations; reported:
//   iter_ms : median GPU time per iteration, CUDA events around the iteration loop
//   call_ms : median wall time of the whole run_lloyd call / niter (setup included)
//   TFLOP/s : 2 B N K d / iter_ms
// --settle-ms: an idle pause before each config (the clocks recover from the power limit).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "kernels/flash_kmeans.h"

namespace {

struct Config {
    const char* name;
    int64_t B, N, K, d;
    flash::DType dtype;
    flash::Fp32Mode fp32_mode = flash::Fp32Mode::Exact;
};

const Config kConfigs[] = {
        {"b32_n75600_k1000_fp16", 32, 75600, 1000, 128, flash::DType::F16},
        {"b32_n65536_k1024_fp16", 32, 65536, 1024, 128, flash::DType::F16},
        {"b1_n1M_k8192_fp16", 1, 1 << 20, 8192, 128, flash::DType::F16},
        {"b1_n8M_k1024_fp16", 1, 8 << 20, 1024, 128, flash::DType::F16},
        {"b1_n1M_k1024_fp32", 1, 1 << 20, 1024, 128, flash::DType::F32},
        {"b1_n1M_k16384_fp32", 1, 1 << 20, 16384, 128, flash::DType::F32},
        // the opt-in TF32-class mode (Fp32Mode::TF32), beside the peer's TF32 on the same configs
        {"b1_n1M_k1024_fp32_tf32", 1, 1 << 20, 1024, 128, flash::DType::F32, flash::Fp32Mode::TF32},
        {"b1_n1M_k16384_fp32_tf32", 1, 1 << 20, 16384, 128, flash::DType::F32, flash::Fp32Mode::TF32},
        // latency-bound batched problems (issue 4)
        {"b32_n4096_k64_fp16", 32, 4096, 64, 128, flash::DType::F16},
        {"b8_n16384_k100_fp16", 8, 16384, 100, 128, flash::DType::F16},
        {"b1_n65536_k1024_fp16", 1, 65536, 1024, 128, flash::DType::F16},
};

__device__ float hash_uniform(uint64_t i) {
    uint64_t z = i * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return float(z >> 40) / float(1 << 24) * 2.f - 1.f;
}

// Points around 256 random centres so that clusters exist, plus noise.
__global__ void fill(void* x, flash::DType t, int64_t rows, int64_t d) {
    const int64_t count = rows * d;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < count; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = e / d, j = e % d;
        const int64_t centre = uint64_t(hash_uniform(r * 7919 + 13) * 1e6f + 1e6f) % 256;
        const float v = 2.f * hash_uniform(centre * 1000003 + j) + 0.5f * hash_uniform(uint64_t(e) + 99991);
        if (t == flash::DType::F32) static_cast<float*>(x)[e] = v;
        else if (t == flash::DType::F16) static_cast<__half*>(x)[e] = __float2half(v);
        else static_cast<__nv_bfloat16*>(x)[e] = __float2bfloat16(v);
    }
}

void check(cudaError_t e, const char* what) {
    if (e != cudaSuccess) {
        std::fprintf(stderr, "bench_gpu: %s: %s\n", what, cudaGetErrorString(e));
        std::exit(1);
    }
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    std::string only, csv;
    int niter = 10, repeats = 5, settle_ms = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--configs") only = "," + v + ",";
        else if (a == "--niter") niter = std::atoi(v.c_str());
        else if (a == "--repeats") repeats = std::atoi(v.c_str());
        else if (a == "--csv") csv = v;
        else if (a == "--settle-ms")
            settle_ms = std::atoi(v.c_str());
        else {
            std::fprintf(stderr, "unknown option %s\n", a.c_str());
            return 2;
        }
    }
    cudaDeviceProp prop{};
    check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);
    FILE* out = csv.empty() ? nullptr : std::fopen(csv.c_str(), "w");
    if (out) std::fprintf(out, "config,B,N,K,d,dtype,iter_ms,call_ms,tflops\n");
    std::printf("%-24s %10s %10s %9s\n", "config", "iter_ms", "call_ms", "TFLOP/s");
    for (const Config& c : kConfigs) {
        if (!only.empty() && only.find("," + std::string(c.name) + ",") == std::string::npos) continue;
        // An idle pause first: after a config that ran at the power limit the clocks stay low
        // for a while (H100: 1.56-1.64 GHz instead of 1.98 for about a second), which would
        // otherwise be charged to the short configs that follow (bench/RESULTS.md run 33).
        if (settle_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(settle_ms));
        const size_t esz = c.dtype == flash::DType::F32 ? 4 : 2;
        void* x = nullptr;
        check(cudaMalloc(&x, size_t(c.B) * c.N * c.d * esz), "cudaMalloc points");
        fill<<<4096, 256>>>(x, c.dtype, c.B * c.N, c.d);
        check(cudaDeviceSynchronize(), "fill");
        // Initial centroids: the first K rows of each problem, as fp32 on the host.
        std::vector<float> c0(size_t(c.B) * c.K * c.d);
        {
            std::vector<char> rows(size_t(c.K) * c.d * esz);
            for (int64_t b = 0; b < c.B; b++) {
                check(cudaMemcpy(rows.data(), static_cast<char*>(x) + size_t(b) * c.N * c.d * esz, rows.size(),
                                 cudaMemcpyDeviceToHost),
                      "copy init");
                for (int64_t i = 0; i < c.K * c.d; i++) {
                    float v;
                    if (esz == 4) std::memcpy(&v, &rows[i * 4], 4);
                    else if (c.dtype == flash::DType::F16) v = __half2float(reinterpret_cast<const __half*>(rows.data())[i]);
                    else v = __bfloat162float(reinterpret_cast<const __nv_bfloat16*>(rows.data())[i]);
                    c0[b * c.K * c.d + i] = v;
                }
            }
        }
        flash::Points p;
        p.data = x;
        p.dtype = c.dtype;
        p.batch = c.B;
        p.n = c.N;
        p.d = c.d;
        p.device = 0;
        flash::LloydOptions opt;
        opt.k = c.K;
        opt.backend = flash::Backend::CUDA;
        opt.fp32_mode = c.fp32_mode;
        std::vector<double> iter_ms, call_ms;
        for (int r = 0; r <= repeats; r++) {
            auto cen = c0;
            opt.niter = r == 0 ? 2 : niter; // r == 0: warm-up
            const auto t0 = std::chrono::steady_clock::now();
            const auto st = flash::run_lloyd(p, cen.data(), opt);
            check(cudaDeviceSynchronize(), "run");
            const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            if (r == 0) continue;
            iter_ms.push_back(st[0].back().time_s * 1e3 / niter);
            call_ms.push_back(wall * 1e3 / niter);
        }
        const double it = median(iter_ms), call = median(call_ms);
        const double tflops = 2.0 * c.B * c.N * c.K * c.d / (it * 1e-3) / 1e12;
        std::printf("%-24s %10.3f %10.3f %9.1f\n", c.name, it, call, tflops);
        if (out)
            std::fprintf(out, "%s,%ld,%ld,%ld,%ld,%s,%.4f,%.4f,%.2f\n", c.name, long(c.B), long(c.N), long(c.K),
                         long(c.d), esz == 4 ? "fp32" : "fp16", it, call, tflops);
        std::fflush(stdout);
        check(cudaFree(x), "cudaFree");
    }
    if (out) std::fclose(out);
    return 0;
}
