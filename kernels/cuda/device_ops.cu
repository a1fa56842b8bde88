#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <mutex>
#include <random>
#include <set>
#include <stdexcept>
#include <vector>

#include "kernels/cuda/centroid_rows.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/device_ops.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/split_scale.cuh"

namespace flash::cuda_engine {

namespace {

constexpr int64_t kStatsChunk = 8192; // distances per partial sum

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

__global__ void prepare_centroids(const float* c, int64_t rows, CentroidCopies out, int64_t d) {
    const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    if (r < rows) prepare_centroid_row(c + r * d, r, d, out, threadIdx.x % 32);
}

// FAISS' split rule (flash::split_empty_clusters) for one problem per block, with the same
// std::mt19937(1234) stream, made parallel: the scan "first cj = 0, 1, ... with r < p[cj]" tests
// a whole round of draws in parallel and keeps the first success. The stream restarts from the
// same seed every iteration, so its first kTableDraws draws are constants, computed once on
// the host (split_draws, uploaded per device by prepare_split_draws): a round tests 1024 of
// them with no generator work (at k = 1024, n = 65536 a split takes ~1000 draws). Past the
// table the kernel seeds the generator, twists it past the table (624 threads at once) and goes
// on batch by batch. Same draws, same choices, same bits.
constexpr int kMtN = 624, kMtM = 397, kSplitThreads = 1024;
constexpr int kTableDraws = 64 * kMtN; // a whole number of the generator's batches
// The problem's cluster weights are kept in shared memory up to this many clusters (the
// rounds, the weight updates and the heavy-cluster count then touch no global memory).
constexpr int64_t kSplitSharedWeights = 16384;
__device__ float split_draws[kTableDraws];

__device__ uint32_t mt_temper(uint32_t y) {
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    y ^= y >> 18;
    return y;
}

__device__ uint32_t mt_mix(uint32_t cur, uint32_t next, uint32_t far) {
    const uint32_t y = (cur & 0x80000000u) | (next & 0x7fffffffu);
    return far ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
}

// One sequential twist of mt[0..624), computed in four dependency-free parallel phases.
__device__ __forceinline__ int twist_phase_start(int ph) { // 0, 227, 454, 623, 624
    return ph < 3 ? ph * (kMtN - kMtM) : (ph == 3 ? kMtN - 1 : kMtN);
}

__device__ void mt_twist(uint32_t* mt) {
    for (int ph = 0; ph < 4; ph++) {
        const int i = twist_phase_start(ph) + int(threadIdx.x);
        uint32_t v = 0;
        const bool active = i < twist_phase_start(ph + 1);
        if (active) v = mt_mix(mt[i], mt[(i + 1) % kMtN], mt[(i + kMtM) % kMtN]);
        __syncthreads();
        if (active) mt[i] = v;
        __syncthreads();
    }
}

// The values v of the calling block's threads whose flag is set, in thread order, written to
// out; returns their count to every thread. blockDim.x: a multiple of 32, at most kSplitThreads.
__device__ int compact_in_order(bool flag, int64_t v, int64_t* out) {
    __shared__ int warp_counts[kSplitThreads / 32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const unsigned mask = __ballot_sync(0xffffffffu, flag);
    if (lane == 0) warp_counts[warp] = __popc(mask);
    __syncthreads();
    int before = 0, total = 0;
    for (int w = 0; w < int(blockDim.x / 32); w++) {
        before += w < warp ? warp_counts[w] : 0;
        total += warp_counts[w];
    }
    if (flag) out[before + __popc(mask & ((1u << lane) - 1u))] = v;
    __syncthreads();
    return total;
}

// FAISS' imbalance factor k * sum(size^2) / sum(size)^2 of the block's partial sums h1 (sizes)
// and h2 (their squares), for thread 0 (sh: 64 doubles). Integer sizes: the sums are exact, the
// same in any order; warp shuffles and one shared-memory round (the split kernel's 1024 threads
// would take ten with block_sum).
__device__ double imbalance_factor(double h1, double h2, int64_t k, double* sh) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    for (int off = 16; off > 0; off >>= 1) {
        h1 += __shfl_xor_sync(0xffffffffu, h1, off);
        h2 += __shfl_xor_sync(0xffffffffu, h2, off);
    }
    if (lane == 0) sh[warp] = h1, sh[32 + warp] = h2;
    __syncthreads();
    if (warp == 0) {
        h1 = lane < warps ? sh[lane] : 0.0;
        h2 = lane < warps ? sh[32 + lane] : 0.0;
        for (int off = 16; off > 0; off >>= 1) {
            h1 += __shfl_xor_sync(0xffffffffu, h1, off);
            h2 += __shfl_xor_sync(0xffffffffu, h2, off);
        }
    }
    return h2 * double(k) / (h1 * h1);
}

// Also the iteration's stats row (see StatsHistory): block b writes problem b's entries, the
// last block to finish moves the cursor on.
__global__ void __launch_bounds__(kSplitThreads)
    split_empty(float* centroids, float* counts, int64_t k, int64_t d, int64_t k_frozen, int64_t n,
                const uint32_t* sizes, StatsHistory stats, CentroidCopies prepared) {
    pdl_start(); // (launched with launch_dependent)
    const int64_t b = blockIdx.x, batch = gridDim.x;
    float* cb = centroids + b * k * d + k_frozen * d;
    float* hb = counts + b * k + k_frozen;
    const int64_t kk = k - k_frozen;
    extern __shared__ float shared_weights[];
    const bool staged = kk <= kSplitSharedWeights;
    float* hs = staged ? shared_weights : hb; // the weights the split reads and changes
    // Staged: also each cluster's acceptance threshold p = (w - 1) / (n - kk) as FAISS rounds it
    // (a double division, to float), kept up to date for the two clusters a split changes: a
    // round then compares with it instead of dividing for every candidate.
    float* ps = staged ? shared_weights + (kk + 3) / 4 * 4 : nullptr;
    const float denom = (float)(n - kk);
    auto threshold = [&](float w) -> float { return (w - 1.0) / denom; };
    __shared__ int heavy_count;               // clusters of weight above 1
    if (threadIdx.x == 0) heavy_count = 0;
    // Every load first, one memory latency instead of four: the stats cursor and the objective
    // (thread 0 writes the row), the sizes (imbalance) and the weighted sizes of the clusters
    // that may split.
    const unsigned row = threadIdx.x == 0 ? *reinterpret_cast<volatile unsigned*>(stats.cursor) : 0u;
    const double obj = threadIdx.x == 0 ? stats.obj[b] : 0.0;
    double h1 = 0, h2 = 0;
    int empty = 0, heavy = 0;
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
        const double h = sizes[b * k + c];
        const float w = c >= k_frozen ? hb[c - k_frozen] : 1.f; // (frozen: neither empty nor heavy)
        if (staged && c >= k_frozen) hs[c - k_frozen] = w, ps[c - k_frozen] = threshold(w);
        h1 += h;
        h2 += h * h;
        empty |= w == 0.f;
        heavy += w > 1.f;
    }
    double* obj_out = reinterpret_cast<double*>(stats.rows + size_t(row) * stats.row_bytes); // (thread 0)
    double* imbalance = obj_out + batch;
    int* nsplit_out = reinterpret_cast<int*>(imbalance + batch);
    auto finish_row = [&](int nsplit) { // thread 0, once per block
        nsplit_out[b] = nsplit;
        obj_out[b] = obj;
        if (batch == 1) { // the only block: no other reads the cursor (no fence, no atomic)
            stats.cursor[0] = row + 1;
            return;
        }
        __threadfence();
        if (atomicAdd(stats.cursor + 1, 1u) == unsigned(batch) - 1) { // every block has read the row
            stats.cursor[1] = 0;
            stats.cursor[0] = row + 1;
        }
    };
    {
        __shared__ double sh[64];
        const double f = imbalance_factor(h1, h2, k, sh); // (a block barrier: heavy_count is set)
        if (threadIdx.x == 0) imbalance[b] = f;
    }
    if (heavy) atomicAdd(&heavy_count, heavy);
    __shared__ uint32_t mt[kMtN];
    __shared__ float draws[kMtN];
    // A round's first success, (index << 32 | its cluster's weight bits): three of them in
    // rotation, so that a round needs one barrier (see choose).
    constexpr unsigned long long kNone = ~0ull;
    __shared__ unsigned long long first[3];
    __shared__ int64_t heaviest;
    __shared__ float heaviest_w;
    if (threadIdx.x < 3) first[threadIdx.x] = kNone;
    const int any_empty = __syncthreads_or(empty); // (also: the weights staged, heavy_count summed)
    if (!any_empty) {
        if (threadIdx.x == 0) finish_row(0);
        return;
    }
    int heavy_now = heavy_count; // kept by every thread from here (all compute the same updates)
    int64_t consumed = 0;        // draws of this iteration's stream used so far
    int used = kMtN;             // past the table: draws used from the current batch
    bool seeded = false;         // past the table: the generator positioned there
    int nsplit = 0, slot = 0;
    // The last split's two clusters and their new weights: thread 0 stores them after the
    // split, and the next split's first round may test those clusters before a barrier has made
    // the stores visible, so every thread uses these instead.
    int64_t last_i = -1, last_j = -1;
    float last_wi = 0.f, last_wj = 0.f;
    // FAISS' choice for empty cluster ci (all threads of the block): the cluster cj it splits
    // (the draws' scan), with the weights updated; the caller writes the rows.
    // No thread reads a weight that thread 0 may be storing: the split's weight comes with the
    // round's first success (or the heaviest cluster), and the last split's from registers.
    auto choose = [&](int64_t ci) -> int64_t {
        int64_t cj = -1, start = 0;
        float old = 0.f;      // cj's weight
        if (heavy_now == 0) { // FAISS would loop forever: take the heaviest cluster
            if (threadIdx.x == 0) {
                int64_t h = 0;
                for (int64_t c = 1; c < kk; c++)
                    if (hs[c] > hs[h]) h = c;
                heaviest = h, heaviest_w = hs[h];
            }
            __syncthreads();
            cj = heaviest, old = heaviest_w;
            __syncthreads(); // (heaviest is rewritten by the next such choice)
        }
        while (cj < 0) {
            // A round: candidate (start + i) % kk against draw consumed + i, for i < R. One
            // barrier: the round's slot was reset two rounds ago (after a barrier that every
            // thread passed after reading it), and this one's is reset in two rounds.
            const bool table = consumed < kTableDraws;
            if (!table && used == kMtN) {
                if (!seeded) { // std::mt19937 seeding is a sequential recurrence; then past the table
                    if (threadIdx.x == 0) {
                        mt[0] = 1234u;
                        for (int i = 1; i < kMtN; i++)
                            mt[i] = 1812433253u * (mt[i - 1] ^ (mt[i - 1] >> 30)) + uint32_t(i);
                    }
                    __syncthreads();
                    for (int i = 0; i < kTableDraws / kMtN; i++) mt_twist(mt);
                    seeded = true;
                }
                mt_twist(mt);
                if (threadIdx.x < kMtN) draws[threadIdx.x] = float(mt_temper(mt[threadIdx.x])) * 0x1p-32f;
                __syncthreads();
                used = 0;
            }
            const int R = table ? int(min(int64_t(blockDim.x), kTableDraws - consumed)) : kMtN - used;
            if (int(threadIdx.x) < R) {
                const float r = table ? split_draws[consumed + threadIdx.x] : draws[used + threadIdx.x];
                int64_t c = start + threadIdx.x; // (start < kk)
                if (kk >= int64_t(blockDim.x))
                    c -= c >= kk ? kk : 0;
                else
                    c = int(c) % int(kk);
                const bool last = c == last_i || c == last_j;
                const float w_last = c == last_i ? last_wi : last_wj;
                const float p = last ? threshold(w_last) : (staged ? ps[c] : threshold(hs[c]));
                if (r < p)
                    atomicMin(&first[slot], (uint64_t(threadIdx.x) << 32) | __float_as_uint(last ? w_last : hs[c]));
            }
            __syncthreads();
            const unsigned long long key = first[slot];
            if (threadIdx.x == 0) first[(slot + 2) % 3] = kNone;
            slot = (slot + 1) % 3;
            const int f = key == kNone ? R : int(key >> 32);
            const int taken = f < R ? f + 1 : R;
            if (f < R)
                cj = (start + f) % kk, old = __uint_as_float(uint32_t(key));
            else
                start = (start + R) % kk;
            consumed += taken;
            if (!table) used += taken;
        }
        // FAISS' weights, computed by every thread; thread 0 stores them. The heavy clusters
        // counted on.
        const float wi = old / 2, wj = old - wi;
        last_i = ci, last_j = cj, last_wi = wi, last_wj = wj;
        heavy_now += int(wj > 1.f) - int(old > 1.f) + int(wi > 1.f);
        if (threadIdx.x == 0) {
            hs[ci] = wi, hs[cj] = wj;
            if (staged) ps[ci] = threshold(wi), ps[cj] = threshold(wj);
        }
        nsplit++;
        return cj;
    };
    // The empty clusters, blockDim.x candidates at a time, listed in order and split one by
    // one (a split only fills the empty cluster and halves a non-empty one, so the list of
    // the later candidates stays valid). Thread t writes element t of both rows (the same
    // thread for every split, so a row split again is read back in program order); the rows a
    // group of candidates changed are prepared once, after its splits, a warp per row.
    __shared__ int64_t empties[kSplitThreads];
    __shared__ int changed[2 * kSplitThreads];
    const double eps = 1 / 1024.;
    for (int64_t base = 0; base < kk; base += blockDim.x) {
        const int64_t c = base + threadIdx.x;
        const int nempty = compact_in_order(c < kk && hs[c] == 0.f, c, empties);
        for (int q = 0; q < nempty; q++) {
            const int64_t ci = empties[q], cj = choose(ci);
            for (int64_t j = threadIdx.x; j < d; j += blockDim.x) { // FAISS' two rows from cj's
                const float v = cb[cj * d + j];
                cb[ci * d + j] = j % 2 == 0 ? float(v * (1 + eps)) : float(v * (1 - eps));
                cb[cj * d + j] = j % 2 == 0 ? float(v * (1 - eps)) : float(v * (1 + eps));
            }
            if (threadIdx.x == 0) changed[2 * q] = int(ci), changed[2 * q + 1] = int(cj);
        }
        __syncthreads(); // the rows and the list of changed ones written
        if (prepared.norms) {
            const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
            for (int e = warp; e < 2 * nempty; e += blockDim.x / 32) { // the last entry of each row
                const int r = changed[e];
                bool later = false;
                for (int e2 = e + 1 + lane; e2 < 2 * nempty; e2 += 32) later |= changed[e2] == r;
                if (__any_sync(0xffffffffu, later)) continue;
                const int64_t row = b * k + k_frozen + r;
                prepare_centroid_row(centroids + row * d, row, d, prepared, lane);
            }
        }
        __syncthreads(); // empties and changed are rewritten for the next candidates
    }
    if (staged)
        for (int64_t c = threadIdx.x; c < kk; c += blockDim.x) hb[c] = hs[c];
    if (threadIdx.x == 0) finish_row(nsplit);
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

// Deterministic sums in double: fixed assignment of elements to threads, fixed tree order.
__device__ double block_sum(double v, double* sh) {
    sh[threadIdx.x] = v;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) sh[threadIdx.x] += sh[threadIdx.x + w];
        __syncthreads();
    }
    const double r = sh[0];
    __syncthreads();
    return r;
}

// Sum of v[i] for i = i0 + threadIdx.x, then blockDim.x further, ... below i1, in that order,
// with eight loads in flight (one memory latency per eight values, not per value).
__device__ double strided_sum(const float* v, int64_t i0, int64_t i1) {
    constexpr int U = 8;
    const int64_t step = blockDim.x;
    double o = 0;
    int64_t i = i0 + threadIdx.x;
    for (; i + (U - 1) * step < i1; i += U * step) {
        float x[U];
#pragma unroll
        for (int u = 0; u < U; u++) x[u] = v[i + u * step];
#pragma unroll
        for (int u = 0; u < U; u++) o += x[u];
    }
    for (; i < i1; i += step) o += v[i];
    return o;
}

// Block (chunk, b): sum of kStatsChunk distances of problem b into partial[b * nchunks + c];
// the last block of problem b to finish (a counter per problem, put back to zero) adds the
// partials in chunk order and writes the objective.
__global__ void objective_partials(const float* dist, int64_t n, int64_t nchunks, double* partial,
                                   unsigned* finished, double* obj) {
    __shared__ double sh[256];
    __shared__ bool last;
    const int64_t b = blockIdx.x / nchunks, c = blockIdx.x % nchunks;
    const int64_t i0 = c * kStatsChunk, i1 = min(n, i0 + kStatsChunk);
    const double o = block_sum(strided_sum(dist + b * n, i0, i1), sh);
    if (threadIdx.x == 0) {
        partial[b * nchunks + c] = o;
        __threadfence();
        last = atomicAdd(finished + b, 1u) == unsigned(nchunks - 1);
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    double total = 0;
    for (int64_t q = threadIdx.x; q < nchunks; q += blockDim.x) total += __ldcg(partial + b * nchunks + q);
    total = block_sum(total, sh);
    if (threadIdx.x == 0) {
        obj[b] = total;
        finished[b] = 0; // ready for the next launch
    }
}

// Block b, n <= kStatsChunk: one block, no counter. The partial is summed exactly as
// objective_partials sums it, and the final tree over [partial, 0, 0, ...] returns it
// unchanged, as the last block there does: the same bits.
__global__ void objective_one_chunk(const float* dist, int64_t n, double* obj) {
    __shared__ double sh[256];
    const int64_t b = blockIdx.x;
    const double o = block_sum(strided_sum(dist + b * n, 0, n), sh);
    if (threadIdx.x == 0) obj[b] = o;
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

// Row r of problem r / per_problem: v scaled by 2^split_scale_exponent(max_abs[problem])
// (exact), then fp16(v) in the row's first d columns (TF32 mode's scaled copy).
__global__ void scale_to_half(const float* src, int64_t rows, int64_t per_problem, int64_t d, const float* max_abs,
                              __half* dst) {
    const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (g >= rows * d) return;
    dst[g] = __float2half_rn(ldexpf(src[g], split_scale_exponent(max_abs[g / d / per_problem])));
}

// One warp per row r of problem r / per_problem: v scaled as above, hi = fp16(v) in the row's
// first width columns and lo = fp16(v - hi) in the next width (columns past d zero). v - hi is
// exact in fp32, so the row's residual ||v - hi|| (back in the unscaled units) is measured, not
// bounded: per row (res_rows) and / or its problem's largest (res_max, zeroed first: non-negative
// floats order as their bit patterns, so an integer atomicMax is exact). Overflow or NaN gives
// an infinite or NaN residual, which sends the points concerned past the filter.
__global__ void split_rows(const float* src, int64_t rows, int64_t per_problem, int64_t d, int64_t width,
                           const float* max_abs, __half* dst, float* res_rows, float* res_max) {
    const int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const int e = split_scale_exponent(max_abs[r / per_problem]);
    __half* row = dst + r * 2 * width;
    float s = 0.f;
    for (int64_t j = lane; j < width; j += 32) {
        const float v = j < d ? ldexpf(src[r * d + j], e) : 0.f;
        const __half hi = __float2half_rn(v);
        const float res = v - __half2float(hi);
        row[j] = hi;
        row[width + j] = __float2half_rn(res);
        s = fmaf(res, res, s);
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0) {
        const float norm = ldexpf(sqrtf(s), -e);
        if (res_rows) res_rows[r] = norm;
        if (res_max) atomicMax(reinterpret_cast<int*>(res_max + r / per_problem), __float_as_int(norm));
    }
}

// out[b * k + j] = norms[b * k + j] * 2^(e(xmax[b]) + e(cmax[b])): the penalties in the units of
// the scaled products.
__global__ void scaled_norms(const float* norms, int64_t batch, int64_t k, const float* xmax, const float* cmax,
                             float* out) {
    const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (g >= batch * k) return;
    const int64_t b = g / k;
    out[g] = ldexpf(norms[g], split_scale_exponent(xmax[b]) + split_scale_exponent(cmax[b]));
}

// out[b] = max |x| over problem b's count values (out zeroed first; non-negative floats order
// as their bit patterns, so an integer atomicMax is exact and order-free).
__global__ void max_abs(const float* src, int64_t count, int blocks_per_problem, float* out) {
    const int64_t b = blockIdx.x / blocks_per_problem;
    const float* v = src + b * count;
    float m = 0.f;
    for (int64_t i = (blockIdx.x % blocks_per_problem) * int64_t(blockDim.x) + threadIdx.x; i < count;
         i += int64_t(blocks_per_problem) * blockDim.x)
        m = fmaxf(m, fabsf(v[i]));
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (threadIdx.x % 32 == 0) atomicMax(reinterpret_cast<int*>(out + b), __float_as_int(m));
}

__global__ void max_norm(const float* norms, int64_t k, float* cmax) {
    __shared__ float red[32];
    float m = 0.f;
    for (int64_t j = threadIdx.x; j < k; j += blockDim.x) m = fmaxf(m, norms[blockIdx.x * k + j]);
    for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
    if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
        for (int off = 16; off > 0; off >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, off));
        if (threadIdx.x == 0) cmax[blockIdx.x] = sqrtf(m);
    }
}

void launch_split_fp32(const float* src, int64_t batch, int64_t rows, int64_t d, int64_t width, const float* max_abs,
                       void* dst, float* res_rows, float* res_max, cudaStream_t s) {
    if (res_max) FLASH_CUDA_CHECK(cudaMemsetAsync(res_max, 0, sizeof(float) * batch, s));
    if (batch * rows == 0) return;
    split_rows<<<warp_blocks(batch * rows), 256, 0, s>>>(src, batch * rows, rows, d, width, max_abs,
                                                         static_cast<__half*>(dst), res_rows, res_max);
    FLASH_LAUNCH_CHECK("split_rows");
}

void launch_scale_to_half(const float* src, int64_t batch, int64_t rows, int64_t d, const float* max_abs, void* dst,
                          cudaStream_t s) {
    const int64_t total = batch * rows * d;
    if (total == 0) return;
    scale_to_half<<<unsigned((total + 255) / 256), 256, 0, s>>>(src, batch * rows, rows, d, max_abs,
                                                                static_cast<__half*>(dst));
    FLASH_LAUNCH_CHECK("scale_to_half");
}

void launch_scaled_norms(const float* norms, int64_t batch, int64_t k, const float* xmax, const float* cmax, float* out,
                         cudaStream_t s) {
    if (batch * k == 0) return;
    scaled_norms<<<unsigned((batch * k + 255) / 256), 256, 0, s>>>(norms, batch, k, xmax, cmax, out);
    FLASH_LAUNCH_CHECK("scaled_norms");
}

void launch_max_abs(const float* src, int64_t batch, int64_t count, float* out, cudaStream_t s) {
    FLASH_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float) * batch, s));
    if (batch * count == 0) return;
    // Enough blocks to fill the chip (64 per problem left one problem's 512 MB at 0.93 ms).
    const int64_t most = std::max<int64_t>(1, 2048 / batch);
    const int per = int(std::max<int64_t>(1, std::min<int64_t>(most, (count + 255) / 256)));
    max_abs<<<unsigned(batch * per), 256, 0, s>>>(src, count, per, out);
    FLASH_LAUNCH_CHECK("max_abs");
}

void launch_max_norm(const float* norms, int64_t batch, int64_t k, float* cmax, cudaStream_t s) {
    max_norm<<<unsigned(batch), 256, 0, s>>>(norms, k, cmax);
    FLASH_LAUNCH_CHECK("max_norm");
}

void launch_prepare_centroids(const float* centroids, int64_t rows, int64_t d, DType dtype, void* lowp, float* norms,
                              cudaStream_t s) {
    prepare_centroids<<<warp_blocks(rows), 256, 0, s>>>(centroids, rows, CentroidCopies{dtype, lowp, norms}, d);
    FLASH_LAUNCH_CHECK("prepare_centroids");
}

namespace {
std::mutex split_draws_mu;
std::set<int> split_draws_devices; // devices whose split_draws are uploaded

bool split_draws_ready(int dev) {
    std::lock_guard<std::mutex> lock(split_draws_mu);
    return split_draws_devices.count(dev) > 0;
}
} // namespace

void prepare_split_draws() {
    int dev = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    if (split_draws_ready(dev)) return;
    static const std::vector<float> table = [] {
        std::vector<float> t(kTableDraws);
        std::mt19937 rng(1234);
        for (auto& r : t) r = float(rng()) * 0x1p-32f; // rng() / float(rng.max()), as the CPU engine draws
        return t;
    }();
    FLASH_CUDA_CHECK(cudaMemcpyToSymbol(split_draws, table.data(), sizeof(float) * kTableDraws));
    std::lock_guard<std::mutex> lock(split_draws_mu);
    split_draws_devices.insert(dev);
}

void launch_split_empty_clusters(float* centroids, float* counts, int64_t batch, int64_t k, int64_t d, int64_t k_frozen,
                                 int64_t n, const uint32_t* sizes, const StatsHistory& stats, cudaStream_t s,
                                 const CentroidCopies& prepared) {
    int dev = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    if (!split_draws_ready(dev)) // (not from inside a graph capture: run_lloyd prepares them first)
        throw std::logic_error("faiss-flash: prepare_split_draws() not called on this device");
    const int64_t kk = k - k_frozen;
    const size_t smem = kk <= kSplitSharedWeights ? 2 * sizeof(float) * size_t((kk + 3) / 4 * 4) : 0;
    set_max_dynamic_smem(reinterpret_cast<const void*>(split_empty), smem);
    launch_dependent(split_empty, unsigned(batch), kSplitThreads, smem, s, centroids, counts, k, d, k_frozen, n, sizes,
                     stats, prepared);
    FLASH_LAUNCH_CHECK("split_empty");
}

void launch_post_process(float* centroids, int64_t rows, int64_t d, bool spherical, bool int_centroids,
                         cudaStream_t s) {
    if (!spherical && !int_centroids) return;
    post_process<<<warp_blocks(rows), 256, 0, s>>>(centroids, rows, d, spherical, int_centroids);
    FLASH_LAUNCH_CHECK("post_process");
}

// One finished-chunk counter per problem (two per double), then the partials (batch * nchunks
// doubles). The counters come first so that they stay in place for every n up to the size the
// workspace was made for: the streamed path sums pieces of different lengths in one workspace
// (with the counters after the partials, a shorter piece's counter landed on a partial sum of
// the previous piece and its objective was never written).
int64_t stats_workspace_size(int64_t batch, int64_t n) {
    return (batch + 1) / 2 + batch * ((n + kStatsChunk - 1) / kStatsChunk);
}

void launch_objective(const float* dist, int64_t batch, int64_t n, double* workspace, double* obj, cudaStream_t s) {
    const int64_t nchunks = (n + kStatsChunk - 1) / kStatsChunk;
    if (nchunks == 1) {
        objective_one_chunk<<<unsigned(batch), 256, 0, s>>>(dist, n, obj);
        FLASH_LAUNCH_CHECK("objective_one_chunk");
        return;
    }
    unsigned* finished = reinterpret_cast<unsigned*>(workspace);
    objective_partials<<<unsigned(nchunks * batch), 256, 0, s>>>(dist, n, nchunks, workspace + (batch + 1) / 2,
                                                                  finished, obj);
    FLASH_LAUNCH_CHECK("objective_partials");
}

void launch_check_finite(const void* x, DType dtype, int64_t count, int* flag, cudaStream_t s) {
    check_finite<<<1024, 256, 0, s>>>(x, dtype, count, flag);
    FLASH_LAUNCH_CHECK("check_finite");
}

} // namespace flash::cuda_engine
