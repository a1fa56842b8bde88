#include "kernels/cuda/device_ops.cuh"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/cuda/check.cuh"

namespace flash::cuda_engine {

namespace {

__device__ __forceinline__ float load_as_float(const void* x, DType t, int64_t i) {
    if (t == DType::F32) return static_cast<const float*>(x)[i];
    if (t == DType::F16) return __half2float(static_cast<const __half*>(x)[i]);
    return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    return v;
}

// One warp per row.
__global__ void row_norms(const void* x, DType dtype, int64_t rows, int64_t d, float* norms) {
    const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    float s = 0.f;
    for (int64_t j = lane; j < d; j += 32) {
        const float v = load_as_float(x, dtype, r * d + j);
        s = fmaf(v, v, s);
    }
    s = warp_sum(s);
    if (lane == 0) norms[r] = s;
}

__global__ void prepare_centroids(const float* c, int64_t rows, int64_t d, DType dtype, void* lowp, float* norms) {
    const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    float s = 0.f;
    for (int64_t j = lane; j < d; j += 32) {
        float v = c[r * d + j];
        if (dtype == DType::F16) {
            const __half h = __float2half_rn(v);
            static_cast<__half*>(lowp)[r * d + j] = h;
            v = __half2float(h);
        } else if (dtype == DType::BF16) {
            const __nv_bfloat16 h = __float2bfloat16_rn(v);
            static_cast<__nv_bfloat16*>(lowp)[r * d + j] = h;
            v = __bfloat162float(h);
        }
        s = fmaf(v, v, s);
    }
    s = warp_sum(s);
    if (lane == 0) norms[r] = s;
}

// std::mt19937, as FAISS' RandomGenerator uses it.
struct Mt19937 {
    uint32_t mt[624];
    int idx;
    __device__ explicit Mt19937(uint32_t seed) {
        mt[0] = seed;
        for (int i = 1; i < 624; i++) mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + uint32_t(i);
        idx = 624;
    }
    __device__ uint32_t operator()() {
        if (idx >= 624) {
            for (int i = 0; i < 624; i++) {
                const uint32_t y = (mt[i] & 0x80000000u) | (mt[(i + 1) % 624] & 0x7fffffffu);
                mt[i] = mt[(i + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
            }
            idx = 0;
        }
        uint32_t y = mt[idx++];
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c5680u;
        y ^= (y << 15) & 0xefc60000u;
        y ^= y >> 18;
        return y;
    }
};

// Block b: problem b. The common case (no empty cluster) costs one parallel scan.
__global__ void split_empty(float* centroids, float* counts, int64_t k, int64_t d, int64_t k_frozen, int64_t n,
                            int* nsplit_out) {
    const int64_t b = blockIdx.x;
    float* cb = centroids + b * k * d + k_frozen * d;
    float* hb = counts + b * k + k_frozen;
    const int64_t kk = k - k_frozen;
    __shared__ int any_empty;
    if (threadIdx.x == 0) any_empty = 0;
    __syncthreads();
    for (int64_t c = threadIdx.x; c < kk; c += blockDim.x)
        if (hb[c] == 0.f) any_empty = 1;
    __syncthreads();
    if (threadIdx.x != 0) return;
    int nsplit = 0;
    if (any_empty) {
        // Same steps and float/double mix as flash::split_empty_clusters (FAISS 1.7.3).
        Mt19937 rng(1234u);
        const double eps = 1 / 1024.;
        for (int64_t ci = 0; ci < kk; ci++) {
            if (hb[ci] != 0.f) continue;
            // FAISS would loop forever when no cluster has weight above 1 (possible with
            // weights); take the heaviest cluster then.
            int64_t heaviest = 0;
            for (int64_t c = 1; c < kk; c++)
                if (hb[c] > hb[heaviest]) heaviest = c;
            int64_t cj = 0;
            for (; hb[heaviest] > 1.f; cj = (cj + 1) % kk) {
                const float p = (hb[cj] - 1.0) / (float)(n - kk);
                const float r = float(rng()) / float(4294967295u);
                if (r < p) break;
            }
            if (!(hb[heaviest] > 1.f)) cj = heaviest;
            for (int64_t j = 0; j < d; j++) {
                const float v = cb[cj * d + j];
                if (j % 2 == 0) {
                    cb[ci * d + j] = v * (1 + eps);
                    cb[cj * d + j] = v * (1 - eps);
                } else {
                    cb[ci * d + j] = v * (1 - eps);
                    cb[cj * d + j] = v * (1 + eps);
                }
            }
            hb[ci] = hb[cj] / 2;
            hb[cj] -= hb[ci];
            nsplit++;
        }
    }
    nsplit_out[b] = nsplit;
}

__global__ void post_process(float* c, int64_t rows, int64_t d, bool spherical, bool int_centroids) {
    const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    float* row = c + r * d;
    if (spherical) {
        float s = 0.f;
        for (int64_t j = lane; j < d; j += 32) s = fmaf(row[j], row[j], s);
        s = warp_sum(s);
        if (s > 0.f) {
            const float inv = 1.f / sqrtf(s);
            for (int64_t j = lane; j < d; j += 32) row[j] *= inv;
        }
    }
    if (int_centroids)
        for (int64_t j = lane; j < d; j += 32) row[j] = roundf(row[j]);
}

// Block b: deterministic tree sums in double.
__global__ void iteration_stats(const float* dist, int64_t n, const uint32_t* sizes, int64_t k, double* obj,
                                double* imbalance) {
    const int64_t b = blockIdx.x;
    __shared__ double s1[256], s2[256], s3[256];
    double o = 0, h1 = 0, h2 = 0;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) o += dist[b * n + i];
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
        const double h = sizes[b * k + c];
        h1 += h;
        h2 += h * h;
    }
    s1[threadIdx.x] = o;
    s2[threadIdx.x] = h1;
    s3[threadIdx.x] = h2;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            s1[threadIdx.x] += s1[threadIdx.x + w];
            s2[threadIdx.x] += s2[threadIdx.x + w];
            s3[threadIdx.x] += s3[threadIdx.x + w];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        obj[b] = s1[0];
        imbalance[b] = s3[0] * double(k) / (s2[0] * s2[0]);
    }
}

__global__ void check_finite(const void* x, DType dtype, int64_t count, int* flag) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
        if (!isfinite(load_as_float(x, dtype, i))) {
            *flag = 1;
            return;
        }
}

unsigned warp_blocks(int64_t rows) { return unsigned((rows * 32 + 255) / 256); }

} // namespace

void launch_row_norms(const void* x, DType dtype, int64_t rows, int64_t d, float* norms, cudaStream_t s) {
    row_norms<<<warp_blocks(rows), 256, 0, s>>>(x, dtype, rows, d, norms);
    FLASH_LAUNCH_CHECK("row_norms");
}

void launch_prepare_centroids(const float* centroids, int64_t rows, int64_t d, DType dtype, void* lowp, float* norms,
                              cudaStream_t s) {
    prepare_centroids<<<warp_blocks(rows), 256, 0, s>>>(centroids, rows, d, dtype, lowp, norms);
    FLASH_LAUNCH_CHECK("prepare_centroids");
}

void launch_split_empty_clusters(float* centroids, float* counts, int64_t batch, int64_t k, int64_t d,
                                 int64_t k_frozen, int64_t n, int* nsplit_out, cudaStream_t s) {
    split_empty<<<unsigned(batch), 256, 0, s>>>(centroids, counts, k, d, k_frozen, n, nsplit_out);
    FLASH_LAUNCH_CHECK("split_empty");
}

void launch_post_process(float* centroids, int64_t rows, int64_t d, bool spherical, bool int_centroids,
                         cudaStream_t s) {
    if (!spherical && !int_centroids) return;
    post_process<<<warp_blocks(rows), 256, 0, s>>>(centroids, rows, d, spherical, int_centroids);
    FLASH_LAUNCH_CHECK("post_process");
}

void launch_iteration_stats(const float* dist, int64_t batch, int64_t n, const uint32_t* sizes, int64_t k,
                            double* obj, double* imbalance, cudaStream_t s) {
    iteration_stats<<<unsigned(batch), 256, 0, s>>>(dist, n, sizes, k, obj, imbalance);
    FLASH_LAUNCH_CHECK("iteration_stats");
}

void launch_check_finite(const void* x, DType dtype, int64_t count, int* flag, cudaStream_t s) {
    check_finite<<<1024, 256, 0, s>>>(x, dtype, count, flag);
    FLASH_LAUNCH_CHECK("check_finite");
}

} // namespace flash::cuda_engine
