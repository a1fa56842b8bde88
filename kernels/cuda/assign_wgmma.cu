// FlashAssign on Hopper tensor cores (wgmma.mma_async, sm_90a), fp32 accumulation.
//
// A block of NWG warpgroups owns BM = 64 * NWG points of one problem; their tile stays in
// shared memory (d <= 256). Centroid tiles of BN rows stream through a 4-stage ring, taken in
// pairs: both products are issued, the next pair's loads go out, and the first product is
// folded while the tensor cores work on the second. The swizzled block-per-tile kernels take
// their tiles from the copy engine (TMA) and hand stages over with mbarriers; the others load with
// per-thread cp.async behind one block barrier per pair. The fold keeps a running
// (value, index) minimum per point in registers at two instructions per value (a tile's
// minimum first, its column searched only when it improves; without the start bound, where
// nearly every tile improves some row, searched on every tile and taken by selects: SELECT).
// The kernel is bound by issued instructions as much as by the tensor cores, hence the lean
// fold and the fixed-offset loads (bench/RESULTS.md run 31: the products alone run at 87% of
// the tensor peak, the fold does not hide behind them). The n x k matrix never leaves the chip.
//
// fp32 input (see Pass and AssignArgs): operands are scaled [hi | lo] fp16 rows. The filter
// (the default) multiplies the hi parts only and keeps, per point, every centroid within its
// error margin of the smallest value as a candidate for resolve_candidates (assign_fp32.cu);
// the split pass (FLASH_EXACT_FILTER=0) issues hi.hi + hi.lo + lo.hi per k-step and keeps the
// second-best value, listing the points whose gap is inside its error bound. Points either
// cannot settle go to the fp32 FMA re-check over every centroid (assign_fp32.cu).
//
// Shared-memory tiles are K-major without swizzle, as 8 x 8 core matrices of 128 bytes:
// element (r, c) of an R x KW tile lives at ((r / 8) * (KW / 8) + c / 8) * 64 + (r % 8) * 8 + c % 8.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/cuda/argmin.cuh"
#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"
#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/split_scale.cuh"
#include "kernels/cuda/tma.cuh"
#include "kernels/cuda/wgmma_ops.cuh"

namespace flash::cuda_engine {

namespace {

constexpr int kStages = 4; // centroid tiles: the pair in use and the next pair in flight

// What a launch multiplies. Plain: fp16 / bf16 rows, one product. Filter (fp32 input): the hi
// parts of the split rows only, one product, keeping every centroid that may be the exact
// nearest as a candidate (AssignArgs::candidates). Split: hi.hi + hi.lo + lo.hi, with a
// certificate that lists the points it cannot decide for the fp32 FMA re-check.
// FilterSearch: the filter without column tags (the plain pass's two instructions per value
// instead of five): a tile is searched for its candidates when it comes within reach, rare at
// large k.
enum class Pass { Plain, Filter, FilterSearch, Split };
constexpr bool is_filter(Pass p) {
    return p == Pass::Filter || p == Pass::FilterSearch;
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(gmem));
}
__device__ __forceinline__ void cp_async4(void* smem, const void* gmem) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(addr), "l"(gmem));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
// threadIdx.x read where it is used (not hoisted and kept in a register across a loop).
__device__ __forceinline__ int volatile_tid() {
    int t;
    asm volatile("mov.u32 %0, %%tid.x;\n" : "=r"(t));
    return t;
}
// Two packed fp16 / bf16 values as floats.
template <class T>
__device__ __forceinline__ float2 pair_to_float2(uint32_t w) {
    if constexpr (std::is_same_v<T, __half>) {
        __half2 h;
        memcpy(&h, &w, sizeof h);
        return __half22float2(h);
    } else {
        __nv_bfloat162 h;
        memcpy(&h, &w, sizeof h);
        return __bfloat1622float2(h);
    }
}
// Generic-proxy writes (cp.async, st.shared) made visible to wgmma's async-proxy reads.
__device__ __forceinline__ void fence_proxy_async() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
__device__ __forceinline__ void wgmma_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
// Keeps the compiler from moving accumulator reads across wgmma_wait (CUTLASS's
// warpgroup_fence_operand).
template <int N>
__device__ __forceinline__ void fence_operands(float (&r)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(r[i])::"memory");
}

// Matrix descriptor of a K-major, non-swizzled tile: LBO = bytes between core matrices along
// K (128), SBO = bytes between 8-row groups.
__device__ __forceinline__ uint64_t make_desc(const void* p, uint32_t sbo) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    return uint64_t((addr & 0x3FFFF) >> 4) | (uint64_t(128 >> 4) << 16) | (uint64_t(sbo >> 4) << 32);
}

// 128-byte swizzled K-major tile (the layout TMA's SWIZZLE_128B writes): K splits into
// atoms of 64 columns (128 bytes); atom a holds all R rows at 128-byte stride; within each
// 8-row group, 16-byte chunk c of row r sits at chunk c ^ (r % 8), so the 8 rows of a core
// matrix hit different banks. Needs 1024-byte aligned tiles.
template <class T, int KW, int NT>
__device__ __forceinline__ void load_tile_swizzled(T* s, const T* g, int64_t nrows, int64_t width, int64_t ld,
                                                   int64_t r0, int rows, bool vec) {
    constexpr int CPR = KW / 8; // 16-byte chunks per row
    const int chunks = rows * CPR;
    for (int q = threadIdx.x; q < chunks; q += NT) {
        const int r = q / CPR, c = q % CPR, col = c * 8;
        T* dst = s + (c / 8) * rows * 64 + r * 64 + ((c % 8) ^ (r % 8)) * 8;
        const int64_t gr = r0 + r;
        if (gr >= nrows || col >= width) {
            *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        } else if (vec && col + 8 <= width) {
            cp_async16(dst, g + gr * ld + col);
        } else {
            unsigned short* d16 = reinterpret_cast<unsigned short*>(dst);
            const unsigned short* g16 = reinterpret_cast<const unsigned short*>(g + gr * ld);
#pragma unroll
            for (int e = 0; e < 8; e++) d16[e] = col + e < width ? g16[col + e] : 0;
        }
    }
}

template <class T, int KW, int NT>
__device__ __forceinline__ void load_tile(T* s, const T* g, int64_t nrows, int64_t width, int64_t ld, int64_t r0,
                                          int rows, bool vec) {
    const int chunks = rows * (KW / 8);
    for (int q = threadIdx.x; q < chunks; q += NT) {
        const int r8 = q % 8, kc = (q / 8) % (KW / 8), rg = q / (8 * (KW / 8));
        const int col = kc * 8;
        T* dst = s + (rg * (KW / 8) + kc) * 64 + r8 * 8;
        const int64_t gr = r0 + rg * 8 + r8;
        if (gr >= nrows || col >= width) {
            *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        } else if (vec && col + 8 <= width) {
            cp_async16(dst, g + gr * ld + col);
        } else {
            unsigned short* d16 = reinterpret_cast<unsigned short*>(dst);
            const unsigned short* g16 = reinterpret_cast<const unsigned short*>(g + gr * ld);
#pragma unroll
            for (int e = 0; e < 8; e++) d16[e] = col + e < width ? g16[col + e] : 0;
        }
    }
}

// Centroid tiles through the copy engine (TMA): the swizzled block-per-tile kernels.
template <bool SWZ, bool PERSIST>
constexpr bool uses_tma() { return SWZ && !PERSIST; }

// AREG: the warpgroup's A operand (its 64 points) is read from shared memory into registers
// once and every wgmma takes A from registers; shared-memory bandwidth then serves B only.
// SWZ: centroid tiles in the 128-byte swizzled layout (else the plain core-matrix layout).
// Two blocks per SM where the tile allows it (BN = 64, two warpgroups, rows up to 128 wide):
// more warps to hide the epilogue's latency.
// (PERSIST kernels take one block per SM: their registers would not fit two.)
template <int KW, int BN, int NWG, bool PERSIST>
constexpr int min_blocks() { return !PERSIST && BN == 64 && NWG == 2 && KW <= 128 ? 2 : 1; }

// PERSIST: two point-tile slots.
template <class T, int KW, int BN, int NWG, bool PERSIST = false>
constexpr size_t tile_smem_bytes() {
    return 1024 + sizeof(T) * size_t((PERSIST ? 2 : 1) * NWG * 64 + kStages * BN) * KW + sizeof(float) * kStages * BN +
           sizeof(uint64_t) * 2 * kStages;
}

// The filter keeps its candidates in the point tile's space (dead once the fragments are in
// registers): per thread, ML slots per row plus two (see the kernel). Where that space holds
// fewer than kFilterSlots per row, the block takes more beside it, as much as min_blocks()
// blocks per SM leave room for (sm_90: 228 KB per SM, 1 KB of it reserved per block). At
// d = 128 that is 10 slots instead of 7: with one point tile's 32 KB, 0.62% of the points of
// the 32M K=16384 benchmark (256 centres, 64 centroids each) had more than 7 within reach on one
// thread and went to the re-check over every centroid, 11% of an iteration; none had more
// than 27 in all (bench/RESULTS.md run 39). At d = 64: 15 instead of 3.
constexpr int kFilterSlots = 15;
template <class T, int KW, int BN, int NWG, bool FILTER>
constexpr size_t slot_extra_bytes() {
    if constexpr (!FILTER) {
        return 0;
    } else {
        constexpr size_t tile = sizeof(T) * NWG * 64 * KW, want = size_t(2 * kFilterSlots + 2) * NWG * 128 * 8;
        constexpr size_t base = tile_smem_bytes<T, KW, BN, NWG>();
        constexpr size_t limit = 228 * 1024 / min_blocks<KW, BN, NWG, false>() - 1024;
        constexpr size_t room = limit > base ? (limit - base) / 1024 * 1024 : 0; // (Bs stays 1024-aligned)
        constexpr size_t need = want > tile ? (want - tile + 1023) / 1024 * 1024 : 0;
        return need < room ? need : room;
    }
}

template <class T, int KW, int BN, int NWG, bool PERSIST = false, bool FILTER = false>
constexpr size_t smem_bytes() {
    return tile_smem_bytes<T, KW, BN, NWG, PERSIST>() + slot_extra_bytes<T, KW, BN, NWG, FILTER>();
}

// PERSIST (k <= 2 BN, AREG, at least two point tiles per problem): each block takes
// tiles_per_block consecutive point tiles, two of them in flight while one is multiplied (a
// tile's slot is free once its fragments are in registers); a problem's centroids stay in one
// stage pair. For small k, where a block's work is one or two products, this hides the load
// latency that a block per tile pays in full.
// SELECT (the plain pass of variant 5 without the start bound): see the fold's search below.
template <class T, int KW, int BN, int NWG, Pass P, bool AREG, bool SWZ, bool PERSIST = false, bool SELECT = false>
__global__ void __launch_bounds__(NWG * 128, (min_blocks<KW, BN, NWG, PERSIST>()))
    assign_wgmma_kernel(AssignArgs a, int64_t tiles_per_problem, int64_t tiles_per_block, bool vec,
                        const __grid_constant__ CUtensorMap cmap) {
    static_assert(!PERSIST || AREG, "PERSIST reloads the point tile while the products read the registers");
    static_assert(!PERSIST || P == Pass::Plain, "the persistent kernel has no certificate");
    constexpr bool SPLIT = P == Pass::Split, FILTER = is_filter(P);
    constexpr bool SCALED = P != Pass::Plain, TAG = P == Pass::Filter;
    static_assert(!FILTER || AREG, "the filter keeps its candidates in the point tile's space");
#if defined(__CUDA_ARCH__) && !defined(__CUDA_ARCH_FEAT_SM90_ALL)
    __trap(); // built for sm_90a only; the host never launches it elsewhere
#else
    if (!a.early_points) pdl_wait(); // (see AssignArgs::early_points)
    pdl_trigger();                   // the update's first kernel may launch (it waits for this grid's end)
    constexpr int NT = NWG * 128, BM = NWG * 64, NACC = BN / 2;
    constexpr int KSTEPS = (SPLIT ? KW / 2 : KW) / 16; // k16 steps over one operand part
    constexpr int LO = KW / 2 * 8;                       // element offset of the lo part (SPLIT)
    constexpr uint32_t SBO = KW / 8 * 128;
    extern __shared__ __align__(128) unsigned char smem[];
    const uint32_t sbase = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const uint32_t pad = (1024 - (sbase & 1023)) & 1023;
    T* As = reinterpret_cast<T*>(smem + pad); // (BM, KW) points, resident
    // FILTER: candidate slots continue past the point tile (slot_extra_bytes).
    constexpr size_t EXTRA = slot_extra_bytes<T, KW, BN, NWG, FILTER>();
    T* Bs = As + (PERSIST ? 2 : 1) * BM * KW + EXTRA / sizeof(T); // (kStages, BN, KW) centroids
    // Bs's shared-window address from sbase in 32-bit arithmetic, not converted back from the
    // generic pointer: it stays in uniform registers, and so do the wgmma descriptors built
    // from it (converted back it sat in an ordinary register: every wgmma paid two R2UR, an add
    // and the descriptor's high word rebuilt).
    const uint32_t bs_addr = sbase + pad + uint32_t((PERSIST ? 2 : 1) * BM * KW * sizeof(T) + EXTRA);
    float* Ns = reinterpret_cast<float*>(Bs + kStages * BN * KW);      // (kStages, BN) penalties
    // TMA: per stage, full (the tile and its penalties landed: the copy engine's bytes, one
    // arrival of thread 0 and one per penalty thread) and empty (every thread is done with it).
    uint64_t* full = reinterpret_cast<uint64_t*>(Ns + kStages * BN);
    uint64_t* empty = full + kStages;

    const int64_t n = a.n, k = a.k;
    // Columns read per row (the filter: the hi half of the split rows) and the row stride.
    const int64_t width = SPLIT ? 2 * a.dsplit : (FILTER ? a.dsplit : a.d), ld = SCALED ? 2 * a.dsplit : a.d;
    const T* x0 = static_cast<const T*>(SCALED ? a.xsplit : a.x);
    const T* c0 = static_cast<const T*>(SCALED ? a.csplit : a.centroids);
    // Point tiles [g, g_end) of this block, tile g = (problem b, rows from m0).
    int64_t g = int64_t(blockIdx.x) * tiles_per_block;
    const int64_t g_end = min(g + tiles_per_block, a.batch * tiles_per_problem);
    if (g >= g_end) return;
    int64_t b = g / tiles_per_problem, m0 = (g % tiles_per_problem) * BM;
    const bool l2 = a.metric == Metric::L2;
    // Centroid tiles through the copy engine (cmap, see uses_tma).
    constexpr bool TMA = uses_tma<SWZ, PERSIST>();
    // value = penalty + scale * product; SPLIT: the operands' power-of-two scales undone too.
    const float scale =
        SCALED ? ldexpf(l2 ? -2.f : -1.f, -(split_scale_exponent(a.xmax[b]) + split_scale_exponent(a.cmax[b])))
              : (l2 ? -2.f : -1.f);
    const int tid = threadIdx.x, wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
    // Rows lane / 4 and lane / 4 + 8 of this warp within the point tile (h = 0, 1).
    auto tile_row = [&](int h) { return wg * 64 + warp * 16 + lane / 4 + 8 * h; };

    // Centroid tile j into stage j % kStages, with its penalties: ||c||^2 (L2) or 0 (inner
    // product), +inf past k (padded rows are zero, so their value is +inf and never wins).
    // A whole tile of 16-byte-aligned rows exactly KW wide (every tile but the last, usually)
    // takes the fast path: each thread's chunks at fixed offsets, no bounds checks.
    // Thread t copies 16-byte chunk t % CPR of rows t / CPR + u * RP: with RP a multiple of 8
    // its swizzled position moves by a constant per row step. The offsets are recomputed from
    // %tid.x per tile: kept live across the loop they would cost registers the accumulators need.
    constexpr int CPR = KW / 8, RP = NT / CPR;
    const bool fast_rows = vec && width == KW;
    // Tile j of problem pb into stage st.
    auto load_centroids = [&](int st, int j, int64_t pb) {
        const T* c = c0 + pb * k * ld;
        const float* cn = a.cnorm + pb * k;
        T* dst = Bs + st * BN * KW;
        if constexpr (TMA) {
            // Threads 0 .. BN - 1 (warpgroup 0) refill the stage once every warp has released
            // its previous tile: thread 0 copies the tile's 64-column atoms (rows past k arrive
            // as zeros), each thread one penalty. No block barrier.
            const int t = volatile_tid();
            if (t >= BN) return;
            if (j >= kStages) mbarrier_wait(empty + st, uint32_t(j / kStages - 1) & 1);
            if (t == 0) {
                mbarrier_arrive_expect(full + st, uint32_t(BN * KW * sizeof(T)));
#pragma unroll
                for (int at = 0; at < KW / 64; at++)
                    tma_load_3d(dst + at * BN * 64, &cmap, full + st, at * 64, int(j * BN), int(pb));
            }
            const int64_t col = int64_t(j) * BN + t;
            float* pen = Ns + st * BN + t;
            if (col < k && l2) {
                cp_async4(pen, cn + col);
                mbarrier_arrive_after_cp_async(full + st);
            } else {
                *pen = col < k ? 0.f : INFINITY;
                mbarrier_arrive(full + st);
            }
        } else if constexpr (SWZ && NT % CPR == 0 && RP % 8 == 0) {
            if (fast_rows && (j + 1) * BN <= k) {
                const int t = volatile_tid(), r0 = t / CPR, ch = t % CPR;
                T* to = dst + (ch / 8) * BN * 64 + r0 * 64 + ((ch % 8) ^ (r0 % 8)) * 8;
                const T* src = c + (j * BN + r0) * ld + ch * 8;
#pragma unroll
                for (int u = 0; u < (BN + RP - 1) / RP; u++)
                    if (BN % RP == 0 || r0 + u * RP < BN) cp_async16(to + u * RP * 64, src + u * RP * ld);
            } else {
                load_tile_swizzled<T, KW, NT>(dst, c, k, width, ld, j * BN, BN, vec);
            }
        } else if constexpr (SWZ) {
            load_tile_swizzled<T, KW, NT>(dst, c, k, width, ld, j * BN, BN, vec);
        } else {
            load_tile<T, KW, NT>(dst, c, k, width, ld, j * BN, BN, vec);
        }
        if constexpr (!TMA) {
            for (int q = tid; q < BN; q += NT) {
                const int64_t col = j * BN + q;
                float* pen = Ns + st * BN + q;
                if (col >= k)
                    *pen = INFINITY;
                else if (l2)
                    cp_async4(pen, cn + col);
                else
                    *pen = 0.f;
            }
        }
    };

    // The point tile from row r0 of problem pb. A whole tile of KW-wide rows takes the fast path:
    // in the core-matrix layout chunk q of the tile lands at element 8 q, and a thread's chunks
    // are NT / CPR rows apart in global memory.
    auto load_points = [&](T* dst, int64_t pb, int64_t r0) {
        const T* x = x0 + pb * n * ld;
        if constexpr ((8 * CPR) <= NT && NT % (8 * CPR) == 0) {
            if (fast_rows && r0 + BM <= n) {
                const int t = volatile_tid();
                const T* src = x + (r0 + (t / (8 * CPR)) * 8 + t % 8) * ld + ((t / 8) % CPR) * 8;
#pragma unroll
                for (int u = 0; u < BM * CPR / NT; u++)
                    cp_async16(dst + (t + u * NT) * 8, src + u * (NT / CPR) * ld);
                return;
            }
        }
        load_tile<T, KW, NT>(dst, x, n, width, ld, r0, BM, vec);
    };

    const int ntiles = int((k + BN - 1) / BN); // (an int tile index: 32-bit loop arithmetic)
    // TMA (one point tile per block): tile j goes to stage j % kStages, its (j / kStages)-th use.
    auto tile_landed = [&](int j) { mbarrier_wait(full + j % kStages, uint32_t(j / kStages) & 1); };
    auto release = [&](int j) { // this thread's products and fold of tile j are done
        // Every thread arrives (not one lane per warp after __syncwarp): the same ordering, but
        // each thread's own release, which compute-sanitizer's racecheck can follow.
        if constexpr (TMA) mbarrier_arrive(empty + j % kStages);
    };
    // PERSIST: tile t's points go to slot t % 2 and its problem's centroids to stage pair
    // problem % 2 (with at least two tiles per problem, the tiles in flight at once, g to g + 2,
    // span at most two problems). (b1, r1) and (b2, r2): problem and first row of tiles g + 1
    // and g + 2, advanced without 64-bit divisions.
    auto advance = [&](int64_t& pb, int64_t& r0) {
        r0 += BM;
        if (r0 >= n) r0 = 0, pb++;
    };
    int64_t b1 = b, r1 = m0, b2, r2;
    advance(b1, r1);
    b2 = b1, r2 = r1;
    advance(b2, r2);
    auto slot = [&](int64_t t) { return As + (PERSIST ? int(t % 2) : 0) * BM * KW; };
    int pair = PERSIST ? int(b % 2) : 0;
    auto stage = [&](int j) { return (j + 2 * pair) % kStages; };
    auto load_first_pair = [&](int p, int64_t pb) { // tiles 0 and 1 of problem pb into stage pair p
        load_centroids(2 * p, 0, pb);
        if (ntiles > 1) load_centroids(2 * p + 1, 1, pb);
    };
    if (TMA && tid == 0) {
        for (int st = 0; st < kStages; st++) {
            mbarrier_init(full + st, 1 + BN);
            mbarrier_init(empty + st, NT);
        }
        mbarrier_init_fence();
    }
    if constexpr (TMA) __syncthreads(); // initialised before any thread arrives
    load_points(slot(g), b, m0);
    if (a.early_points) pdl_wait(); // the centroids and every output: after the previous kernel
    load_first_pair(pair, b);
    cp_async_commit();
    if constexpr (PERSIST) { // the second tile in flight from the start
        if (g + 1 < g_end) {
            load_points(slot(g + 1), b1, r1);
            if (b1 != b) load_first_pair(int(b1 % 2), b1);
        }
        cp_async_commit();
    }

    // START (AssignArgs::start_from_labels): each row's last label, read while the tiles load;
    // its value for that centroid is computed once the point tile has landed.
    constexpr bool START = (P == Pass::Plain && !PERSIST) || FILTER;
    int prior[2] = {-1, -1};
    if constexpr (START) {
        if (a.start_from_labels) {
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int64_t row = m0 + tile_row(h);
                if (row < n) prior[h] = a.labels[b * n + row];
            }
        }
    }

    // AREG: fragments of k-step s (hi part; SPLIT: lo part at KSTEPS + s). Lane l addresses row
    // l % 8 of 8 x 8 matrix l / 8: rows +8 for odd matrices, k +8 for matrices 2 and 3.
    constexpr int NFRAG = AREG ? (SPLIT ? 2 : 1) * KSTEPS : 1;
    uint32_t afrag[NFRAG][4];
    auto load_fragments = [&](const T* tile) {
        const int row = wg * 64 + warp * 16 + ((lane / 8) % 2) * 8 + lane % 8;
#pragma unroll
        for (int f = 0; f < NFRAG; f++) {
            const int kc = (f % KSTEPS) * 2 + lane / 16 + (f / KSTEPS) * (KW / 16);
            ldmatrix_x4(afrag[f], tile + ((row / 8) * (KW / 8) + kc) * 64 + (row % 8) * 8);
        }
    };

    const uint64_t a_desc = make_desc(As + wg * 64 * KW, SBO); // (not PERSIST: one slot)
    // B descriptors built from 32-bit halves (the k-steps differ in the start address of the low
    // half only: a 32-bit add per wgmma). Plain layout as make_desc; 128-byte swizzled: SBO =
    // 1024 (8 rows x 128 bytes), LBO unused, layout type 1 (SWIZZLE_128B) in bits 62-63.
    constexpr uint32_t B_LBO = SWZ ? 1u << 16 : (128u >> 4) << 16;
    constexpr uint32_t B_HI = SWZ ? (1024u >> 4) | (1u << 30) : SBO >> 4;
    auto issue = [&](float(&acc)[NACC], int j) {
        const uint32_t b_lo = ((bs_addr + uint32_t(stage(j)) * uint32_t(BN * KW * sizeof(T))) >> 4) | B_LBO;
        // Descriptor offset (16-byte units) of B's k-step at column kcol.
        auto b_off = [](int kcol) -> uint32_t {
            if constexpr (SWZ) return uint32_t((kcol / 64) * BN * 128 + (kcol % 64) * 2) >> 4;
            else return uint32_t((kcol / 8) * 128) >> 4;
        };
        auto b_desc = [&](int kcol) { return (uint64_t(B_HI) << 32) | (b_lo + b_off(kcol)); };
        wgmma_fence();
        constexpr uint64_t lo = uint64_t(LO * sizeof(T)) >> 4;
        // Product of k-step s: point part (0 hi, 1 lo) times centroid part (0 hi, 1 lo).
        auto product = [&](int s, int xpart, int cpart, int accumulate) {
            const uint64_t bd = b_desc(cpart * (KW / 2) + 16 * s);
            if constexpr (AREG)
                WgmmaRS<T, BN>::mma(acc, afrag[xpart * KSTEPS + s], bd, accumulate);
            else
                Wgmma<T, BN>::mma(acc, a_desc + (uint64_t(s * 128 * sizeof(T)) >> 4) + xpart * lo, bd, accumulate);
        };
        if constexpr (SPLIT) {
            // The small terms (hi.lo, lo.hi: 2^-11 of the result) first, from zero, then hi.hi:
            // while the small ones are added the accumulator holds only their magnitude, so their
            // rounding is 2^-10 of that of a full-size step (the certificate counts KSTEPS + 1
            // full-size steps instead of 3 * KSTEPS).
#pragma unroll
            for (int s = 0; s < KSTEPS; s++) {
                product(s, 0, 1, s > 0);
                product(s, 1, 0, 1);
            }
#pragma unroll
            for (int s = 0; s < KSTEPS; s++) product(s, 0, 0, 1);
        } else {
#pragma unroll
            for (int s = 0; s < KSTEPS; s++) product(s, 0, 0, s > 0);
        }
        wgmma_commit();
    };

    // Rows lane / 4 and lane / 4 + 8 of this warp: the running minimum (value, index) and,
    // SPLIT, the second-smallest value.
    Best best[2] = {best_init(), best_init()};
    float second[2] = {FLT_MAX, FLT_MAX};

    // FILTER: a point's candidates are the centroids whose value is within margin (twice the
    // bound on each value's error, built from the measured rounding residuals) of its smallest
    // value; the exact nearest is among them. The running minimum is the row's (shared by the
    // quad's four lanes each tile; with the start bound, each lane's own: see the fold); each
    // thread keeps its columns within margin of it (a superset of the final candidates) in up to
    // ML slots per row, in the point tile's space (dead once the fragments are in registers)
    // and the room beside it (EXTRA), dropping those out of reach when the slots fill up, and
    // remembers the smallest value it had no slot for: a row for which that one is still within
    // reach at the end goes to the full fp32 re-check. Two more slot pairs per thread hold the
    // rows' margins and those smallest lost values.
    constexpr int ML = FILTER ? std::min(kFilterSlots, int((BM * KW * sizeof(T) + EXTRA) / (NT * 8) - 2) / 2) : 1;
    float2* const slots = reinterpret_cast<float2*>(As);
    auto cand_slot = [&](int q, int h) -> float2& { return slots[(q * 2 + h) * NT + tid]; };
    auto margins = [&]() -> float2& { return slots[2 * ML * NT + tid]; };
    auto lost = [&]() -> float2& { return slots[(2 * ML + 1) * NT + tid]; };
    int cnt[2] = {0, 0};

    // The fold of one tile costs two instructions per value (FFMA, FMNMX): the tile's minimum per
    // row first, in four independent chains, and only when it beats the running minimum (rarely,
    // after the first tiles) a second pass that finds its first column (SPLIT: and a third for
    // the tile's second-smallest value). Columns reach a thread in increasing order and a tile
    // replaces the minimum only when strictly smaller, so ties go to the lowest index.
    //
    // The filter from k = kSearchK (FilterSearch) folds the same way (tile_minima): a tile whose
    // smallest value comes within margin of the running minimum is searched for every value
    // within reach (the candidates), rarely at large k. Below it (Filter, tagged), where nearly
    // every tile comes within reach for some row of the warp early on, it folds at five
    // instructions per value instead: each value carries its column within the thread's BN / 4
    // in its low mantissa bits (moving it by at most 2^-19 of itself, which the margin covers),
    // and two chains per row keep the smallest and second-smallest. A tile
    // whose smallest comes within margin of the running minimum gives that one candidate,
    // column included, with no second pass; only when its second-smallest does too (two of the
    // thread's columns within reach in one tile, rare) is the tile searched for all of them.
    // (A search on every tile within reach, at small k nearly every tile for some row of the
    // warp, cost more than these three extra instructions per value.)
    auto epilogue = [&](float(&acc)[NACC], int j) {
        const float* ns = Ns + stage(j) * BN + (lane % 4) * 2;
        auto value = [&](int i, int h, int e, float2 p) { return fmaf(scale, acc[4 * i + 2 * h + e], e ? p.y : p.x); };
        auto each_value = [&](auto&& f) { // f(i, h, e, p): column 8 i + e of row h, p the pair's penalties
#pragma unroll
            for (int i = 0; i < BN / 8; i++) {
                const float2 p = *reinterpret_cast<const float2*>(ns + i * 8);
#pragma unroll
                for (int h = 0; h < 2; h++)
#pragma unroll
                    for (int e = 0; e < 2; e++) f(i, h, e, p);
            }
        };
        const int col0 = int(j * BN) + (lane % 4) * 2; // global column of (i, e): col0 + 8 i + e
        // The folds below leave each value in its accumulator register, dead until the next
        // issue: the searches compare registers, with no penalty reloads. (Not the tagged
        // filter, which finds columns in its values' tags: kept there, its values cost spills.)
        auto folded = [&](int i, int h, int e) -> float& { return acc[4 * i + 2 * h + e]; };
        // The first column c of row h in this tile (c = 8 i + e) whose folded value is v: the
        // lowest, so that ties go to the lowest index.
        auto first_column = [&](float v, int h) {
            int col = BN;
#pragma unroll
            for (int i = BN / 8 - 1; i >= 0; i--)
#pragma unroll
                for (int e = 1; e >= 0; e--)
                    if (folded(i, h, e) == v) col = i * 8 + e;
            return col;
        };
        // The two-instruction fold: each value into its register, and per row the tile's
        // minimum, in four chains each started from its first value (not from +inf: one
        // instruction less per chain).
        auto tile_minima = [&](float(&t1)[2]) {
            constexpr int CH = 4;
            static_assert(BN / 8 * 2 >= CH, "a chain per column pair of the first tiles");
            float m1[2][CH];
            each_value([&](int i, int h, int e, float2 p) {
                const float v = folded(i, h, e) = value(i, h, e, p);
                float& m = m1[h][(2 * i + e) % CH];
                m = 2 * i + e < CH ? v : fminf(m, v);
            });
#pragma unroll
            for (int h = 0; h < 2; h++) {
#pragma unroll
                for (int w = CH / 2; w > 0; w /= 2)
#pragma unroll
                    for (int q = 0; q < w; q++) m1[h][q] = fminf(m1[h][q], m1[h][q + w]);
                t1[h] = m1[h][0];
            }
        };
        if constexpr (FILTER) {
            constexpr int IDX = BN / 4 - 1; // the column bits (BN / 4 a power of two)
            auto tagged = [&](int i, int h, int e, float2 p) { // (TAG)
                return __int_as_float((__float_as_int(value(i, h, e, p)) & ~IDX) | (2 * i + e));
            };
            // Per row, the tile's smallest value and (TAG) its second-smallest.
            float t1s[2], t2s[2];
            if constexpr (TAG) {
                constexpr int CF = 2;
                float m1[2][CF], m2[2][CF];
#pragma unroll
                for (int q = 0; q < 2 * CF; q++) m1[q / CF][q % CF] = m2[q / CF][q % CF] = INFINITY;
                each_value([&](int i, int h, int e, float2 p) {
                    const float v = tagged(i, h, e, p);
                    const int q = (2 * i + e) % CF;
                    m2[h][q] = fminf(m2[h][q], fmaxf(m1[h][q], v));
                    m1[h][q] = fminf(m1[h][q], v);
                });
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    t1s[h] = fminf(m1[h][0], m1[h][1]);
                    t2s[h] = fminf(fmaxf(m1[h][0], m1[h][1]), fminf(m2[h][0], m2[h][1]));
                }
            } else {
                // FilterSearch: the plain pass's fold (two instructions per value, four chains),
                // each value left in its register; a tile within reach is searched for every value
                // within reach, which costs what finding the first one's column would.
                tile_minima(t1s);
            }
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const float t1 = t1s[h];
                // The threshold follows the row's minimum over the quad's lanes, except where
                // the start (AssignArgs::start_from_labels, a bound on the row's minimum that
                // every lane holds from the first tile, from the second iteration on) keeps it
                // close: there each lane's own minimum sets it, a threshold at least as high (a
                // superset of candidates, filtered at the end against the row's), and the fold
                // saves two shuffles and two instructions per row and tile (32M K=16384: 337 / 343
                // vs 349 ms per iteration).
                float row_min = t1;
                if (TAG || !a.start_from_labels) {
                    row_min = fminf(row_min, __shfl_xor_sync(0xffffffffu, row_min, 1));
                    row_min = fminf(row_min, __shfl_xor_sync(0xffffffffu, row_min, 2));
                }
                best[h].v = fminf(best[h].v, row_min);
                const float margin = h ? margins().y : margins().x, thr = best[h].v + margin;
                if (!(t1 <= thr) || !(t1 < INFINITY)) continue; // nothing within reach (the usual case)
                if (cnt[h] > ML - 2) { // room for the usual one or two: drop those out of reach
                    int w = 0;
#pragma unroll
                    for (int q = 0; q < ML; q++)
                        if (q < cnt[h]) {
                            const float2 c = cand_slot(q, h);
                            if (c.x <= thr) cand_slot(w++, h) = c;
                        }
                    cnt[h] = w;
                }
                auto keep = [&](float v, int col) {
                    if (cnt[h] < ML) {
                        cand_slot(cnt[h]++, h) = make_float2(v, __int_as_float(col));
                    } else {
                        float& l = h ? lost().y : lost().x;
                        l = fminf(l, v);
                    }
                };
                if constexpr (TAG) {
                    if (!(t2s[h] <= thr)) { // one value within reach: its column from its tag
                        const int t = __float_as_int(t1) & IDX;
                        keep(t1, col0 + (t / 2) * 8 + t % 2);
                        continue;
                    }
                }
#pragma unroll
                for (int i = 0; i < BN / 8; i++) {                                 // every value within reach
                    const float2 p = *reinterpret_cast<const float2*>(ns + i * 8); // (TAG)
#pragma unroll
                    for (int e = 0; e < 2; e++) {
                        float v;
                        if constexpr (TAG)
                            v = tagged(i, h, e, p);
                        else
                            v = folded(i, h, e);
                        if (v <= thr) keep(v, col0 + i * 8 + e);
                    }
                }
            }
            return;
        }
        float t1s[2];
        tile_minima(t1s);
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float t1 = t1s[h];
            if constexpr (SELECT) {
                // Without the start bound (k < kStartMinK), nearly every tile improves some row of
                // the warp: the column is found on every tile and taken by selects, which costs
                // less than a divergent branch per row and tile around the search (kernel 46.2 vs
                // 48.6 us at B=1 N=65536 K=1024; at K=8192, where the start makes the search rare,
                // 9% more: bench/RESULTS.md run 31).
                const int col = first_column(t1, h);
                const bool better = t1 < best[h].v;
                best[h].v = better ? t1 : best[h].v;
                best[h].i = better ? col0 + col : best[h].i;
                continue;
            }
            if (t1 < best[h].v) {
                const int col = first_column(t1, h);
                if constexpr (SPLIT) {
                    // The tile holds the new best: the second-smallest is the old best or the
                    // tile's smallest value outside that column (found here, on this rare path,
                    // so that the fold stays at two instructions per value).
                    float t2 = best[h].v;
#pragma unroll
                    for (int i = 0; i < BN / 8; i++)
#pragma unroll
                        for (int e = 0; e < 2; e++)
                            if (i * 8 + e != col) t2 = fminf(t2, folded(i, h, e));
                    second[h] = fminf(second[h], t2);
                }
                best[h] = {t1, col0 + col};
            } else if constexpr (SPLIT) {
                second[h] = fminf(second[h], t1);
            }
        }
    };

    // Tiles are taken in pairs (2p, 2p + 1): both products are issued back to back, the fold
    // of the first runs while the tensor cores work on the second, and both are retired before
    // the loop's back edge. Each branch issues and retires its own wgmmas: an accumulator in
    // flight across the back edge, or issued on one path only, makes ptxas serialise every
    // wgmma (C7514). The next pair's centroids load meanwhile into the previous pair's stages:
    // behind one block barrier per pair, or (TMA kernels) handed over by the stages' full and
    // empty mbarriers, so that a warpgroup waits only for the tiles it needs.
    float acc0[NACC], acc1[NACC];
#pragma unroll
    for (int i = 0; i < NACC; i++) acc0[i] = acc1[i] = 0.f;
    auto prefetch = [&](int j) { // tiles past the last are never read: not loaded
        if (j + 2 < ntiles) load_centroids(stage(j + 2), j + 2, b);
        if (j + 3 < ntiles) load_centroids(stage(j + 3), j + 3, b);
        cp_async_commit();
    };
    for (;;) { // point tiles (one unless PERSIST)
        if constexpr (PERSIST)
            cp_async_wait<1>(); // tile g and its centroids landed (tile g + 1 may be in flight)
        else
            cp_async_wait<0>(); // the point tile and the first pair landed
        fence_proxy_async();
        __syncthreads();
        // FILTER: per row, an upper bound on its exact minimum (see below); +inf: none.
        [[maybe_unused]] float exact_up[2] = {INFINITY, INFINITY};
        if (START && a.start_from_labels) { // (the same for the whole grid)
            // Row h's value for its last centroid p, pen + scale x.c with x.c in fp32 FMA over the
            // rows the products read (the quad's lanes a quarter of the columns each), raised by
            // 2^-14 |scale| ||x|| ||c|| (the tensor cores' accumulation, 2^-21 per k16 step, and
            // the FMA's, d 2^-24, each of sum |x_i c_i| <= ||x|| ||c||, with room) and 2^-22 of
            // its terms (the roundings of the value itself): at least what the tile loop computes
            // for p, so the row's minimum is at most this start.
            constexpr int QW = KW / 4; // columns per lane
            auto quad_sums = [](float& u, float& v, float& w) { // each summed over the quad's lanes
#pragma unroll
                for (int off = 1; off < 4; off <<= 1) {
                    u += __shfl_xor_sync(0xffffffffu, u, off);
                    v += __shfl_xor_sync(0xffffffffu, v, off);
                    w += __shfl_xor_sync(0xffffffffu, w, off);
                }
            };
            const T* const xs = slot(g);
#pragma unroll
            for (int h = 0; h < 2; h++) {
                const int p = prior[h];
                const bool known = p >= 0 && p < k; // (the quad's four lanes alike)
                const float pen = known && l2 ? a.cnorm[b * k + p] : 0.f;
                float xx = 0.f, cc = 0.f, xc = 0.f;
                if (known) {
                    const int rr = tile_row(h);
                    const T* crow = c0 + (b * k + p) * ld;
#pragma unroll
                    for (int u = 0; u < QW / 8; u++) {
                        const int col = (lane % 4) * QW + u * 8;
                        if (col >= width) break;
                        const uint4 xw =
                            *reinterpret_cast<const uint4*>(xs + ((rr / 8) * (KW / 8) + col / 8) * 64 + (rr % 8) * 8);
                        uint4 cw;
                        if (vec && col + 8 <= width) {
                            cw = *reinterpret_cast<const uint4*>(crow + col);
                        } else {
                            unsigned short e[8];
                            const unsigned short* c16 = reinterpret_cast<const unsigned short*>(crow);
#pragma unroll
                            for (int t = 0; t < 8; t++) e[t] = col + t < width ? c16[col + t] : 0;
                            cw = make_uint4(e[0] | (uint32_t(e[1]) << 16), e[2] | (uint32_t(e[3]) << 16),
                                            e[4] | (uint32_t(e[5]) << 16), e[6] | (uint32_t(e[7]) << 16));
                        }
                        const uint32_t xv[4] = {xw.x, xw.y, xw.z, xw.w}, cv[4] = {cw.x, cw.y, cw.z, cw.w};
#pragma unroll
                        for (int t = 0; t < 4; t++) {
                            const float2 xf = pair_to_float2<T>(xv[t]), cf = pair_to_float2<T>(cv[t]);
                            xx = fmaf(xf.x, xf.x, fmaf(xf.y, xf.y, xx));
                            cc = fmaf(cf.x, cf.x, fmaf(cf.y, cf.y, cc));
                            xc = fmaf(xf.x, cf.x, fmaf(xf.y, cf.y, xc));
                        }
                    }
                }
                quad_sums(xx, cc, xc);
                if (known) {
                    const float sp = scale * xc;
                    const float v = fmaf(scale, xc, pen);
                    const float up = v + fabsf(scale) * 0x1p-14f * sqrtf(xx * cc) + 0x1p-22f * (fabsf(pen) + fabsf(sp));
                    if (up < best[h].v) best[h].v = up; // (not NaN)
                }
                if constexpr (FILTER) {
                    // The exact value for p from the fp32 rows (the filter reads their hi parts):
                    // pen - 2 x.c (or -x.c) with x.c in fp32 FMA, raised by three times the bound
                    // on an fp32 FMA value's rounding, e = 1.05 (d + 2) 2^-24 ||x|| max ||c|| (a
                    // chain of at most d + 2 terms and additions, of sum |x_i c_i| <= ||x|| ||c||)
                    // plus 2^-22 of the terms: at least the row's exact minimum plus 2 e. So the
                    // centroid that resolve_candidates picks (the smallest fp32 FMA value, within
                    // 2 e of the exact minimum) has its value within E (half the margin) of
                    // exact_up: the same pick as from the larger set of candidates.
                    float fx = 0.f, fc = 0.f, fxc = 0.f;
                    if (known) {
                        const float* xr = static_cast<const float*>(a.x) + (b * n + m0 + tile_row(h)) * a.d;
                        const float* cr = static_cast<const float*>(a.centroids) + (b * k + p) * a.d;
                        for (int64_t col = lane % 4; col < a.d; col += 4) {
                            const float xv = xr[col], cv = cr[col];
                            fx = fmaf(xv, xv, fx);
                            fc = fmaf(cv, cv, fc);
                            fxc = fmaf(xv, cv, fxc);
                        }
                    }
                    quad_sums(fx, fc, fxc);
                    if (known) {
                        const float v = l2 ? pen - 2.f * fxc : -fxc;
                        const float nx = sqrtf(fx), cm = fmaxf(a.cmax[b], sqrtf(fc));
                        const float e = (l2 ? 2.f : 1.f) * 1.05f * float(a.d + 2) * 0x1p-24f * nx * cm +
                                        0x1p-22f * (cm * cm + 2.f * nx * cm);
                        exact_up[h] = v + 3.f * e + 0x1p-22f * (fabsf(pen) + 2.f * fabsf(fxc));
                    }
                }
            }
        }
        if constexpr (AREG) load_fragments(slot(g));
        // Rows lane / 4 and lane / 4 + 8 of this warp; PERSIST: their ||x||^2 read now, its
        // latency hidden behind the products (a block-per-tile kernel reads it at the end: two
        // registers fewer in the loop).
        auto row_of = [&](int h) { return m0 + tile_row(h); };
        auto xnorm_of = [&](int h) { return row_of(h) < n ? a.xnorm[b * n + row_of(h)] : 0.f; }; // (PERSIST)
        float xn[2] = {0.f, 0.f};
        if constexpr (PERSIST) {
            xn[0] = xnorm_of(0), xn[1] = xnorm_of(1);
            __syncthreads(); // every warp has its fragments: slot g % 2 is free for tile g + 2
            if (g + 2 < g_end) {
                load_points(slot(g + 2), b2, r2);
                if (b2 != b1) load_first_pair(int(b2 % 2), b2);
            }
            cp_async_commit(); // one group per tile, empty or not: the wait above counts on it
        }
        if constexpr (FILTER) {
            // Each value's error: the product is xh.ch with x = xh + xr and c = ch + cr (xr, cr
            // the rounding residuals measured when the rows were split), x.c - xh.ch = xr.c +
            // xh.cr, so |error| <= ||xr|| ||c|| + ||xh|| max ||cr|| with ||xh|| <= ||x|| + ||xr||
            // (1% over for the norms' own rounding); the accumulation as in the split pass,
            // 2^-21 of ||xh|| ||ch|| per k16 step, over KSTEPS + 1; and the epilogue FMA's rounding
            // of the value itself, 2^-24 of at most max ||c||^2 + 2 ||x|| max ||c||. Plus the column
            // tags' 2^-19 on each side of a comparison.
            float margin[2] = {0.f, 0.f};
#pragma unroll
            for (int h = 0; h < 2; h++)
                if (row_of(h) < n) {
                    const int64_t o = b * n + row_of(h);
                    const float xl = sqrtf(a.xnorm[o]), cm = a.cmax[b], xr = a.xres[o], cr = a.cres[b];
                    const float xh = xl + xr, ch = cm + cr, vmax = ch * ch + 2.f * xh * ch;
                    const float prod = 1.01f * (xr * cm + xh * cr) + 1.05f * float(KSTEPS + 1) * 0x1p-21f * xh * ch;
                    margin[h] = 2.f * ((l2 ? 2.f : 1.f) * prod + 0x1p-23f * vmax) + 0x1p-17f * vmax + 1e-30f;
                    // A centroid can be the exact nearest only if its value is within E = margin / 2
                    // of exact_up: the running minimum may start at exact_up - E (a threshold of
                    // exact_up + E instead of the start's tensor value + 2 E, about half the
                    // candidates when the last label is still the nearest). It serves the
                    // thresholds only (the filter's labels come from resolve_candidates), and the
                    // exact nearest stays within them.
                    best[h].v = fminf(best[h].v, exact_up[h] - 0.5f * margin[h]);
                }
            __syncthreads(); // every warp has its fragments: the point tile's space holds candidates
            margins() = make_float2(margin[0], margin[1]);
            lost() = make_float2(INFINITY, INFINITY);
        }
        for (int j = 0; j < ntiles; j += 2) {
            if constexpr (TMA) {
                tile_landed(j);
                if (j + 1 < ntiles) tile_landed(j + 1);
            } else if (j > 0) {
                cp_async_wait<0>(); // this pair landed
                fence_proxy_async();
                __syncthreads(); // ... for every thread; every warpgroup is done with the previous pair
            }
            if (j + 1 < ntiles) {
                issue(acc0, j);
                issue(acc1, j + 1);
                // The next pair's loads go out while the tensor cores work on this one (issued
                // after the fold of tile j they came too late: ncu counted 18% of the warps'
                // samples waiting on the stages' full barriers; 1-4% faster). A ring of six stages,
                // the dead point tile holding two, loading two pairs ahead, was slower (4.78 ->
                // 5.28 ms at N=1M K=8192 fp16).
                if constexpr (!PERSIST) prefetch(j);
                wgmma_wait<1>();
                fence_operands(acc0);
                epilogue(acc0, j);
                release(j);
                wgmma_wait<0>();
                fence_operands(acc1);
                epilogue(acc1, j + 1);
                release(j + 1);
            } else {
                issue(acc0, j);
                if constexpr (!PERSIST) prefetch(j);
                wgmma_wait<0>();
                fence_operands(acc0);
                epilogue(acc0, j);
            }
        }

        // Merge (best, second) pairs over the 4 lanes of a quad (a row's columns are spread over them).
        auto merge_pair = [](Best& b, float& sec, float ov, int oi, float os) {
            if (before(ov, oi, b)) {
                sec = fminf(os, b.v);
                b = {ov, oi};
            } else {
                sec = fminf(sec, ov);
            }
        };
        Best bestr[2];
        float secondr[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            bestr[h] = best[h];
            secondr[h] = second[h];
#pragma unroll
            for (int off = 1; off < 4; off <<= 1) {
                const float ov = __shfl_xor_sync(0xffffffffu, bestr[h].v, off);
                const int oi = __shfl_xor_sync(0xffffffffu, bestr[h].i, off);
                const float os = __shfl_xor_sync(0xffffffffu, secondr[h], off);
                merge_pair(bestr[h], secondr[h], ov, oi, os);
            }
            const int64_t row = row_of(h);
            if constexpr (FILTER) {
                // The candidates within margin of the row's minimum, gathered from the quad's
                // four lanes into the point's slots (a count, then the indices); none, too many
                // or a lane out of slots: the point goes to the fp32 re-check instead.
                const float thr = bestr[h].v + (h ? margins().y : margins().x);
                const int have = cnt[h];
                int kept = 0;
#pragma unroll
                for (int q = 0; q < ML; q++) kept += q < have && cand_slot(q, h).x <= thr;
                int before_me = kept, over = (h ? lost().y : lost().x) <= thr;
#pragma unroll
                for (int off = 1; off < 4; off <<= 1) {
                    const int o = __shfl_up_sync(0xffffffffu, before_me, off, 4);
                    if (lane % 4 >= off) before_me += o;
                    over |= __shfl_xor_sync(0xffffffffu, over, off);
                }
                const int total = __shfl_sync(0xffffffffu, before_me, 3, 4);
                before_me -= kept;
                if (row < n) {
                    const int64_t o = b * n + row;
                    uint32_t* slot_out = a.candidates + o * kCandidateSlots;
                    if (over || total == 0 || total >= kCandidateSlots) {
                        if (lane % 4 == 0) {
                            slot_out[0] = ~0u;
                            const uint32_t pos = atomicAdd(a.recheck_count + b, 1u);
                            a.recheck_list[b * n + pos] = uint32_t(row);
                        }
                    } else {
                        if (lane % 4 == 0) slot_out[0] = uint32_t(total);
#pragma unroll
                        for (int q = 0; q < ML; q++)
                            if (q < have) {
                                const float2 c = cand_slot(q, h);
                                if (c.x <= thr) slot_out[1 + before_me++] = __float_as_uint(c.y);
                            }
                    }
                }
            } else if (lane % 4 == 0 && row < n) {
                const int64_t o = b * n + row;
                if constexpr (!PERSIST) xn[h] = a.xnorm[o];
                // START: no value at or below the start (which the error analysis rules out)
                // would leave no index; the point keeps its label (a valid cluster) rather than that.
                if (START && bestr[h].i == INT_MAX) bestr[h].i = a.labels[o];
                a.labels[o] = bestr[h].i;
                if constexpr (!SPLIT) count_label(a, b, row, bestr[h].i);
                // SPLIT: no distance here; launch_assign's fp32 pass writes every point's.
                if constexpr (!SPLIT) a.distances[o] = l2 ? fmaxf(xn[h] + bestr[h].v, 0.f) : -bestr[h].v;
                if constexpr (SPLIT) {
                    // |computed - exact| of one product <= vs * (eps * ||x|| * max ||c|| + under):
                    // dropped lo.lo and residuals of the fp16 split, 4 * 2^-22; accumulation,
                    // 2^-21 per full-size k16 wgmma step (a generous model of truncating fp32
                    // accumulation), KSTEPS hi.hi steps plus one for all the small-term steps
                    // issued first; under, fp16 underflow, 2^-24 sqrt(d) per operand in its scaled
                    // units. A gap of more than twice that makes our argmin the exact one (for the
                    // fp32 norms, which the re-check shares); inside it, the point is recomputed
                    // with fp32 FMA, whose own rounding only moves near-ties (as DESIGN.md asks).
                    const float eps = 1.05f * (4.f * 0x1p-22f + float(KSTEPS + 1) * 0x1p-21f);
                    const float xl = sqrtf(xn[h]), cm = a.cmax[b];
                    const float under = 1.05f * 0x1p-24f * sqrtf(float(a.d)) *
                                        (xl * ldexpf(1.f, -split_scale_exponent(cm)) +
                                         cm * ldexpf(1.f, -split_scale_exponent(a.xmax[b])));
                    const float bound = (l2 ? 2.f : 1.f) * (eps * xl * cm + under) + 1e-30f;
                    if (!(secondr[h] - bestr[h].v > 2.f * bound)) {
                        const uint32_t pos = atomicAdd(a.recheck_count + b, 1u);
                        a.recheck_list[b * n + pos] = uint32_t(row);
                    }
                }
            }
        }
        if constexpr (PERSIST) {
            if (++g >= g_end) break;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                best[h] = best_init();
                second[h] = FLT_MAX;
            }
            b = b1, m0 = r1;
            b1 = b2, r1 = r2;
            advance(b2, r2);
            pair = int(b % 2);
        } else {
            break;
        }
    }
    cp_async_wait<0>();
#endif
}

// The centroid rows a pass reads (the split fp16 copy for fp32 input), the columns it reads
// (the filter: the hi half) and the row stride.
const void* centroid_rows(const AssignArgs& a) { return a.dtype == DType::F32 ? a.csplit : a.centroids; }
int64_t centroid_width(const AssignArgs& a, Pass p) {
    return p == Pass::Plain ? a.d : (p == Pass::Split ? 2 * a.dsplit : a.dsplit);
}
int64_t centroid_stride(const AssignArgs& a, Pass p) { return p == Pass::Plain ? a.d : 2 * a.dsplit; }

// Whether the swizzled block-per-tile configurations can take their centroid tiles through
// the copy engine (and FLASH_NO_TMA is not set).
bool centroids_via_tma(const AssignArgs& a, Pass p) {
    static const bool disabled = std::getenv("FLASH_NO_TMA") != nullptr;
    return !disabled && tile_map_possible(centroid_rows(a), a.batch, a.k, centroid_width(a, p), centroid_stride(a, p));
}

template <class T, int KW, int BN, Pass P, bool AREG, bool SWZ = false, int NWG = 2, bool PERSIST = false,
          bool SELECT = false>
void launch_config(const AssignArgs& a, bool vec, cudaStream_t stream) {
    constexpr int BM = NWG * 64;
    constexpr size_t smem = smem_bytes<T, KW, BN, NWG, PERSIST, is_filter(P)>();
    static_assert(smem <= 227 * 1024, "tile configuration exceeds shared memory");
    auto kernel = assign_wgmma_kernel<T, KW, BN, NWG, P, AREG, SWZ, PERSIST, SELECT>;
    set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    const int64_t tiles = (a.n + BM - 1) / BM;
    const int64_t total = tiles * a.batch;
    // PERSIST: as many blocks as fit on the chip at once, consecutive tiles each.
    int64_t per_block = 1;
    if constexpr (PERSIST) {
        int fit = 0;
        FLASH_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&fit, kernel, NWG * 128, smem));
        const int64_t slots = int64_t(std::max(fit, 1)) * current_device_sms();
        per_block = (total + slots - 1) / slots;
    }
    const unsigned blocks = launch_blocks((total + per_block - 1) / per_block);
    CUtensorMap map{};
    if constexpr (uses_tma<SWZ, PERSIST>()) // the caller checked centroids_via_tma
        if (!make_tile_map(&map, centroid_rows(a), std::is_same_v<T, __nv_bfloat16>, a.batch, a.k,
                           centroid_width(a, P), centroid_stride(a, P), BN))
            throw std::runtime_error("faiss-flash: the driver refused the centroid tensor map");
    launch_dependent(kernel, blocks, NWG * 128, smem, stream, a, tiles, per_block, vec, map);
}

// The closed set of configurations, variant 0 = the heuristic's choice:
//   0: A in registers, swizzled centroid tiles of BN = 128 (BN = 64 where rows are 256 wide);
//   1: the same without swizzle; 2: A from shared memory, same tile; 3: A from shared memory,
//   BN = 64 (less shared memory) where rows are narrower than 256; 4: three warpgroups (192
//   points per block: a third less centroid traffic from L2 per product), swizzled BN = 64;
//   5: as 4 with two warpgroups (its plain pass without the start bound in the SELECT form);
//   6: as 5, persistent over point tiles with the centroids resident, for k <= 128 and at
//   least two point tiles per problem (else as 5).
// KW = padded width of a shared-memory row (d, or 2 * dsplit for split fp32).
// The swizzled block-per-tile configurations (0, 4, 5) take their centroid tiles through the
// copy engine. Where it cannot take them (rows not a multiple of 16 bytes) or FLASH_NO_TMA=1,
// 0 runs as 1 and 4, 5 as 3 (the same products, tiles loaded by ordinary copies).
template <class T, int KW, Pass P>
void launch_width(const AssignArgs& a, int variant, bool vec, cudaStream_t stream) {
    const bool persistent = variant == 6 && P == Pass::Plain && a.k <= 128 && a.n > 128;
    if (!persistent && (variant == 0 || variant >= 4) && !centroids_via_tma(a, P))
        variant = variant == 0 || KW == 256 ? 1 : 3;
    if constexpr (KW == 256) {
        if (variant == 0) launch_config<T, KW, 64, P, true, true>(a, vec, stream);
        else if (variant == 1) launch_config<T, KW, 64, P, true>(a, vec, stream);
        else launch_config<T, KW, 64, P, false>(a, vec, stream);
    } else {
        if (variant == 0) launch_config<T, KW, 128, P, true, true>(a, vec, stream);
        else if (variant == 1) launch_config<T, KW, 128, P, true>(a, vec, stream);
        else if (variant == 2) launch_config<T, KW, 128, P, false>(a, vec, stream);
        else if (variant == 3) launch_config<T, KW, 64, P, false>(a, vec, stream);
        else if (variant == 4) launch_config<T, KW, 64, P, true, true, 3>(a, vec, stream);
        else if (persistent) // (PERSIST only for Plain: no other instantiation)
            launch_config<T, KW, 64, P, true, true, 2, P == Pass::Plain>(a, vec, stream);
        else if (P == Pass::Plain && !a.start_from_labels) // (SELECT: Plain only, no other instantiation)
            launch_config<T, KW, 64, P, true, true, 2, false, P == Pass::Plain>(a, vec, stream);
        else launch_config<T, KW, 64, P, true, true, 2>(a, vec, stream);
    }
}

template <class T>
void launch_typed(const AssignArgs& a, int variant, bool vec, cudaStream_t stream) {
    if (a.d <= 64) launch_width<T, 64, Pass::Plain>(a, variant, vec, stream);
    else if (a.d <= 128) launch_width<T, 128, Pass::Plain>(a, variant, vec, stream);
    else launch_width<T, 256, Pass::Plain>(a, variant, vec, stream);
}

// The filter pass in variant 5's configuration, the one that wins for fp16 rows of its width
// (without the copy engine: the same tiles in the plain layout).
// From k = kSearchK on, FilterSearch: few tiles come within reach, so searching those for
// their column costs less than tagging every value.
constexpr int64_t kSearchK = 4096;
template <int KW, Pass P>
void launch_filter_as(const AssignArgs& a, cudaStream_t stream) {
    if (centroids_via_tma(a, P)) launch_config<__half, KW, 64, P, true, true, 2>(a, true, stream);
    else launch_config<__half, KW, 64, P, true>(a, true, stream);
}
template <int KW>
void launch_filter(const AssignArgs& a, cudaStream_t stream) {
    if (a.k >= kSearchK) launch_filter_as<KW, Pass::FilterSearch>(a, stream);
    else launch_filter_as<KW, Pass::Filter>(a, stream);
}

} // namespace

int64_t split_fp32_width(int64_t d) { return d <= 64 ? 64 : (d <= 128 ? 128 : 0); }

bool wgmma_supported(const AssignArgs& a) {
    if (std::getenv("FLASH_NO_WGMMA")) return false;
    int dev = 0, major = 0, minor = 0;
    FLASH_CUDA_CHECK(cudaGetDevice(&dev));
    FLASH_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    FLASH_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev));
    if (major != 9 || minor != 0) return false; // sm_90a code runs on compute capability 9.0 only
    return a.dtype == DType::F32 ? split_fp32_width(a.d) > 0 : a.d <= 256;
}

int assign_wgmma_variants(const AssignArgs& a) {
    if (a.dtype == DType::F32 && a.candidates) return 1; // the filter has one configuration
    const int64_t kw = a.dtype == DType::F32 ? 2 * split_fp32_width(a.d) : (a.d <= 64 ? 64 : a.d <= 128 ? 128 : 256);
    return kw == 256 ? 3 : (a.dtype == DType::F32 ? 6 : 7);
}

void launch_assign_wgmma(const AssignArgs& a, int variant, cudaStream_t stream) {
    if (a.dtype == DType::F32) {
        // The filter where a.candidates is set (one configuration), else the split products in
        // the chosen one.
        if (a.candidates) {
            if (a.dsplit == 64) launch_filter<64>(a, stream);
            else launch_filter<128>(a, stream);
        } else if (a.dsplit == 64) {
            launch_width<__half, 128, Pass::Split>(a, variant, true, stream);
        } else {
            launch_width<__half, 256, Pass::Split>(a, variant, true, stream);
        }
    } else {
        const bool vec = a.d % 8 == 0 && aligned16(a.x) && aligned16(a.centroids);
        if (a.dtype == DType::F16) launch_typed<__half>(a, variant, vec, stream);
        else launch_typed<__nv_bfloat16>(a, variant, vec, stream);
    }
    FLASH_LAUNCH_CHECK("assign_wgmma");
}

} // namespace flash::cuda_engine
