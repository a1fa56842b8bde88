// FlashAssign for fp32 inputs with fp32 FMA products: exact fp32 arithmetic (no TF32), so
// every assignment is the fp32 argmin up to the rounding of one dot product.
//
// A block owns BM = 128 points and streams centroid tiles of BN = 128 through shared memory in
// BK = 8 slices (k-major, so each thread reads 8 consecutive points / centroids as two float4);
// every thread accumulates an 8 x 8 block of dot products in registers (each one a sequential
// FMA chain over the dimensions), then folds it into a running (value, index) minimum per
// point. The n x k matrix never leaves the chip. The same tiles re-check the points the split
// path's certificate lists (recheck_fp32_kernel), with the centroids cut into chunks.
#include <algorithm>
#include <cstdint>

#include "kernels/cuda/argmin.cuh"
#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"

namespace flash::cuda_engine {

namespace {

constexpr int TM = 8, TN = 8, BM = 16 * TM, BN = 16 * TN, BK = 8, THREADS = 256;

// The ROWS x BK slice of a row-major (nrows, d) fp32 matrix at (r0, k0), PER elements per
// thread: fetched into registers first (so the next slice's loads overlap this slice's
// products), then stored k-major into shared memory. rows: when not null, slice row r is
// row rows[r] of g (-1 = none).
template <int ROWS>
struct Slice {
    static constexpr int PER = ROWS * BK / THREADS;
    float v[PER];
    __device__ __forceinline__ void fetch(const float* g, int64_t nrows, int64_t d, int64_t r0, int64_t k0,
                                          const int64_t* rows) {
#pragma unroll
        for (int q = 0; q < PER; q++) {
            const int e = threadIdx.x + q * THREADS, r = e / BK, kk = e % BK;
            const int64_t gr = rows ? rows[r] : r0 + r, gk = k0 + kk;
            v[q] = (gr >= 0 && gr < nrows && gk < d) ? g[gr * d + gk] : 0.f;
        }
    }
    __device__ __forceinline__ void store(float (*s)[ROWS + 4]) const {
#pragma unroll
        for (int q = 0; q < PER; q++) {
            const int e = threadIdx.x + q * THREADS;
            s[e % BK][e / BK] = v[q];
        }
    }
};

// (value, index) as one 64-bit key whose unsigned order is before()'s: the value's bits mapped to
// an order-preserving unsigned integer above, the index below. The minimum of keys is the same
// whatever order they arrive in, so the re-check's partial results merge deterministically.
__device__ __forceinline__ unsigned long long order_key(float v, int i) {
    const uint32_t u = __float_as_uint(v);
    const uint32_t o = (u & 0x80000000u) ? ~u : (u | 0x80000000u);
    return (static_cast<unsigned long long>(o) << 32) | uint32_t(i);
}

// Centroid tiles [t0, t1) against BM points: rows m0 .. m0 + BM of problem b, or (GATHER) entries
// m0 .. m0 + BM of its re-check list. Not GATHER: labels and distances written. GATHER: each
// point's best key merged into a.recheck_best at its list entry (other blocks cover the other
// centroid chunks; finish_recheck turns the merged keys into labels).
template <bool GATHER>
__device__ __forceinline__ void assign_fp32_tile(const AssignArgs& a, int64_t b, int64_t m0, int64_t t0, int64_t t1,
                                                 int64_t count) {
    __shared__ __align__(16) float As[2][BK][BM + 4];
    __shared__ __align__(16) float Bs[2][BK][BN + 4];
    __shared__ int64_t rows[BM];

    if (GATHER) {
        __syncthreads(); // the previous unit's threads are done with the tiles and rows
        if (threadIdx.x < BM)
            rows[threadIdx.x] = m0 + threadIdx.x < count ? int64_t(a.recheck_list[b * a.n + m0 + threadIdx.x]) : -1;
        __syncthreads();
    }
    const int64_t n = a.n, d = a.d, k = a.k;
    const float* x = static_cast<const float*>(a.x) + b * n * d;
    const float* c = static_cast<const float*>(a.centroids) + b * k * d;
    const float* cn = a.cnorm + b * k;
    const bool l2 = a.metric == Metric::L2;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16; // rows ty*TM.., centroids tx*TN..
    const int64_t* rp = GATHER ? rows : nullptr;

    Best best[TM];
#pragma unroll
    for (int i = 0; i < TM; i++) best[i] = best_init();

    // Steps run over (centroid tile, k-slice) pairs; slice s + 1 is fetched while s is used.
    const int64_t nk = (d + BK - 1) / BK, steps = nk * (t1 - t0);
    Slice<BM> sa;
    Slice<BN> sb;
    sa.fetch(x, n, d, m0, 0, rp);
    sb.fetch(c, k, d, t0 * BN, 0, nullptr);
    sa.store(As[0]);
    sb.store(Bs[0]);
    __syncthreads();
    float acc[TM][TN] = {};
    for (int64_t s = 0; s < steps; s++) {
        const int buf = int(s & 1);
        if (s + 1 < steps) {
            const int64_t k1 = ((s + 1) % nk) * BK;
            sa.fetch(x, n, d, m0, k1, rp);
            sb.fetch(c, k, d, (t0 + (s + 1) / nk) * BN, k1, nullptr);
        }
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * TM]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * TM + 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * TN]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * TN + 4]);
            const float ar[TM] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float br[TN] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
        }
        if (s % nk == nk - 1) { // last slice of a centroid tile: fold it into the minimum
            const int64_t n0 = (t0 + s / nk) * BN;
#pragma unroll
            for (int j = 0; j < TN; j++) {
                const int64_t col = n0 + tx * TN + j;
                if (col < k) {
                    const float cnv = cn[col];
#pragma unroll
                    for (int i = 0; i < TM; i++) {
                        const float v = l2 ? cnv - 2.f * acc[i][j] : -acc[i][j];
                        if (before(v, int(col), best[i])) best[i] = {v, int(col)};
                    }
                }
            }
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = 0.f;
        }
        if (s + 1 < steps) {
            sa.store(As[buf ^ 1]); // buffer buf ^ 1 was last read in step s - 1, before its barrier
            sb.store(Bs[buf ^ 1]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; i++) {
        const Best r = merge_lanes<16>(best[i]);
        if (tx != 0) continue;
        if constexpr (GATHER) {
            if (m0 + ty * TM + i < count) atomicMin(a.recheck_best + b * n + m0 + ty * TM + i, order_key(r.v, r.i));
        } else if (m0 + ty * TM + i < n) {
            const int64_t o = b * n + m0 + ty * TM + i;
            a.labels[o] = r.i;
            a.distances[o] = l2 ? fmaxf(a.xnorm[o] + r.v, 0.f) : -r.v;
        }
    }
}

__global__ void __launch_bounds__(THREADS) assign_fp32_kernel(AssignArgs a, int64_t tiles_per_problem) {
    const int64_t b = blockIdx.x / tiles_per_problem;
    assign_fp32_tile<false>(a, b, (blockIdx.x % tiles_per_problem) * BM, 0, (a.k + BN - 1) / BN, 0);
}

// The re-check: units (problem, list tile, centroid chunk) taken in turn by a grid sized to the
// chip (the list lengths are only known on the device). Each problem's units follow the
// previous problem's in a virtual sequence that block u takes every gridDim.x-th unit of, so
// only live units are visited (a few blocks' worth when 0.03% of the points are listed: 0.1
// ms went on visiting and skipping every possible unit). Splitting the centroids into chunks
// keeps every SM busy when few points are listed, and two blocks per SM (128 registers;
// ptxas spills a few bytes outside the inner loop) hide more latency than one (H100, N=1M
// K=1024, 1.3% of the points listed: 246 -> 155 us).
__global__ void __launch_bounds__(THREADS, 2)
    recheck_fp32_kernel(AssignArgs a, int64_t chunks, int64_t tiles_per_chunk) {
    const int64_t ntiles = (a.k + BN - 1) / BN;
    int64_t first = 0; // the problem's first unit in the sequence
    for (int64_t b = 0; b < a.batch; b++) {
        const int64_t count = a.recheck_count[b], units = (count + BM - 1) / BM * chunks;
        const int64_t skip = (blockIdx.x + gridDim.x - first % gridDim.x) % gridDim.x; // to this block's next unit
        for (int64_t u = skip; u < units; u += gridDim.x) {
            const int64_t t0 = (u % chunks) * tiles_per_chunk;
            assign_fp32_tile<true>(a, b, (u / chunks) * BM, t0, min(t0 + tiles_per_chunk, ntiles), count);
        }
        first += units;
    }
}

// The merged keys of the listed points become their labels (their distances come from the fp32
// pass that follows in launch_assign); each key is reset for the next re-check
// (a.recheck_best is all ones between launches).
__global__ void finish_recheck(AssignArgs a) {
    const int64_t total = a.batch * a.n;
    for (int64_t e = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
        const int64_t b = e / a.n, i = e % a.n;
        if (i >= int64_t(a.recheck_count[b])) continue;
        a.labels[b * a.n + a.recheck_list[e]] = int(uint32_t(a.recheck_best[e])); // the key's index half
        a.recheck_best[e] = ~0ull;
    }
}

// The fp32 dot product behind every distance this file reports, in one fixed order, so that a
// point's distance has the same bits whichever pass labelled it (the filter's candidates or the
// split products): element j joins chain (j / 4) % 8, an FMA chain in increasing j, and the
// eight chains are added as a butterfly, pairs xor 4, then xor 2, then xor 1: a point is served
// by a group of G = 8 lanes, a chain each (four points per warp: fewer shuffles and index
// instructions per product than a warp per point, and more points' loads in flight; four
// lanes with two chains each were slower, bench/RESULTS.md run 41). VEC: d % 4 == 0 and 16-byte
// aligned rows (float4 loads), else scalar loads in the same order. The tensor-core products are
// accurate to about 2^-17 (exact split) or 2^-10 (TF32 mode) of ||x|| ||c||, with a bias from
// the tensor cores' truncating accumulation, which cancellation in ||x||^2 + ||c||^2 - 2 x.c
// would expose in the reported distance and the objective: hence fp32 FMA here.
struct RowDot {
    static constexpr int G = 8; // lanes per point

    // Row r's 4-element block from column j (lane t's of stripe u: j = 32 u + 4 t), zeros past d.
    template <bool VEC>
    __device__ __forceinline__ static float4 block(const float* r, int64_t d, int64_t j) {
        if constexpr (VEC) {
            return j < d ? *reinterpret_cast<const float4*>(r + j) : make_float4(0.f, 0.f, 0.f, 0.f);
        } else {
            return make_float4(j < d ? r[j] : 0.f, j + 1 < d ? r[j + 1] : 0.f, j + 2 < d ? r[j + 2] : 0.f,
                               j + 3 < d ? r[j + 3] : 0.f);
        }
    }
    // s += x.c over the block's columns below d, in increasing column.
    __device__ __forceinline__ static float fma_block(float4 x, float4 c, float s, int64_t d, int64_t j) {
        if (j < d) s = fmaf(x.x, c.x, s);
        if (j + 1 < d) s = fmaf(x.y, c.y, s);
        if (j + 2 < d) s = fmaf(x.z, c.z, s);
        if (j + 3 < d) s = fmaf(x.w, c.w, s);
        return s;
    }
    // The chains' butterfly over the group's eight lanes (all 32 lanes of the warp take part).
    __device__ __forceinline__ static float group_sum(float v) {
#pragma unroll
        for (int off = G / 2; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
        return v;
    }
};

// The distance of each point to its assigned centroid (the split path and TF32 mode; any d).
template <bool VEC>
__global__ void exact_distances(AssignArgs a) {
    using R = RowDot;
    constexpr int G = R::G;
    const int64_t total = a.batch * a.n, g = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / G;
    if (g - (threadIdx.x % 32) / G >= total) return; // (the warp's first point: whole warps leave)
    const bool live = g < total;
    const int t = threadIdx.x % G;
    const int64_t p = live ? g : total - 1, b = p / a.n, d = a.d;
    const int64_t l = a.labels[p];
    const float* x = static_cast<const float*>(a.x) + p * d;
    const float* c = static_cast<const float*>(a.centroids) + (b * a.k + l) * d;
    float s = 0.f;
    for (int64_t j0 = 0; j0 < d; j0 += 32) {
        const int64_t j = j0 + 4 * t;
        s = R::fma_block(R::block<VEC>(x, d, j), R::block<VEC>(c, d, j), s, d, j);
    }
    s = R::group_sum(s);
    if (live && t == 0)
        a.distances[p] = a.metric == Metric::L2 ? fmaxf(a.xnorm[p] + (a.cnorm[b * a.k + l] - 2.f * s), 0.f) : s;
}

// Each point's candidates' values in fp32 FMA arithmetic (||c||^2 - 2 x.c, or -x.c; the dot
// products in RowDot's order, eight lanes per point), the smallest (ties to the lowest index)
// its label, with its distance. A point the filter sent to the re-check (count ~0u) already has
// its label: its distance only. d <= 128 (the split path's): the point's columns stay in
// registers. The warp walks as many candidates as its longest list, the next index and each
// candidate's norm read beside its row.
template <bool VEC>
__global__ void __launch_bounds__(256) resolve_candidates(AssignArgs a) {
    using R = RowDot;
    constexpr int G = R::G, S = 4; // stripes of 32 columns
    const int64_t total = a.batch * a.n, g = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / G;
    if (g - (threadIdx.x % 32) / G >= total) return; // (the warp's first point: whole warps leave)
    const bool live = g < total;
    const int t = threadIdx.x % G;
    const int64_t p = live ? g : total - 1, b = p / a.n, d = a.d, k = a.k;
    const bool l2 = a.metric == Metric::L2;
    const uint32_t* slot = a.candidates + p * kCandidateSlots;
    const uint2 head = *reinterpret_cast<const uint2*>(slot); // the count and the first index
    const float* x = static_cast<const float*>(a.x) + p * d;
    const float* cen = static_cast<const float*>(a.centroids) + b * k * d;
    const float xn = l2 && t == 0 ? a.xnorm[p] : 0.f;
    float4 xv[S];
#pragma unroll
    for (int u = 0; u < S; u++) xv[u] = R::block<VEC>(x, d, 32 * u + 4 * t);
    const bool rechecked = head.x == ~0u;
    const int m = !live ? 0 : rechecked ? 1 : int(head.x);
    const int steps = int(__reduce_max_sync(0xffffffffu, unsigned(m)));
    uint32_t next = rechecked ? uint32_t(a.labels[p]) : head.y;
    float best = INFINITY, best_dot = 0.f;
    uint32_t best_l = ~0u;
    for (int q = 0; q < steps; q++) {
        const uint32_t l = next;
        const bool on = q < m && l < k; // (l < k always: the filter keeps real columns only)
        if (q + 1 < m) next = slot[2 + q];
        const float* c = cen + int64_t(on ? l : 0) * d;
        const float pen = on && l2 ? a.cnorm[b * k + l] : 0.f;
        float s = 0.f;
#pragma unroll
        for (int u = 0; u < S; u++) {
            const int64_t j = 32 * u + 4 * t;
            if (on && j < d) s = R::fma_block(xv[u], R::block<VEC>(c, d, j), s, d, j);
        }
        const float dot = R::group_sum(s);
        const float v = l2 ? pen - 2.f * dot : -dot;
        if (on && (v < best || (v == best && l < best_l) || best_l == ~0u)) best = v, best_dot = dot, best_l = l;
    }
    if (live && t == 0 && best_l != ~0u) { // (a list is never empty)
        a.labels[p] = int32_t(best_l);
        a.distances[p] = l2 ? fmaxf(xn + (a.cnorm[b * k + best_l] - 2.f * best_dot), 0.f) : best_dot;
    }
}

// Whether the fp32 rows allow float4 loads.
bool vec_rows(const AssignArgs& a) {
    return a.d % 4 == 0 && aligned16(a.x) && aligned16(a.centroids);
}

// The grid of the RowDot kernels: a group of RowDot::G lanes per point, 256 threads per block.
unsigned row_dot_blocks(const AssignArgs& a) {
    return launch_blocks((a.batch * a.n * RowDot::G + 255) / 256);
}

} // namespace

void launch_resolve_candidates(const AssignArgs& a, cudaStream_t stream) {
    (vec_rows(a) ? resolve_candidates<true> : resolve_candidates<false>)<<<row_dot_blocks(a), 256, 0, stream>>>(a);
    FLASH_LAUNCH_CHECK("resolve_candidates");
}

void launch_exact_distances(const AssignArgs& a, cudaStream_t stream) {
    (vec_rows(a) ? exact_distances<true> : exact_distances<false>)<<<row_dot_blocks(a), 256, 0, stream>>>(a);
    FLASH_LAUNCH_CHECK("exact_distances");
}

void launch_assign_fp32(const AssignArgs& a, cudaStream_t stream) {
    const int64_t tiles = (a.n + BM - 1) / BM;
    assign_fp32_kernel<<<launch_blocks(tiles * a.batch), THREADS, 0, stream>>>(a, tiles);
    FLASH_LAUNCH_CHECK("assign_fp32_kernel");
}

void launch_assign_fp32_recheck(const AssignArgs& a, cudaStream_t stream) {
    static const int grid = [] { // the first device's chip; any grid gives the same result
        int per_sm = 0;
        FLASH_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, recheck_fp32_kernel, THREADS, 0));
        return current_device_sms() * std::max(per_sm, 1);
    }();
    const int64_t tiles = (a.n + BM - 1) / BM, ntiles = (a.k + BN - 1) / BN;
    // At most 16 centroid chunks of per_chunk tiles (the last may be shorter): `chunks` of them.
    const int64_t per_chunk = (ntiles + 15) / 16, chunks = (ntiles + per_chunk - 1) / per_chunk;
    const int64_t units = a.batch * tiles * chunks;
    recheck_fp32_kernel<<<unsigned(std::min<int64_t>(units, grid)), THREADS, 0, stream>>>(a, chunks, per_chunk);
    FLASH_LAUNCH_CHECK("recheck_fp32_kernel");
    const int64_t total = a.batch * a.n;
    finish_recheck<<<unsigned(std::min<int64_t>((total + 255) / 256, 4 * int64_t(grid))), 256, 0, stream>>>(a);
    FLASH_LAUNCH_CHECK("finish_recheck");
}

} // namespace flash::cuda_engine
