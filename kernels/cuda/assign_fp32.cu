// FlashAssign for fp32 inputs with fp32 FMA products: exact fp32 arithmetic (no TF32), so
// every assignment is the fp32 argmin up to the rounding of one dot product.
//
// A block owns BM = 64 points and streams centroid tiles of BN = 64 through shared memory in
// BK = 16 slices (k-major, so each thread reads 4 consecutive points / centroids); every
// thread accumulates a 4 x 4 block of dot products in registers, then folds it into a running
// (value, index) minimum per point. The n x k matrix never leaves the chip.
#include <cstdint>

#include "kernels/cuda/argmin.cuh"
#include "kernels/cuda/assign.cuh"
#include "kernels/cuda/check.cuh"

namespace flash::cuda_engine {

namespace {

constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256;

// ROWS x BK slice of a row-major (nrows, d) fp32 matrix at (r0, k0), stored k-major.
// rows: when not null, slice row r is row rows[r] of g (-1 = none).
template <int ROWS>
__device__ __forceinline__ void load_slice(float (*s)[ROWS + 4], const float* g, int64_t nrows, int64_t d,
                                           int64_t r0, int64_t k0, const int64_t* rows = nullptr) {
#pragma unroll
    for (int e = threadIdx.x; e < ROWS * BK; e += THREADS) {
        const int r = e / BK, kk = e % BK;
        const int64_t gr = rows ? rows[r] : r0 + r, gk = k0 + kk;
        s[kk][r] = (gr >= 0 && gr < nrows && gk < d) ? g[gr * d + gk] : 0.f;
    }
}

// GATHER: the block's points are entries m0 .. m0 + BM of its problem's re-check list.
template <bool GATHER>
__global__ void __launch_bounds__(THREADS) assign_fp32_kernel(AssignArgs a, int64_t tiles_per_problem) {
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];
    __shared__ int64_t rows[BM];

    const int64_t b = blockIdx.x / tiles_per_problem;
    const int64_t m0 = (blockIdx.x % tiles_per_problem) * BM;
    if (GATHER) {
        const int64_t count = a.recheck_count[b];
        if (m0 >= count) return; // uniform over the block
        if (threadIdx.x < BM)
            rows[threadIdx.x] = m0 + threadIdx.x < count ? int64_t(a.recheck_list[b * a.n + m0 + threadIdx.x]) : -1;
        __syncthreads();
    }
    const int64_t n = a.n, d = a.d, k = a.k;
    const float* x = static_cast<const float*>(a.x) + b * n * d;
    const float* c = static_cast<const float*>(a.centroids) + b * k * d;
    const float* cn = a.cnorm + b * k;
    const bool l2 = a.metric == Metric::L2;
    const int ty = threadIdx.x / 16, tx = threadIdx.x % 16; // rows ty*4.., centroids tx*4..

    Best best[4];
#pragma unroll
    for (int i = 0; i < 4; i++) best[i] = best_init();

    for (int64_t n0 = 0; n0 < k; n0 += BN) {
        float acc[4][4] = {};
        for (int64_t k0 = 0; k0 < d; k0 += BK) {
            load_slice<BM>(As, x, n, d, m0, k0, GATHER ? rows : nullptr);
            load_slice<BN>(Bs, c, k, d, n0, k0);
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < BK; kk++) {
                const float4 av = *reinterpret_cast<const float4*>(&As[kk][ty * 4]);
                const float4 bv = *reinterpret_cast<const float4*>(&Bs[kk][tx * 4]);
                const float ar[4] = {av.x, av.y, av.z, av.w}, br[4] = {bv.x, bv.y, bv.z, bv.w};
#pragma unroll
                for (int i = 0; i < 4; i++)
#pragma unroll
                    for (int j = 0; j < 4; j++) acc[i][j] = fmaf(ar[i], br[j], acc[i][j]);
            }
            __syncthreads();
        }
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int64_t col = n0 + tx * 4 + j;
            if (col < k) {
                const float cnv = cn[col];
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    const float v = l2 ? cnv - 2.f * acc[i][j] : -acc[i][j];
                    if (before(v, int(col), best[i])) best[i] = {v, int(col)};
                }
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const Best r = merge_lanes<16>(best[i]);
        const int64_t row = GATHER ? rows[ty * 4 + i] : m0 + ty * 4 + i;
        if (tx == 0 && row >= 0 && row < n) {
            const int64_t o = b * n + row;
            a.labels[o] = r.i;
            a.distances[o] = l2 ? fmaxf(a.xnorm[o] + r.v, 0.f) : -r.v;
        }
    }
}

// One warp per point: the distance to its assigned centroid in fp32 FMA arithmetic (the
// split-fp32 products are only accurate to about 2^-16 of ||x|| ||c||, which cancellation
// in ||x||^2 + ||c||^2 - 2 x.c would expose in the reported distance and the objective).
__global__ void exact_distances(AssignArgs a) {
    const int64_t g = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (g >= a.batch * a.n) return;
    const int64_t b = g / a.n, d = a.d;
    const int64_t l = a.labels[g];
    const float* x = static_cast<const float*>(a.x) + g * d;
    const float* c = static_cast<const float*>(a.centroids) + (b * a.k + l) * d;
    float s = 0.f;
    for (int64_t j = lane; j < d; j += 32) s = fmaf(x[j], c[j], s);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    if (lane == 0)
        a.distances[g] = a.metric == Metric::L2 ? fmaxf(a.xnorm[g] + (a.cnorm[b * a.k + l] - 2.f * s), 0.f) : s;
}

} // namespace

void launch_exact_distances(const AssignArgs& a, cudaStream_t stream) {
    const int64_t warps = a.batch * a.n;
    exact_distances<<<unsigned((warps + 7) / 8), 256, 0, stream>>>(a);
    FLASH_LAUNCH_CHECK("exact_distances");
}

void launch_assign_fp32(const AssignArgs& a, cudaStream_t stream) {
    const int64_t tiles = (a.n + BM - 1) / BM;
    const int64_t blocks = tiles * a.batch;
    if (blocks > INT32_MAX) throw std::invalid_argument("faiss-flash: batch * n too large for one launch");
    assign_fp32_kernel<false><<<unsigned(blocks), THREADS, 0, stream>>>(a, tiles);
    FLASH_LAUNCH_CHECK("assign_fp32_kernel");
}

// Sized for every point; blocks past their problem's list length return at once (the
// length is only known on the device, and reading it would cost a host sync).
void launch_assign_fp32_recheck(const AssignArgs& a, cudaStream_t stream) {
    const int64_t tiles = (a.n + BM - 1) / BM;
    const int64_t blocks = tiles * a.batch;
    if (blocks > INT32_MAX) throw std::invalid_argument("faiss-flash: batch * n too large for one launch");
    assign_fp32_kernel<true><<<unsigned(blocks), THREADS, 0, stream>>>(a, tiles);
    FLASH_LAUNCH_CHECK("assign_fp32_recheck");
}

} // namespace flash::cuda_engine
