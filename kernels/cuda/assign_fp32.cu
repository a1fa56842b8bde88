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
template <int ROWS>
__device__ __forceinline__ void load_slice(float (*s)[ROWS + 4], const float* g, int64_t nrows, int64_t d,
                                           int64_t r0, int64_t k0) {
#pragma unroll
    for (int e = threadIdx.x; e < ROWS * BK; e += THREADS) {
        const int r = e / BK, kk = e % BK;
        const int64_t gr = r0 + r, gk = k0 + kk;
        s[kk][r] = (gr < nrows && gk < d) ? g[gr * d + gk] : 0.f;
    }
}

__global__ void __launch_bounds__(THREADS) assign_fp32_kernel(AssignArgs a, int64_t tiles_per_problem) {
    __shared__ __align__(16) float As[BK][BM + 4];
    __shared__ __align__(16) float Bs[BK][BN + 4];

    const int64_t b = blockIdx.x / tiles_per_problem;
    const int64_t m0 = (blockIdx.x % tiles_per_problem) * BM;
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
            load_slice<BM>(As, x, n, d, m0, k0);
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
        const int64_t row = m0 + ty * 4 + i;
        if (tx == 0 && row < n) {
            const int64_t o = b * n + row;
            a.labels[o] = r.i;
            a.distances[o] = l2 ? fmaxf(a.xnorm[o] + r.v, 0.f) : -r.v;
        }
    }
}

} // namespace

void launch_assign_fp32(const AssignArgs& a, cudaStream_t stream) {
    const int64_t tiles = (a.n + BM - 1) / BM;
    const int64_t blocks = tiles * a.batch;
    if (blocks > INT32_MAX) throw std::invalid_argument("faiss-flash: batch * n too large for one launch");
    assign_fp32_kernel<<<unsigned(blocks), THREADS, 0, stream>>>(a, tiles);
    FLASH_LAUNCH_CHECK("assign_fp32_kernel");
}

} // namespace flash::cuda_engine
