#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdlib>
#include <cub/device/device_radix_sort.cuh>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/pdl.cuh"
#include "kernels/cuda/update.cuh"
#include "kernels/lloyd_common.h"

namespace flash::cuda_engine {

namespace {

constexpr int kChunk = 64;               // sorted points per chunk (a fixed partition of the order)
constexpr int kThreads = 128;            // threads of the summing blocks
constexpr int64_t kMaxCountingK = 49152; // k up to which each warp's counters fit in shared memory
constexpr int64_t kSmallRows = 1 << 18;  // batches of at most this many points: short tiles
constexpr int kColumnWarps = 8;          // warps of a column-scan block (tiles split among them)
constexpr int kRounds = 32; // 32-label rounds a warp loads at once (tile kernels)
constexpr int64_t kStagedChunks = 8192; // chunks (512K points) from which the chunk sums stage their ids
constexpr int kFinishRow = 1024;        // widest row the finish prepares from shared memory

// Points per histogram tile. Small batches (latency-bound): 512 (16 rounds of a warp), twice
// the warps of 1024-point tiles for a histogram of at most 2 k entries per 1024 points (256 and
// 1024 measured within 1-3% of it, bench/RESULTS.md). Else at least 1024, more for large k so
// that the histogram (k entries per tile) stays within a few entries per point.
int64_t tile_for(int64_t k, int64_t rows) {
    if (rows <= kSmallRows && k <= 4096) return 512;
    return 32 * std::clamp<int64_t>((k + 127) / 128, 32, 256);
}
// Warps (tiles) per block of the histogram and scatter kernels: 64 KiB of counters at most,
// and at least 256 blocks while there are tiles for them (a warp's tile is a chain of
// dependent rounds: few tiles spread over the chip rather than packed on a few SMs).
int warps_for(int64_t k, int64_t total_tiles) {
    return int(std::clamp<int64_t>(std::min(65536 / (4 * k), total_tiles / 256), 1, 8));
}
int64_t ceil_div(int64_t a, int64_t b) {
    return (a + b - 1) / b;
}

__device__ __forceinline__ float load_as_float(const void* x, DType t, int64_t i) {
    if (t == DType::F32) return static_cast<const float*>(x)[i];
    if (t == DType::F16) return __half2float(static_cast<const __half*>(x)[i]);
    return __bfloat162float(static_cast<const __nv_bfloat16*>(x)[i]);
}

// The tile of the calling warp: warp w of block x takes tile x * warps + w, problem b = tile /
// tiles, tile t within it: rows [t * tile, i1) of labels + b * n; cnt = its k counters.
struct WarpTile {
    int64_t b, t, i1;
    int lane;
    uint32_t* cnt;
    bool valid;
    __device__ WarpTile(uint32_t* counters, int64_t k, int64_t rows, int64_t tile, int64_t tiles, int64_t total) {
        const int warp = threadIdx.x / 32;
        const int64_t tw = int64_t(blockIdx.x) * (blockDim.x / 32) + warp;
        lane = threadIdx.x % 32;
        valid = tw < total;
        b = tw / tiles;
        t = tw % tiles;
        i1 = min(rows, (t + 1) * tile);
        cnt = counters + warp * k;
    }
};

// One warp per tile of `tile` consecutive labels of one problem: its count per cluster, written
// tile-major, hist[(b * tiles + t) * k + c] (one contiguous row per tile: coalesced stores).
__global__ void tile_histogram(const int32_t* labels, int64_t n, int64_t rows, int64_t k, int64_t tile, int64_t tiles,
                               int64_t total_tiles, uint32_t* hist) {
    pdl_start(); // (launched with launch_dependent)
    extern __shared__ uint32_t counters[];
    const WarpTile w(counters, k, rows, tile, tiles, total_tiles);
    if (!w.valid) return;
    for (int64_t c = w.lane; c < k; c += 32) w.cnt[c] = 0;
    __syncwarp();
    const int32_t* lb = labels + w.b * n;
    for (int64_t base = w.t * tile; base < w.i1; base += 32 * kRounds) {
        int lab[kRounds]; // all loads first: one memory latency per kRounds rounds
#pragma unroll
        for (int r = 0; r < kRounds; r++) {
            const int64_t i = base + r * 32 + w.lane;
            lab[r] = i < w.i1 ? lb[i] : -1;
        }
#pragma unroll
        for (int r = 0; r < kRounds; r++) {
            if (base + r * 32 >= w.i1) break;               // (warp-uniform) past the tile: short tiles
            if (lab[r] >= 0) atomicAdd(&w.cnt[lab[r]], 1u); // integer: exact
        }
    }
    __syncwarp();
    uint32_t* h = hist + (w.b * tiles + w.t) * k;
    for (int64_t c = w.lane; c < k; c += 32) h[c] = w.cnt[c];
}

// Sum of v over lanes 0 .. lane of the warp.
__device__ __forceinline__ uint32_t warp_inclusive_sum(uint32_t v, int lane) {
    for (int off = 1; off < 32; off <<= 1) {
        const uint32_t o = __shfl_up_sync(0xffffffffu, v, off);
        if (lane >= off) v += o;
    }
    return v;
}

// The histograms' positions, in place: block (problem b, group g of 32 clusters) turns
// hist[(b * tiles + t) * k + c] of its clusters into the position of tile t's first point of
// cluster c among the problem's sorted points, counted from the group's first position (the
// group's clusters in order, each cluster's tiles in order), and writes the group's size to
// group_sizes[b * groups + g]. A lane per cluster (128-byte rows), the tiles split among the
// warps in contiguous segments: one pass sums the segments, one rewrites them.
__global__ void __launch_bounds__(32 * kColumnWarps)
    column_scan(uint32_t* hist, int64_t k, int64_t tiles, int64_t groups, uint32_t* group_sizes) {
    pdl_start();              // (launched with launch_dependent)
    constexpr int kBatch = 8; // loads in flight per thread
    __shared__ uint32_t seg[kColumnWarps][32];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t b = blockIdx.x / groups, g = blockIdx.x % groups, c = g * 32 + lane;
    const int64_t per = (tiles + kColumnWarps - 1) / kColumnWarps;
    const int64_t t0 = min(tiles, warp * per), t1 = min(tiles, t0 + per);
    uint32_t* h = hist + b * tiles * k + c;
    uint32_t sum = 0;
    if (c < k) {
#pragma unroll kBatch
        for (int64_t t = t0; t < t1; t++) sum += h[t * k];
    }
    seg[warp][lane] = sum;
    __syncthreads();
    uint32_t before = 0, total = 0; // this cluster's earlier segments; all of them
#pragma unroll
    for (int w = 0; w < kColumnWarps; w++) {
        const uint32_t v = seg[w][lane];
        before += w < warp ? v : 0u;
        total += v;
    }
    const uint32_t incl = warp_inclusive_sum(total, lane); // clusters up to this one
    if (warp == 0 && lane == 31) group_sizes[blockIdx.x] = incl;
    if (c >= k) return;
    uint32_t run = incl - total + before;
    for (int64_t t = t0; t < t1; t += kBatch) {
        uint32_t v[kBatch];
#pragma unroll
        for (int r = 0; r < kBatch; r++) v[r] = t + r < t1 ? h[(t + r) * k] : 0u;
#pragma unroll
        for (int r = 0; r < kBatch; r++)
            if (t + r < t1) {
                h[(t + r) * k] = run;
                run += v[r];
            }
    }
}

// The tile's first position for each cluster into cnt: its row p of column_scan's positions
// (relative to the cluster's group, zeroed again here for the next run's counts) plus `carry`
// (the problem's first position) and the sizes gs of the groups before. Warp `part` of PARTS
// sets the clusters of its share of every 32 groups. starts: the problem's (its first tile), or null.
template <int PARTS>
__device__ __forceinline__ void set_tile_counters(uint32_t* __restrict__ p, const uint32_t* __restrict__ gs, int64_t k,
                                                  uint32_t carry, int part, int lane, uint32_t* cnt,
                                                  uint32_t* __restrict__ starts) {
    constexpr int kGroupBatch = 32, R = kGroupBatch / PARTS; // groups a batch holds (a lane each); this warp's
    const int64_t groups = (k + 31) / 32;
    for (int64_t g0 = 0; g0 < groups; g0 += kGroupBatch) {
        const uint32_t size = g0 + lane < groups ? gs[g0 + lane] : 0u;
        const int64_t gw = g0 + part * R;
        uint32_t v[R];
#pragma unroll
        for (int r = 0; r < R; r++) { // loads batched ahead of the stores
            const int64_t c = (gw + r) * 32 + lane;
            v[r] = c < k ? p[c] : 0u;
        }
#pragma unroll
        for (int r = 0; r < R; r++) {
            const int64_t c = (gw + r) * 32 + lane;
            if (c < k) p[c] = 0u;
        }
        const uint32_t incl = warp_inclusive_sum(size, lane);
        const uint32_t first = carry + incl - size; // group g0 + lane's first position
        carry += __shfl_sync(0xffffffffu, incl, 31);
#pragma unroll
        for (int r = 0; r < R; r++) {
            const uint32_t at = __shfl_sync(0xffffffffu, first, part * R + r) + v[r];
            const int64_t c = (gw + r) * 32 + lane;
            if (c < k) {
                cnt[c] = at;
                if (starts) starts[c] = at;
            }
        }
    }
}

// One 32-label round of a tile placed (all lanes of the calling warp): label c of this lane
// (negative: none) goes to its cluster's next free position cnt[c] plus its rank among the
// round's equal labels (peers: __match_any_sync's mask of them), as key and point id.
__device__ __forceinline__ void place_round(uint32_t* cnt, int c, unsigned peers, int lane, uint32_t key, uint32_t id,
                                            uint32_t* __restrict__ keys, uint32_t* __restrict__ ids) {
    const bool active = c >= 0;
    uint32_t dst = 0;
    if (active) dst = cnt[c] + __popc(peers & ((1u << lane) - 1u));
    __syncwarp();
    if (active && lane == __ffs(peers) - 1) cnt[c] += __popc(peers);
    __syncwarp();
    if (active) {
        keys[dst] = key;
        ids[dst] = id;
    }
}

// Replays tile_histogram's tiles: each point goes to its cluster's next free position, taken
// in index order within the tile (ranks among equal labels of a 32-point round from
// __match_any_sync), so the order is stable. pos, group_sizes: column_scan's; a tile's
// positions are its row plus the problem's first position (b * rows) and the sizes of the
// groups before each cluster's. keys: the sorted global cluster ids (b * k + c). The first
// tile of each problem also writes its clusters' first positions, starts (batch, k).
__global__ void tile_scatter(const int32_t* __restrict__ labels, int64_t n, int64_t rows, int64_t k, int64_t tile,
                             int64_t tiles, int64_t total_tiles, uint32_t* __restrict__ pos,
                             const uint32_t* __restrict__ group_sizes, uint32_t* __restrict__ keys,
                             uint32_t* __restrict__ ids, uint32_t* __restrict__ starts) {
    pdl_start(); // (launched with launch_dependent)
    extern __shared__ uint32_t counters[];
    const WarpTile w(counters, k, rows, tile, tiles, total_tiles);
    if (!w.valid) return;
    const int32_t* lb = labels + w.b * n;
    int lab[kRounds]; // the tile's first labels, loaded first: their latency overlaps the counters'
    auto load_labels = [&](int64_t base) {
#pragma unroll
        for (int r = 0; r < kRounds; r++) {
            const int64_t i = base + r * 32 + w.lane;
            lab[r] = i < w.i1 ? lb[i] : -1 - w.lane; // inactive lanes: groups of their own
        }
    };
    load_labels(w.t * tile);
    set_tile_counters<1>(pos + (w.b * tiles + w.t) * k, group_sizes + w.b * ((k + 31) / 32), k, uint32_t(w.b * rows), 0,
                         w.lane, w.cnt, w.t == 0 ? starts + w.b * k : nullptr);
    __syncwarp();
    for (int64_t base = w.t * tile; base < w.i1; base += 32 * kRounds) {
        if (base != w.t * tile) load_labels(base);
#pragma unroll
        for (int r = 0; r < kRounds; r++) {
            if (base + r * 32 >= w.i1) break; // (warp-uniform) past the tile: short tiles
            const int c = lab[r];
            place_round(w.cnt, c, __match_any_sync(0xffffffffu, c), w.lane, uint32_t(w.b * k + c),
                        uint32_t(w.b * n + base + r * 32 + w.lane), keys, ids);
        }
    }
}

// tile_scatter for one tile of at most 32 * kRounds labels per block of kQuarterWarps warps
// (kQuarterMinK <= k <= kQuarterMaxK): the warps set the tile's counters together, each counts
// the labels of its share of the tile's rounds per cluster, the counts become each warp's first
// positions (the tile's counter plus the counts of the shares before), and each warp places its
// share. The same positions as tile_scatter, in chains a quarter as long (a lone warp per tile
// waited on its match and shared-memory latencies one round at a time: ncu, B=1 N=65536 K=1024).
constexpr int kQuarterWarps = 4;
constexpr int64_t kQuarterMinK = 256, kQuarterMaxK = 2048;
__global__ void __launch_bounds__(32 * kQuarterWarps)
    tile_scatter_quarters(const int32_t* __restrict__ labels, int64_t n, int64_t rows, int64_t k, int64_t tile,
                          int64_t tiles, uint32_t* __restrict__ pos, const uint32_t* __restrict__ group_sizes,
                          uint32_t* __restrict__ keys, uint32_t* __restrict__ ids, uint32_t* __restrict__ starts) {
    pdl_start();                                       // (launched with launch_dependent)
    constexpr int W = kQuarterWarps, RW = kRounds / W; // rounds per warp
    extern __shared__ uint32_t counters[];             // the tile's k counters, then each warp's k
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int64_t b = blockIdx.x / tiles, t = blockIdx.x % tiles;
    // This warp's share of the tile's rounds: labels [r0, i1).
    const int share = int((tile / 32 + W - 1) / W);
    const int64_t r0 = t * tile + int64_t(warp) * share * 32, i1 = min(min(rows, (t + 1) * tile), r0 + share * 32);
    uint32_t* mine = counters + (warp + 1) * k;
    const int32_t* lb = labels + b * n;
    int lab[RW];
#pragma unroll
    for (int r = 0; r < RW; r++) {
        const int64_t i = r0 + r * 32 + lane;
        lab[r] = i < i1 ? lb[i] : -1 - lane; // inactive lanes: groups of their own
    }
    for (int64_t c = lane; c < k; c += 32) mine[c] = 0u;
    set_tile_counters<W>(pos + (b * tiles + t) * k, group_sizes + b * ((k + 31) / 32), k, uint32_t(b * rows), warp,
                         lane, counters, t == 0 ? starts + b * k : nullptr);
    __syncwarp(); // this warp's counts zeroed
    unsigned peers[RW];
#pragma unroll
    for (int r = 0; r < RW; r++) {
        if (r0 + r * 32 >= i1) break; // (warp-uniform) past the tile
        peers[r] = __match_any_sync(0xffffffffu, lab[r]);
        if (lab[r] >= 0 && lane == __ffs(peers[r]) - 1) atomicAdd(&mine[lab[r]], uint32_t(__popc(peers[r])));
    }
    __syncthreads(); // every warp's counts, the tile's counters
    for (int64_t c = threadIdx.x; c < k; c += blockDim.x) {
        uint32_t run = counters[c];
#pragma unroll
        for (int q = 1; q <= W; q++) {
            const uint32_t cnt = counters[q * k + c];
            counters[q * k + c] = run;
            run += cnt;
        }
    }
    __syncthreads(); // each warp's first positions
#pragma unroll
    for (int r = 0; r < RW; r++) {
        if (r0 + r * 32 >= i1) break;
        place_round(mine, lab[r], peers[r], lane, uint32_t(b * k + lab[r]), uint32_t(b * n + r0 + r * 32 + lane), keys,
                    ids);
    }
}

// Radix path: sort keys (global cluster ids) and point ids. No counters: the cluster starts
// come from the sorted keys (cluster_starts), the sizes from the starts (finish_clusters).
__global__ void make_keys(const int32_t* labels, int64_t n, int64_t k, int64_t total, uint32_t* keys, uint32_t* ids) {
    pdl_start(); // (launched with launch_dependent)
    const int64_t g = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (g >= total) return;
    keys[g] = uint32_t((g / n) * k + labels[g]);
    ids[g] = uint32_t(g);
}

// starts[c] = first sorted position of cluster c, for all `clusters` (an empty cluster starts
// where the next non-empty one does, or at `total`): position p starts the clusters after
// keys[p - 1] up to keys[p]; p == total, those after the last key.
__global__ void cluster_starts(const uint32_t* keys, int64_t total, int64_t clusters, uint32_t* starts) {
    pdl_start(); // (launched with launch_dependent)
    const int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
    if (p > total) return;
    const int64_t lo = p == 0 ? 0 : int64_t(keys[p - 1]) + 1;
    const int64_t hi = p == total ? clusters : int64_t(keys[p]) + 1;
    for (int64_t c = lo; c < hi; c++) starts[c] = uint32_t(p);
}

// The sorted positions of chunk q: problem b = q / chunks (each problem holds `rows` sorted
// positions), then 64 consecutive positions from the problem's start. Chunks never straddle
// problems, so a problem's sums do not depend on the others in the batch.
struct ChunkSpan {
    int64_t p0, p1;
};
__device__ __forceinline__ ChunkSpan chunk_span(int64_t q, int64_t chunks, int64_t rows) {
    const int64_t b = q / chunks, r0 = (q % chunks) * kChunk;
    return {b * rows + r0, b * rows + min(rows, r0 + kChunk)};
}

// Chunk q summed in order, one piece per cluster it meets: the cluster open at the chunk's
// start goes to head[q], a cluster starting inside the chunk to startp[c] (a cluster starts
// inside at most one chunk). V elements per thread (a 16- or 8-byte load): G = d / V threads
// per row, 128 / G chunks per block. Needs d % V == 0, d / V <= 128 (STAGED: >= 2) and rows
// aligned to V elements. STAGED (large grids): the block's sorted cluster and point ids (its
// chunks are consecutive positions) are first read into shared memory together, coalesced
// (dynamic shared memory: 8 * kChunk * 128 / G bytes), instead of 16 broadcast reads of each
// per round of rows (B=32 N=65536 K=1024 fp16 210 vs 238 us; on a grid of a few hundred blocks
// the extra step costs 1 us, bench/RESULTS.md run 33).
template <class T, int V, bool STAGED>
__global__ void __launch_bounds__(kThreads)
    chunk_pieces_vec(const T* x, int64_t d, const uint32_t* keys, const uint32_t* ids, int64_t chunks, int64_t rows,
                     int64_t total_chunks, const float* weights, float* head, float* headw, float* startp,
                     float* startw) {
    pdl_start(); // (launched with launch_dependent)
    using Raw = std::conditional_t<V * sizeof(T) == 16, uint4, uint2>;
    static_assert(V * sizeof(T) == 16 || V * sizeof(T) == 8, "16- or 8-byte loads");
    constexpr int U = 16; // rows' loads in flight
    const int G = int(d / V), per_block = kThreads / G;
    const int grp = threadIdx.x / G, lane = threadIdx.x % G;
    const int64_t q0 = int64_t(blockIdx.x) * per_block; // the block's first chunk
    const uint32_t *kp = keys, *ip = ids;               // staged: the ids of position p at kp[p - base], ip[p - base]
    int64_t base = 0;
    if constexpr (STAGED) {
        extern __shared__ uint32_t staged[]; // [per_block * kChunk] keys, then as many ids
        base = chunk_span(q0, chunks, rows).p0;
        const int64_t count = chunk_span(min(total_chunks, q0 + per_block) - 1, chunks, rows).p1 - base;
        for (int64_t i = threadIdx.x; i < count; i += kThreads) {
            staged[i] = keys[base + i];
            staged[per_block * kChunk + i] = ids[base + i];
        }
        __syncthreads();
        kp = staged;
        ip = staged + per_block * kChunk;
    }
    const int64_t q = q0 + grp;
    if (grp >= per_block || q >= total_chunks) return;
    const auto [p0, p1] = chunk_span(q, chunks, rows);
    float acc[V], w = 0.f;
#pragma unroll
    for (int e = 0; e < V; e++) acc[e] = 0.f;
    uint32_t cur = kp[p0 - base];
    bool first = true;
    auto flush = [&] {
        float* dst = (first ? head + q * d : startp + int64_t(cur) * d) + lane * V;
#pragma unroll
        for (int e = 0; e < V; e++) dst[e] = acc[e];
        if (lane == 0) (first ? headw[q] : startw[cur]) = w;
    };
    for (int64_t p = p0; p < p1; p += U) {
        uint32_t key[U], id[U]; // (not staged: the round's ids first, in registers)
        Raw raw[U];
        float wt[U];
        if constexpr (!STAGED) {
#pragma unroll
            for (int u = 0; u < U; u++)
                if (p + u < p1) {
                    key[u] = keys[p + u];
                    id[u] = ids[p + u];
                }
        }
#pragma unroll
        for (int u = 0; u < U; u++)
            if (p + u < p1) {
                const uint32_t i = STAGED ? ip[p + u - base] : id[u];
                raw[u] = *reinterpret_cast<const Raw*>(x + int64_t(i) * d + lane * V);
                wt[u] = weights ? weights[i] : 1.f;
            }
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (p + u >= p1) break;
            const uint32_t ku = STAGED ? kp[p + u - base] : key[u];
            if (ku != cur) {
                flush();
                first = false;
                cur = ku;
                w = 0.f;
#pragma unroll
                for (int e = 0; e < V; e++) acc[e] = 0.f;
            }
            const T* v = reinterpret_cast<const T*>(&raw[u]);
#pragma unroll
            for (int e = 0; e < V; e++) {
                float f;
                if constexpr (sizeof(T) == 4)
                    f = float(v[e]);
                else if constexpr (std::is_same_v<T, __half>)
                    f = __half2float(v[e]);
                else
                    f = __bfloat162float(v[e]);
                acc[e] = weights ? fmaf(f, wt[u], acc[e]) : acc[e] + f;
            }
            w += wt[u];
        }
    }
    flush();
}

// The same pieces for any d and dtype: one chunk per block, threads over dimensions.
__global__ void __launch_bounds__(kThreads)
    chunk_pieces(const void* x, DType dtype, int64_t d, const uint32_t* keys, const uint32_t* ids, int64_t chunks,
                 int64_t rows, const float* weights, float* head, float* headw, float* startp, float* startw) {
    pdl_start(); // (launched with launch_dependent)
    const int64_t q = blockIdx.x;
    const auto [p0, p1] = chunk_span(q, chunks, rows);
    for (int64_t j = threadIdx.x; j <= d; j += blockDim.x) { // j == d: the weights
        uint32_t cur = keys[p0];
        bool first = true;
        float s = 0.f;
        auto flush = [&] {
            if (j < d)
                (first ? head[q * d + j] : startp[int64_t(cur) * d + j]) = s;
            else
                (first ? headw[q] : startw[cur]) = s;
        };
        for (int64_t p = p0; p < p1; p++) {
            const uint32_t key = keys[p], id = ids[p];
            if (key != cur) {
                flush();
                first = false;
                cur = key;
                s = 0.f;
            }
            const float wt = weights ? weights[id] : 1.f;
            if (j == d)
                s += wt;
            else if (weights)
                s = fmaf(load_as_float(x, dtype, int64_t(id) * d + j), wt, s);
            else
                s += load_as_float(x, dtype, int64_t(id) * d + j);
        }
        flush();
    }
}

// Block = one cluster: its pieces added in order (the piece of the chunk it starts in, then
// the heads of the chunks it continues into). starts[c] = first sorted position of cluster c;
// each problem holds `rows` positions in `chunks` chunks. ACCUMULATE: add float
// sums to double accumulators; else write means and sizes, and (prepared.norms set) the row
// as the assignment reads it.
template <bool ACCUMULATE>
__global__ void __launch_bounds__(kThreads)
    finish_clusters(int64_t k, int64_t d, int64_t k_frozen, const uint32_t* starts, int64_t clusters, int64_t rows,
                    int64_t chunks, const float* head, const float* headw, const float* startp, const float* startw,
                    uint32_t* sizes, float* centroids, float* counts, double* sums, double* wsums,
                    unsigned long long* ucounts, CentroidCopies prepared) {
    pdl_start(); // (launched with launch_dependent)
    const int64_t c = blockIdx.x, b = c / k;
    const int64_t s0 = starts[c];
    const int64_t s1 = c + 1 < clusters ? starts[c + 1] : clusters / k * rows;
    const uint32_t size = uint32_t(s1 - s0);
    if constexpr (!ACCUMULATE) {
        if (threadIdx.x == 0) sizes[c] = size;
        if (c % k < k_frozen) return;
    } else if (size == 0) {
        return;
    }
    const int64_t r0 = s0 - b * rows; // the cluster's first position within its problem
    const int64_t q0 = b * chunks + r0 / kChunk, q1 = size ? b * chunks + (s1 - 1 - b * rows) / kChunk : q0;
    const bool in_head = r0 % kChunk == 0;
    // The weight and the thread's first column in one pass (their reads issued together),
    // each added in the pieces' order; further columns (d > 128) after.
    const int64_t j0 = threadIdx.x;
    float w = 0.f, s0j = 0.f;
    if (size) {
        w = in_head ? headw[q0] : startw[c];
        if (j0 < d) s0j = in_head ? head[q0 * d + j0] : startp[c * d + j0];
        for (int64_t q = q0 + 1; q <= q1; q++) {
            w += headw[q];
            if (j0 < d) s0j += head[q * d + j0];
        }
    }
    if (threadIdx.x == 0) {
        if constexpr (ACCUMULATE) {
            wsums[c] += double(w);
            ucounts[c] += size;
        } else {
            counts[c] = w;
        }
    }
    // The row as written, also in shared memory for its preparation (d <= kFinishRow).
    __shared__ float row[kFinishRow];
    const bool row_shared = !ACCUMULATE && prepared.norms && d <= kFinishRow;
    const float inv = w != 0.f ? 1.f / w : 0.f;
    for (int64_t j = j0; j < d; j += blockDim.x) {
        float s = 0.f;
        if (j == j0) {
            s = s0j;
        } else if (size) {
            s = in_head ? head[q0 * d + j] : startp[c * d + j];
            for (int64_t q = q0 + 1; q <= q1; q++) s += head[q * d + j];
        }
        if constexpr (ACCUMULATE) {
            sums[c * d + j] += double(s);
        } else {
            centroids[c * d + j] = s * inv;
            if (row_shared) row[j] = s * inv;
        }
    }
    if constexpr (!ACCUMULATE) {
        if (prepared.norms) {
            __syncthreads(); // the row, written by the whole block
            if (threadIdx.x < 32)
                prepare_centroid_row(row_shared ? row : centroids + c * d, c, d, prepared, threadIdx.x);
        }
    }
}

int bits_for(int64_t values) {
    int b = 1;
    while ((int64_t(1) << b) < values) b++;
    return b;
}

unsigned blocks_for(int64_t items, int per_block) {
    return unsigned(ceil_div(items, per_block));
}

// The ordering: both sorts are stable, so they give the same permutation and the same sums;
// only their speed differs. The counting sort wins on small batches (fewer, lighter launches),
// the radix sort (CUB onesweep) on large ones, where the counting sort's scattered histogram
// and scatter traffic dominate (H100, N = 8M, k = 1024: 0.18 vs 0.59 ms, bench/RESULTS.md).
// FLASH_UPDATE_SORT=counting|radix forces one; read for every instance, so tests can switch.
constexpr int64_t kRadixRows = int64_t(1) << 20; // batch * n from which the radix sort is used
bool use_counting(int64_t batch, int64_t n, int64_t k) {
    const char* forced = std::getenv("FLASH_UPDATE_SORT");
    const std::string f = forced ? forced : "";
    const bool possible = k <= kMaxCountingK && batch * k * ceil_div(n, tile_for(k, batch * n)) < (int64_t(1) << 31);
    if (f == "radix" || !possible) return false;
    return f == "counting" || batch * n < kRadixRows;
}

} // namespace

size_t SortInverseUpdate::bytes(int64_t batch, int64_t n, int64_t d, int64_t k) {
    const size_t rows = size_t(batch * n), clusters = size_t(batch * k);
    const size_t chunks = size_t(batch * ceil_div(n, kChunk));
    // sorted keys / ids, sizes and starts, pieces
    size_t b = rows * 8 + clusters * 8 + (chunks + clusters) * size_t(d + 1) * 4;
    if (use_counting(batch, n, k))
        b += size_t(batch * k * ceil_div(n, tile_for(k, batch * n)) + batch * ceil_div(k, 32)) * 4; // histograms
    else
        b += rows * 8 * 2 + (8u << 20); // sort inputs and workspace
    return b;
}

SortInverseUpdate::SortInverseUpdate(int64_t batch, int64_t n, int64_t d, int64_t k, cudaStream_t stream)
    : batch_(batch), n_(n), d_(d), k_(k), sms_(current_device_sms()) {
    const int64_t total = batch * n, clusters = batch * k;
    if (total >= (int64_t(1) << 32) || clusters >= (int64_t(1) << 32))
        throw std::invalid_argument("faiss-flash: the CUDA update handles batch * n and batch * k below 2^32");
    counting_ = use_counting(batch, n, k);
    keys_.allocate(total, "sorted cluster ids");
    ids_.allocate(total, "sorted point ids");
    sizes_.allocate(clusters, "cluster sizes");
    starts_.allocate(clusters, "cluster starts");
    const int64_t chunks = batch * ceil_div(n, kChunk);
    head_.allocate(size_t(chunks) * d, "chunk sums");
    headw_.allocate(chunks, "chunk weights");
    startp_.allocate(size_t(clusters) * d, "cluster start pieces");
    startw_.allocate(clusters, "cluster start weights");
    if (counting_) {
        tile_ = tile_for(k, batch * n);
        quarters_ = k >= kQuarterMinK && k <= kQuarterMaxK && tile_ <= 32 * kRounds &&
                    !env_switched_off("FLASH_SCATTER_QUARTERS");
        counted_ = !env_switched_off("FLASH_LABEL_COUNTS");
        const int64_t hist_len = batch * k * ceil_div(n, tile_);
        hist_.allocate(hist_len, "tile histograms");
        FLASH_CUDA_CHECK(cudaMemsetAsync(hist_.get(), 0, sizeof(uint32_t) * hist_len, stream));
        group_sizes_.allocate(batch * ceil_div(k, 32), "cluster group sizes");
        const size_t smem = size_t(warps_for(k, batch * ceil_div(n, tile_))) * k * 4; // per-warp counters
        set_max_dynamic_smem(reinterpret_cast<const void*>(tile_histogram), smem);
        set_max_dynamic_smem(reinterpret_cast<const void*>(tile_scatter), smem);
    } else {
        end_bit_ = bits_for(clusters);
        keys_in_.allocate(total, "sort keys");
        ids_in_.allocate(total, "point ids");
        FLASH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes_, keys_in_.get(), keys_.get(),
                                                         ids_in_.get(), ids_.get(), total, 0, end_bit_, stream));
    }
    temp_.allocate(temp_bytes_, "radix-sort workspace");
}

void SortInverseUpdate::run(const void* x, DType dtype, const int32_t* labels, const float* weights, int64_t k_frozen,
                            float* centroids, float* counts, cudaStream_t stream, const CentroidCopies& prepared,
                            bool labels_counted) {
    const int64_t clusters = batch_ * k_;
    sort_and_sum(x, dtype, n_, labels, weights, stream, labels_counted);
    launch_dependent(finish_clusters<false>, unsigned(clusters), kThreads, 0, stream, k_, d_, k_frozen, starts_.get(),
                     clusters, n_, ceil_div(n_, kChunk), head_.get(), headw_.get(), startp_.get(), startw_.get(),
                     sizes_.get(), centroids, counts, nullptr, nullptr, nullptr, prepared);
    FLASH_LAUNCH_CHECK("finish_clusters");
}

void SortInverseUpdate::accumulate(const void* x, DType dtype, int64_t rows, const int32_t* labels,
                                   const float* weights, double* sums, double* wsums, unsigned long long* counts,
                                   cudaStream_t stream) {
    if (batch_ != 1 || rows > n_ || rows <= 0)
        throw std::logic_error("SortInverseUpdate::accumulate: one problem of at most n rows");
    sort_and_sum(x, dtype, rows, labels, weights, stream);
    launch_dependent(finish_clusters<true>, unsigned(k_), kThreads, 0, stream, k_, d_, 0, starts_.get(), k_, rows,
                     ceil_div(rows, kChunk), head_.get(), headw_.get(), startp_.get(), startw_.get(), nullptr, nullptr,
                     nullptr, sums, wsums, counts, CentroidCopies{});
    FLASH_LAUNCH_CHECK("finish_clusters");
}

void SortInverseUpdate::sort_and_sum(const void* x, DType dtype, int64_t rows, const int32_t* labels,
                                     const float* weights, cudaStream_t stream, bool counted) {
    const int64_t total = batch_ * rows, clusters = batch_ * k_;
    if (counting_) {
        const int64_t tiles = ceil_div(rows, tile_), total_tiles = batch_ * tiles, groups = ceil_div(k_, 32);
        const int warps = warps_for(k_, total_tiles);
        const size_t smem = size_t(warps) * k_ * 4;
        if (!counted) {
            launch_dependent(tile_histogram, blocks_for(total_tiles, warps), 32 * warps, smem, stream, labels, n_, rows,
                             k_, tile_, tiles, total_tiles, hist_.get());
            FLASH_LAUNCH_CHECK("tile_histogram");
        }
        launch_dependent(column_scan, unsigned(batch_ * groups), 32 * kColumnWarps, 0, stream, hist_.get(), k_, tiles,
                         groups, group_sizes_.get());
        FLASH_LAUNCH_CHECK("column_scan");
        if (quarters_)
            launch_dependent(tile_scatter_quarters, unsigned(total_tiles), 32 * kQuarterWarps,
                             (kQuarterWarps + 1) * k_ * 4, stream, labels, n_, rows, k_, tile_, tiles, hist_.get(),
                             group_sizes_.get(), keys_.get(), ids_.get(), starts_.get());
        else
            launch_dependent(tile_scatter, blocks_for(total_tiles, warps), 32 * warps, smem, stream, labels, n_, rows,
                             k_, tile_, tiles, total_tiles, hist_.get(), group_sizes_.get(), keys_.get(), ids_.get(),
                             starts_.get());
        FLASH_LAUNCH_CHECK("tile_scatter");
    } else {
        launch_dependent(make_keys, blocks_for(total, 256), 256, 0, stream, labels, n_, k_, total, keys_in_.get(),
                         ids_in_.get());
        FLASH_LAUNCH_CHECK("make_keys");
        size_t bytes = temp_bytes_;
        FLASH_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp_.get(), bytes, keys_in_.get(), keys_.get(), ids_in_.get(),
                                                         ids_.get(), total, 0, end_bit_, stream));
        launch_dependent(cluster_starts, blocks_for(total + 1, 256), 256, 0, stream, keys_.get(), total, clusters,
                         starts_.get());
        FLASH_LAUNCH_CHECK("cluster_starts");
    }
    const int64_t chunks = ceil_div(rows, kChunk), total_chunks = batch_ * chunks;
    // Elements per thread: 16-byte loads, except for 2-byte types where they would leave fewer
    // than 4 warps per SM (a small batch: the kernel is then bound by issue, and 8-byte loads
    // give twice the warps with half the instructions each; B=1 N=65536 K=1024 fp16 9.6 vs
    // 10.7 us, bench/RESULTS.md).
    const int64_t wide = 16 / dtype_size(dtype);
    const bool narrow = wide == 8 && total_chunks * (d_ / wide) < 4 * 32 * int64_t(sms_);
    const int64_t vec = narrow ? 4 : wide;
    // Ids staged in shared memory on large grids (see chunk_pieces_vec), with two threads per
    // row at least (the staged ids of 128 chunks would exceed 48 KiB); FLASH_STAGED_SUMS=0:
    // never (the same sums, read for every launch so that tests can switch).
    const bool staged = total_chunks >= kStagedChunks && d_ / vec >= 2 && !env_switched_off("FLASH_STAGED_SUMS");
    const bool vectorised =
        d_ % vec == 0 && d_ / vec <= kThreads && reinterpret_cast<uintptr_t>(x) % (vec * dtype_size(dtype)) == 0;
    const int per_block = vectorised ? int(kThreads / (d_ / vec)) : 1;
    const unsigned blocks = blocks_for(total_chunks, per_block);
    const size_t staged_bytes = size_t(per_block) * kChunk * 2 * sizeof(uint32_t);
    auto vec_pieces = [&](auto* typed) { // typed: x as const T*
        using T = std::remove_const_t<std::remove_pointer_t<decltype(typed)>>;
        constexpr int W = 16 / sizeof(T); // (fp32: both forms V = 4)
        auto kernel = narrow ? (staged ? chunk_pieces_vec<T, 4, true> : chunk_pieces_vec<T, 4, false>)
                             : (staged ? chunk_pieces_vec<T, W, true> : chunk_pieces_vec<T, W, false>);
        launch_dependent(kernel, blocks, kThreads, staged ? staged_bytes : 0, stream, typed, d_, keys_.get(),
                         ids_.get(), chunks, rows, total_chunks, weights, head_.get(), headw_.get(), startp_.get(),
                         startw_.get());
    };
    if (vectorised && dtype == DType::F32)
        vec_pieces(static_cast<const float*>(x));
    else if (vectorised && dtype == DType::F16)
        vec_pieces(static_cast<const __half*>(x));
    else if (vectorised)
        vec_pieces(static_cast<const __nv_bfloat16*>(x));
    else
        launch_dependent(chunk_pieces, blocks, kThreads, 0, stream, x, dtype, d_, keys_.get(), ids_.get(), chunks, rows,
                         weights, head_.get(), headw_.get(), startp_.get(), startw_.get());
    FLASH_LAUNCH_CHECK("chunk_pieces");
}

} // namespace flash::cuda_engine
