#include "kernels/cuda/update.cuh"

#include "kernels/lloyd_common.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

namespace flash::cuda_engine {

namespace {

constexpr int kChunk = 32;     // consecutive points summed by one block
constexpr int kThreads = 128;  // threads per chunk / cluster block (dimensions in parallel)

__device__ __forceinline__ float load_as_float(const void* x, DType t, int64_t i) {
    if (t == DType::F32) return static_cast<const float*>(x)[i];
    if (t == DType::F16) return __half2float(static_cast<const __half*>(x)[i]);
    return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
}

__global__ void make_keys(const int32_t* labels, int64_t n, int64_t k, int64_t total, uint32_t* keys,
                          uint32_t* ids, uint32_t* sizes) {
    const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (g >= total) return;
    const uint32_t key = uint32_t((g / n) * k + labels[g]);
    keys[g] = key;
    ids[g] = uint32_t(g);
    atomicAdd(&sizes[key], 1u); // integer counts: exact and order-independent
}

__global__ void count_chunks(const uint32_t* sizes, int64_t clusters, uint32_t* nchunks) {
    const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (c < clusters) nchunks[c] = (sizes[c] + kChunk - 1) / kChunk;
}

// Block = one chunk of up to kChunk consecutive points of one cluster's segment.
__global__ void __launch_bounds__(kThreads) chunk_sums(const void* x, DType dtype, int64_t d, const uint32_t* ids,
                                                       const uint32_t* sizes, const uint32_t* offsets,
                                                       const uint32_t* nchunks, const uint32_t* chunk_start,
                                                       int64_t clusters, const float* weights, float* partial,
                                                       float* wpartial) {
    const uint32_t chunk = blockIdx.x;
    if (chunk >= chunk_start[clusters - 1] + nchunks[clusters - 1]) return;
    // The cluster owning this chunk: the last c with chunk_start[c] <= chunk.
    int64_t lo = 0, hi = clusters - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (chunk_start[mid] <= chunk) lo = mid;
        else hi = mid - 1;
    }
    const int64_t c = lo;
    const uint32_t p0 = offsets[c] + (chunk - chunk_start[c]) * kChunk;
    const uint32_t p1 = min(p0 + uint32_t(kChunk), offsets[c] + sizes[c]);
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.f;
        for (uint32_t p = p0; p < p1; p++) {
            const uint32_t id = ids[p];
            const float v = load_as_float(x, dtype, int64_t(id) * d + j);
            s = weights ? fmaf(v, weights[id], s) : s + v;
        }
        partial[int64_t(chunk) * d + j] = s;
    }
    if (threadIdx.x == 0) {
        float w = 0.f;
        for (uint32_t p = p0; p < p1; p++) w += weights ? weights[ids[p]] : 1.f;
        wpartial[chunk] = w;
    }
}

// The same sums with 16-byte loads: TR = d / V threads cover a row (V elements each), RP =
// kThreads / TR rows are read at once, each thread summing rows r, r + RP, ... of the chunk in
// order; the RP row-group sums are then added in fixed order (deterministic, no atomics).
// Requires d % V == 0, d / V <= kThreads and 16-byte aligned rows.
template <class T>
__global__ void __launch_bounds__(kThreads) chunk_sums_vec(const T* x, int64_t d, const uint32_t* ids,
                                                           const uint32_t* sizes, const uint32_t* offsets,
                                                           const uint32_t* nchunks, const uint32_t* chunk_start,
                                                           int64_t clusters, const float* weights, float* partial,
                                                           float* wpartial) {
    constexpr int V = 16 / sizeof(T);
    __shared__ float red[kThreads * V]; // (RP, d)
    const uint32_t chunk = blockIdx.x;
    if (chunk >= chunk_start[clusters - 1] + nchunks[clusters - 1]) return;
    int64_t lo = 0, hi = clusters - 1;
    while (lo < hi) {
        const int64_t mid = (lo + hi + 1) / 2;
        if (chunk_start[mid] <= chunk) lo = mid;
        else hi = mid - 1;
    }
    const int64_t c = lo;
    const uint32_t p0 = offsets[c] + (chunk - chunk_start[c]) * kChunk;
    const uint32_t p1 = min(p0 + uint32_t(kChunk), offsets[c] + sizes[c]);
    const int TR = int(d / V), RP = kThreads / TR;
    const int r = threadIdx.x / TR, cv = threadIdx.x % TR;
    float acc[V];
#pragma unroll
    for (int e = 0; e < V; e++) acc[e] = 0.f;
    if (r < RP) {
        for (uint32_t p = p0 + r; p < p1; p += RP) {
            const uint32_t id = ids[p];
            const uint4 raw = *reinterpret_cast<const uint4*>(x + int64_t(id) * d + cv * V);
            const T* v = reinterpret_cast<const T*>(&raw);
            const float w = weights ? weights[id] : 1.f;
#pragma unroll
            for (int e = 0; e < V; e++) {
                float f;
                if constexpr (sizeof(T) == 4) f = float(v[e]);
                else if constexpr (std::is_same_v<T, __half>) f = __half2float(v[e]);
                else f = __bfloat162float(v[e]);
                acc[e] = weights ? fmaf(f, w, acc[e]) : acc[e] + f;
            }
        }
#pragma unroll
        for (int e = 0; e < V; e++) red[r * d + cv * V + e] = acc[e];
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.f;
        for (int q = 0; q < RP; q++) s += red[q * d + j];
        partial[int64_t(chunk) * d + j] = s;
    }
    if (threadIdx.x == 0) {
        float w = 0.f;
        for (uint32_t p = p0; p < p1; p++) w += weights ? weights[ids[p]] : 1.f;
        wpartial[chunk] = w;
    }
}

// Block = one cluster: add its chunk partials in order, then scale by 1 / weight.
__global__ void __launch_bounds__(kThreads) finalize(int64_t k, int64_t d, int64_t k_frozen, const uint32_t* nchunks,
                                                     const uint32_t* chunk_start, const float* partial,
                                                     const float* wpartial, float* centroids, float* counts) {
    const int64_t c = blockIdx.x;
    if (c % k < k_frozen) return;
    const uint32_t c0 = chunk_start[c], c1 = c0 + nchunks[c];
    float w = 0.f;
    for (uint32_t ch = c0; ch < c1; ch++) w += wpartial[ch];
    if (threadIdx.x == 0) counts[c] = w;
    const float inv = w != 0.f ? 1.f / w : 0.f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.f;
        for (uint32_t ch = c0; ch < c1; ch++) s += partial[int64_t(ch) * d + j];
        centroids[c * d + j] = s * inv;
    }
}

// Block = one cluster: the cluster's float sum over its chunk partials (in order, as
// finalize), added to double accumulators (one block per cluster: no atomics).
__global__ void __launch_bounds__(kThreads) accumulate_clusters(int64_t d, const uint32_t* nchunks,
                                                                const uint32_t* chunk_start, const uint32_t* sizes,
                                                                const float* partial, const float* wpartial,
                                                                double* sums, double* wsums,
                                                                unsigned long long* counts) {
    const int64_t c = blockIdx.x;
    const uint32_t c0 = chunk_start[c], c1 = c0 + nchunks[c];
    if (c1 == c0) return;
    if (threadIdx.x == 0) {
        float w = 0.f;
        for (uint32_t ch = c0; ch < c1; ch++) w += wpartial[ch];
        wsums[c] += double(w);
        counts[c] += sizes[c];
    }
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.f;
        for (uint32_t ch = c0; ch < c1; ch++) s += partial[int64_t(ch) * d + j];
        sums[c * d + j] += double(s);
    }
}

int bits_for(int64_t values) {
    int b = 1;
    while ((int64_t(1) << b) < values) b++;
    return b;
}

unsigned blocks_for(int64_t items, int threads) { return unsigned((items + threads - 1) / threads); }

} // namespace

SortInverseUpdate::SortInverseUpdate(int64_t batch, int64_t n, int64_t d, int64_t k, cudaStream_t stream)
        : batch_(batch), n_(n), d_(d), k_(k) {
    const int64_t total = batch * n, clusters = batch * k;
    if (total >= (int64_t(1) << 32) || clusters >= (int64_t(1) << 32))
        throw std::invalid_argument("faiss-flash: the CUDA update handles batch * n and batch * k below 2^32");
    end_bit_ = bits_for(clusters);
    max_chunks_ = total / kChunk + clusters;
    keys_in_.allocate(total, "sort keys");
    keys_out_.allocate(total, "sorted keys");
    ids_in_.allocate(total, "point ids");
    ids_out_.allocate(total, "sorted point ids");
    sizes_.allocate(clusters, "cluster sizes");
    offsets_.allocate(clusters, "cluster offsets");
    nchunks_.allocate(clusters, "chunks per cluster");
    chunk_start_.allocate(clusters, "chunk offsets");
    partial_.allocate(size_t(max_chunks_) * d, "chunk partial sums");
    wpartial_.allocate(max_chunks_, "chunk weights");
    size_t sort_bytes = 0, scan_bytes = 0;
    FLASH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, keys_in_.get(), keys_out_.get(),
                                                     ids_in_.get(), ids_out_.get(), total, 0, end_bit_, stream));
    FLASH_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(nullptr, scan_bytes, sizes_.get(), offsets_.get(), clusters, stream));
    temp_bytes_ = std::max(sort_bytes, scan_bytes);
    temp_.allocate(temp_bytes_, "sort/scan workspace");
}

void SortInverseUpdate::run(const void* x, DType dtype, const int32_t* labels, const float* weights, int64_t k_frozen,
                            float* centroids, float* counts, cudaStream_t stream) {
    const int64_t clusters = batch_ * k_;
    segment_sums(x, dtype, batch_ * n_, labels, weights, stream);
    finalize<<<unsigned(clusters), kThreads, 0, stream>>>(k_, d_, k_frozen, nchunks_.get(), chunk_start_.get(),
                                                          partial_.get(), wpartial_.get(), centroids, counts);
    FLASH_LAUNCH_CHECK("finalize");
}

void SortInverseUpdate::accumulate(const void* x, DType dtype, int64_t rows, const int32_t* labels,
                                   const float* weights, double* sums, double* wsums, unsigned long long* counts,
                                   cudaStream_t stream) {
    if (batch_ != 1 || rows > n_ || rows <= 0)
        throw std::logic_error("SortInverseUpdate::accumulate: one problem of at most n rows");
    segment_sums(x, dtype, rows, labels, weights, stream);
    accumulate_clusters<<<unsigned(k_), kThreads, 0, stream>>>(d_, nchunks_.get(), chunk_start_.get(), sizes_.get(),
                                                               partial_.get(), wpartial_.get(), sums, wsums, counts);
    FLASH_LAUNCH_CHECK("accumulate_clusters");
}

void SortInverseUpdate::segment_sums(const void* x, DType dtype, int64_t total, const int32_t* labels,
                                     const float* weights, cudaStream_t stream) {
    const int64_t clusters = batch_ * k_;
    FLASH_CUDA_CHECK(cudaMemsetAsync(sizes_.get(), 0, sizeof(uint32_t) * clusters, stream));
    make_keys<<<blocks_for(total, 256), 256, 0, stream>>>(labels, n_, k_, total, keys_in_.get(), ids_in_.get(),
                                                          sizes_.get());
    FLASH_LAUNCH_CHECK("make_keys");
    size_t bytes = temp_bytes_;
    FLASH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp_.get(), bytes, keys_in_.get(), keys_out_.get(), ids_in_.get(),
                                                     ids_out_.get(), total, 0, end_bit_, stream));
    bytes = temp_bytes_;
    FLASH_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp_.get(), bytes, sizes_.get(), offsets_.get(), clusters, stream));
    count_chunks<<<blocks_for(clusters, 256), 256, 0, stream>>>(sizes_.get(), clusters, nchunks_.get());
    FLASH_LAUNCH_CHECK("count_chunks");
    bytes = temp_bytes_;
    FLASH_CUDA_CHECK(
            cub::DeviceScan::ExclusiveSum(temp_.get(), bytes, nchunks_.get(), chunk_start_.get(), clusters, stream));
    const int64_t vec = 16 / dtype_size(dtype);
    const bool vectorised = d_ % vec == 0 && d_ / vec <= kThreads && (reinterpret_cast<uintptr_t>(x) & 15) == 0;
    if (vectorised && dtype == DType::F32)
        chunk_sums_vec<float><<<unsigned(max_chunks_), kThreads, 0, stream>>>(
                static_cast<const float*>(x), d_, ids_out_.get(), sizes_.get(), offsets_.get(), nchunks_.get(),
                chunk_start_.get(), clusters, weights, partial_.get(), wpartial_.get());
    else if (vectorised && dtype == DType::F16)
        chunk_sums_vec<__half><<<unsigned(max_chunks_), kThreads, 0, stream>>>(
                static_cast<const __half*>(x), d_, ids_out_.get(), sizes_.get(), offsets_.get(), nchunks_.get(),
                chunk_start_.get(), clusters, weights, partial_.get(), wpartial_.get());
    else if (vectorised)
        chunk_sums_vec<__nv_bfloat16><<<unsigned(max_chunks_), kThreads, 0, stream>>>(
                static_cast<const __nv_bfloat16*>(x), d_, ids_out_.get(), sizes_.get(), offsets_.get(),
                nchunks_.get(), chunk_start_.get(), clusters, weights, partial_.get(), wpartial_.get());
    else
        chunk_sums<<<unsigned(max_chunks_), kThreads, 0, stream>>>(x, dtype, d_, ids_out_.get(), sizes_.get(),
                                                                   offsets_.get(), nchunks_.get(), chunk_start_.get(),
                                                                   clusters, weights, partial_.get(), wpartial_.get());
    FLASH_LAUNCH_CHECK("chunk_sums");
}

} // namespace flash::cuda_engine
