// FlashAssign on tensor cores for fp16 / bf16 inputs (mma.sync m16n8k16, fp32 accumulation).
//
// A block owns BM = 128 points of one problem and streams every centroid tile (BN = 128)
// through shared memory in BK = 32 slices of the dimension, double buffered with cp.async.
// After the last slice of a centroid tile, the epilogue folds the 128 x 128 products into a
// running (value, index) minimum per point held in registers; nothing of the n x k matrix is
// ever written out. Any d: slices past d are zero-filled in shared memory.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/cuda/argmin.cuh"
#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"

namespace flash::cuda_engine {

namespace {

constexpr int BM = 128, BN = 128, BK = 32;
constexpr int LDS = BK + 8; // padded row (80 bytes): conflict-free ldmatrix
constexpr int THREADS = 256;  // 8 warps: 2 along points x 4 along centroids, 64 x 32 each

template <class T>
__device__ __forceinline__ T zero();
template <>
__device__ __forceinline__ __half zero<__half>() { return __float2half(0.f); }
template <>
__device__ __forceinline__ __nv_bfloat16 zero<__nv_bfloat16>() { return __float2bfloat16(0.f); }

template <class T>
__device__ __forceinline__ void mma16816(float* c, const uint32_t* a, const uint32_t* b);
template <>
__device__ __forceinline__ void mma16816<__half>(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* p) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void cp_async16(void* smem, const void* gmem) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(gmem));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// ROWS x BK slice of a row-major (nrows, d) matrix at (r0, k0) into s[ROWS][LDS].
template <int ROWS, class T>
__device__ __forceinline__ void load_slice(T* s, const T* g, int64_t nrows, int64_t d, int64_t r0, int64_t k0,
                                           bool vec) {
    constexpr int CHUNKS = ROWS * BK / 8;
#pragma unroll
    for (int c = threadIdx.x; c < CHUNKS; c += THREADS) {
        const int r = c / (BK / 8), kc = (c % (BK / 8)) * 8;
        const int64_t gr = r0 + r, gk = k0 + kc;
        T* dst = s + r * LDS + kc;
        if (vec && gr < nrows && gk + 8 <= d) {
            cp_async16(dst, g + gr * d + gk);
        } else {
#pragma unroll
            for (int e = 0; e < 8; e++) dst[e] = (gr < nrows && gk + e < d) ? g[gr * d + gk + e] : zero<T>();
        }
    }
}

template <class T>
__global__ void __launch_bounds__(THREADS) assign_mma_kernel(AssignArgs a, int64_t tiles_per_problem, bool vec) {
    __shared__ __align__(16) T As[2][BM * LDS];
    __shared__ __align__(16) T Bs[2][BN * LDS];
    __shared__ float red_v[4][BM];
    __shared__ int red_i[4][BM];

    const int64_t b = blockIdx.x / tiles_per_problem;
    const int64_t m0 = (blockIdx.x % tiles_per_problem) * BM;
    const int64_t n = a.n, d = a.d, k = a.k;
    const T* x = static_cast<const T*>(a.x) + b * n * d;
    const T* c = static_cast<const T*>(a.centroids) + b * k * d;
    const float* cn = a.cnorm + b * k;
    const bool l2 = a.metric == Metric::L2;

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / 4, wn = warp % 4;

    Best best[4][2];
#pragma unroll
    for (int mi = 0; mi < 4; mi++) best[mi][0] = best[mi][1] = best_init();

    const int nk = int((d + BK - 1) / BK);
    const int64_t steps = int64_t(nk) * ((k + BN - 1) / BN);
    float acc[4][4][4];
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;

    load_slice<BM>(As[0], x, n, d, m0, 0, vec);
    load_slice<BN>(Bs[0], c, k, d, 0, 0, vec);
    cp_async_commit();

    for (int64_t s = 0; s < steps; s++) {
        const int buf = int(s & 1);
        if (s + 1 < steps) {
            const int64_t n1 = ((s + 1) / nk) * BN, k1 = ((s + 1) % nk) * BK;
            load_slice<BM>(As[buf ^ 1], x, n, d, m0, k1, vec);
            load_slice<BN>(Bs[buf ^ 1], c, k, d, n1, k1, vec);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();

        const T* as = As[buf];
        const T* bs = Bs[buf];
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16) {
            uint32_t af[4][4], bf[4][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
                ldmatrix_x4(af[mi], as + (wm * 64 + mi * 16 + lane % 16) * LDS + kk + (lane / 16) * 8);
#pragma unroll
            for (int np = 0; np < 2; np++) {
                uint32_t r[4];
                ldmatrix_x4(r, bs + (wn * 32 + np * 16 + (lane / 16) * 8 + lane % 8) * LDS + kk + ((lane / 8) % 2) * 8);
                bf[np * 2][0] = r[0];
                bf[np * 2][1] = r[1];
                bf[np * 2 + 1][0] = r[2];
                bf[np * 2 + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++) mma16816<T>(acc[mi][ni], af[mi], bf[ni]);
        }

        if (int(s % nk) == nk - 1) { // epilogue of one centroid tile
            const int64_t n0 = (s / nk) * BN;
#pragma unroll
            for (int ni = 0; ni < 4; ni++)
#pragma unroll
                for (int e = 0; e < 2; e++) {
                    const int64_t col = n0 + wn * 32 + ni * 8 + (lane % 4) * 2 + e;
                    if (col < k) {
                        const float cnv = cn[col];
#pragma unroll
                        for (int mi = 0; mi < 4; mi++)
#pragma unroll
                            for (int h = 0; h < 2; h++) {
                                const float dot = acc[mi][ni][h * 2 + e];
                                const float v = l2 ? cnv - 2.f * dot : -dot;
                                if (before(v, int(col), best[mi][h])) best[mi][h] = {v, int(col)};
                            }
                    }
                }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
#pragma unroll
                    for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;
        }
        __syncthreads();
    }

    // Rows are shared by the 4 lanes of a quad, then by the 4 warps along centroids.
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const Best q = merge_lanes<4>(best[mi][h]);
            if (lane % 4 == 0) {
                const int row = wm * 64 + mi * 16 + h * 8 + lane / 4;
                red_v[wn][row] = q.v;
                red_i[wn][row] = q.i;
            }
        }
    __syncthreads();
    if (threadIdx.x < BM) {
        const int row = threadIdx.x;
        Best r = {red_v[0][row], red_i[0][row]};
        for (int w = 1; w < 4; w++) merge(r, Best{red_v[w][row], red_i[w][row]});
        const int64_t i = m0 + row;
        if (i < n) {
            const int64_t o = b * n + i;
            a.labels[o] = r.i;
            count_label(a, b, i, r.i);
            a.distances[o] = l2 ? fmaxf(a.xnorm[o] + r.v, 0.f) : -r.v;
        }
    }
}


// Resident-point variants for d <= 256: the block's BM x DPAD point tile is loaded once and
// stays in shared memory; whole TBN x DPAD centroid tiles stream through a double buffer,
// prefetched with cp.async while the previous tile is multiplied (one barrier per tile).
// WM x WN warps, each owning 64 points x (NI * 8) centroids of a tile.
template <class T, int DPAD, int WM, int WN, int NI>
__global__ void __launch_bounds__(WM* WN * 32) assign_mma_resident_kernel(AssignArgs a, int64_t tiles_per_problem,
                                                                          bool vec) {
    constexpr int NT = WM * WN * 32;     // threads
    constexpr int RBM = WM * 64;         // points per block
    constexpr int LD = DPAD + 8;         // padded row: conflict-free ldmatrix
    constexpr int TBN = WN * NI * 8;     // centroids per tile
    extern __shared__ __align__(16) unsigned char smem_raw[];
    T* As = reinterpret_cast<T*>(smem_raw); // [RBM][LD]
    T* Bs = As + RBM * LD;                   // [2][TBN][LD]
    __shared__ float red_v[WN][RBM];
    __shared__ int red_i[WN][RBM];

    const int64_t b = blockIdx.x / tiles_per_problem;
    const int64_t m0 = (blockIdx.x % tiles_per_problem) * RBM;
    const int64_t n = a.n, d = a.d, k = a.k;
    const T* x = static_cast<const T*>(a.x) + b * n * d;
    const T* c = static_cast<const T*>(a.centroids) + b * k * d;
    const float* cn = a.cnorm + b * k;
    const bool l2 = a.metric == Metric::L2;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int wm = warp / WN, wn = warp % WN;

    auto load_rows = [&](T* s, const T* g, int64_t nrows, int64_t r0, int rows) {
        const int chunks = rows * (DPAD / 8);
        for (int q = threadIdx.x; q < chunks; q += NT) {
            const int r = q / (DPAD / 8), kc = (q % (DPAD / 8)) * 8;
            const int64_t gr = r0 + r;
            T* dst = s + r * LD + kc;
            if (vec && gr < nrows && kc + 8 <= d) {
                cp_async16(dst, g + gr * d + kc);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++) dst[e] = (gr < nrows && kc + e < d) ? g[gr * d + kc + e] : zero<T>();
            }
        }
    };

    Best best[4][2];
#pragma unroll
    for (int mi = 0; mi < 4; mi++) best[mi][0] = best[mi][1] = best_init();

    const int64_t ntiles = (k + TBN - 1) / TBN;
    load_rows(As, x, n, m0, RBM);
    load_rows(Bs, c, k, 0, TBN);
    cp_async_commit();

    for (int64_t j = 0; j < ntiles; j++) {
        cp_async_wait<0>();
        __syncthreads();
        if (j + 1 < ntiles) {
            load_rows(Bs + ((j + 1) & 1) * TBN * LD, c, k, (j + 1) * TBN, TBN);
            cp_async_commit();
        }
        const T* bs = Bs + (j & 1) * TBN * LD;
        float acc[4][NI][4];
#pragma unroll
        for (int mi = 0; mi < 4; mi++)
#pragma unroll
            for (int ni = 0; ni < NI; ni++)
#pragma unroll
                for (int e = 0; e < 4; e++) acc[mi][ni][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < DPAD; kk += 16) {
            uint32_t af[4][4], bf[NI][2];
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
                ldmatrix_x4(af[mi], As + (wm * 64 + mi * 16 + lane % 16) * LD + kk + (lane / 16) * 8);
#pragma unroll
            for (int np = 0; np < NI / 2; np++) {
                uint32_t r[4];
                ldmatrix_x4(r, bs + (wn * NI * 8 + np * 16 + (lane / 16) * 8 + lane % 8) * LD + kk + ((lane / 8) % 2) * 8);
                bf[np * 2][0] = r[0];
                bf[np * 2][1] = r[1];
                bf[np * 2 + 1][0] = r[2];
                bf[np * 2 + 1][1] = r[3];
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < NI; ni++) mma16816<T>(acc[mi][ni], af[mi], bf[ni]);
        }
        const int64_t n0 = j * TBN;
#pragma unroll
        for (int ni = 0; ni < NI; ni++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int64_t col = n0 + wn * NI * 8 + ni * 8 + (lane % 4) * 2 + e;
                if (col < k) {
                    const float cnv = cn[col];
#pragma unroll
                    for (int mi = 0; mi < 4; mi++)
#pragma unroll
                        for (int h = 0; h < 2; h++) {
                            const float dot = acc[mi][ni][h * 2 + e];
                            const float v = l2 ? cnv - 2.f * dot : -dot;
                            if (before(v, int(col), best[mi][h])) best[mi][h] = {v, int(col)};
                        }
                }
            }
    }

#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const Best q = merge_lanes<4>(best[mi][h]);
            if (lane % 4 == 0) {
                const int row = wm * 64 + mi * 16 + h * 8 + lane / 4;
                red_v[wn][row] = q.v;
                red_i[wn][row] = q.i;
            }
        }
    __syncthreads();
    for (int row = threadIdx.x; row < RBM; row += NT) {
        Best r = {red_v[0][row], red_i[0][row]};
        for (int w = 1; w < WN; w++) merge(r, Best{red_v[w][row], red_i[w][row]});
        const int64_t i = m0 + row;
        if (i < n) {
            const int64_t o = b * n + i;
            a.labels[o] = r.i;
            count_label(a, b, i, r.i);
            a.distances[o] = l2 ? fmaxf(a.xnorm[o] + r.v, 0.f) : -r.v;
        }
    }
}

template <class T, int DPAD, int WM, int WN, int NI>
void launch_resident(const AssignArgs& a, cudaStream_t stream, bool vec) {
    constexpr int LD = DPAD + 8, TBN = WN * NI * 8, RBM = WM * 64, NT = WM * WN * 32;
    constexpr size_t smem = sizeof(T) * size_t(RBM + 2 * TBN) * LD;
    auto kernel = assign_mma_resident_kernel<T, DPAD, WM, WN, NI>;
    set_max_dynamic_smem(reinterpret_cast<const void*>(kernel), smem);
    const int64_t tiles = (a.n + RBM - 1) / RBM;
    kernel<<<launch_blocks(tiles * a.batch), NT, smem, stream>>>(a, tiles, vec);
}

// The closed set of resident configurations: variant 0 = 8 warps of 64 x 32, variant 1 =
// 4 warps of 64 x 64 (fewer shared-memory reads per MMA, fewer warps to hide latency).
template <class T, int DPAD>
void launch_resident_variant(const AssignArgs& a, int variant, cudaStream_t stream, bool vec) {
    if (variant == 1)
        launch_resident<T, DPAD, 2, 2, 8>(a, stream, vec);
    else
        launch_resident<T, DPAD, 2, 4, DPAD == 256 ? 2 : 4>(a, stream, vec);
}

template <class T>
void launch_typed(const AssignArgs& a, int variant, bool vec, cudaStream_t stream) {
    // Tile choice (one place): the point tile stays resident up to d = 256; above, the
    // split-d kernel streams both operands in BK slices.
    if (a.d <= 64) {
        launch_resident_variant<T, 64>(a, variant, stream, vec);
    } else if (a.d <= 128) {
        launch_resident_variant<T, 128>(a, variant, stream, vec);
    } else if (a.d <= 256) {
        launch_resident_variant<T, 256>(a, variant, stream, vec);
    } else {
        const int64_t tiles = (a.n + BM - 1) / BM;
        assign_mma_kernel<T><<<launch_blocks(tiles * a.batch), THREADS, 0, stream>>>(a, tiles, vec);
    }
}

} // namespace

int assign_mma_variants(const AssignArgs& a) { return a.d <= 256 ? 2 : 1; }

void launch_assign_mma(const AssignArgs& a, int variant, cudaStream_t stream) {
    const bool vec = a.d % 8 == 0 && aligned16(a.x) && aligned16(a.centroids);
    if (a.dtype == DType::F16)
        launch_typed<__half>(a, variant, vec, stream);
    else
        launch_typed<__nv_bfloat16>(a, variant, vec, stream);
    FLASH_LAUNCH_CHECK("assign_mma");
}

} // namespace flash::cuda_engine
