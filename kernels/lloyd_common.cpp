#include "kernels/lloyd_common.h"

#include <atomic>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <utility>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace flash {

namespace {

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument("faiss-flash: " + what); }

// IEEE half / bfloat16 bit patterns: an all-ones exponent is Inf or NaN.
bool half_bits_finite(uint16_t h) { return (h & 0x7c00u) != 0x7c00u; }
bool bf16_bits_finite(uint16_t h) { return (h & 0x7f80u) != 0x7f80u; }

} // namespace

size_t dtype_size(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::F16:
        case DType::BF16: return 2;
    }
    fail("unknown dtype " + std::to_string(int(t)));
}

void validate_run(int64_t d, DType dtype, const float* centroids, int64_t k, int niter, int64_t k_frozen) {
    if (centroids == nullptr) fail("centroids is a null pointer");
    if (d <= 0) fail("dimension d must be positive, got " + std::to_string(d));
    if (k <= 0) fail("number of centroids k must be positive, got " + std::to_string(k));
    if (k > int64_t(1) << 31) fail("k too large: " + std::to_string(k));
    if (niter < 0) fail("niter must be >= 0, got " + std::to_string(niter));
    if (k_frozen < 0 || k_frozen > k) fail("k_frozen must be in [0, k], got " + std::to_string(k_frozen));
    dtype_size(dtype);
}

void validate_problem(const Points& x, const float* centroids, int64_t k, int niter, int64_t k_frozen,
                      bool require_n_ge_k) {
    if (x.data == nullptr) fail("points data is a null pointer");
    validate_run(x.d, x.dtype, centroids, k, niter, k_frozen);
    if (x.batch <= 0) fail("batch must be positive, got " + std::to_string(x.batch));
    if (x.n <= 0) fail("number of points n must be positive, got " + std::to_string(x.n));
    if (require_n_ge_k) check_enough_points(x.n, k);
}

void check_enough_points(int64_t n, int64_t k) {
    if (n < k)
        fail("number of training points (" + std::to_string(n) +
             ") should be at least as large as number of clusters (" + std::to_string(k) + ")");
}

void check_finite_host(const Points& x) {
    const size_t count = size_t(x.batch) * size_t(x.n) * size_t(x.d);
    bool ok = true;
    if (x.dtype == DType::F32) {
        const float* p = static_cast<const float*>(x.data);
#pragma omp parallel for reduction(&& : ok)
        for (int64_t i = 0; i < int64_t(count); i++) ok = ok && std::isfinite(p[i]);
    } else {
        const uint16_t* p = static_cast<const uint16_t*>(x.data);
        const bool half = x.dtype == DType::F16;
#pragma omp parallel for reduction(&& : ok)
        for (int64_t i = 0; i < int64_t(count); i++)
            ok = ok && (half ? half_bits_finite(p[i]) : bf16_bits_finite(p[i]));
    }
    if (!ok) fail("input contains NaN's or Inf's");
}

void check_weights_host(const float* weights, int64_t count) {
    if (!weights) return;
    int64_t first = count;
#pragma omp parallel for reduction(min : first)
    for (int64_t i = 0; i < count; i++)
        if (!(std::isfinite(weights[i]) && weights[i] >= 0) && i < first) first = i;
    if (first < count)
        fail("weights must be finite and >= 0; weight " + std::to_string(first) + " is " +
             std::to_string(weights[first]));
}

int split_empty_clusters(int64_t d, int64_t k, int64_t n, int64_t k_frozen, float* counts, float* centroids) {
    // Mirrors faiss 1.7.3 split_clusters exactly, including its float/double mix, so
    // that centroids stay bit-identical to faiss::Clustering.
    k -= k_frozen;
    centroids += k_frozen * d;
    const double eps = 1 / 1024.;
    int nsplit = 0;
    std::mt19937 rng(1234);
    for (int64_t ci = 0; ci < k; ci++) {
        if (counts[ci] != 0) continue;
        // FAISS would loop forever when no cluster has weight above 1 (possible with
        // weights); take the heaviest cluster then.
        const int64_t heaviest = std::max_element(counts, counts + k) - counts;
        int64_t cj = 0;
        for (; counts[heaviest] > 1; cj = (cj + 1) % k) {
            float p = (counts[cj] - 1.0) / (float)(n - k);
            float r = rng() / float(rng.max());
            if (r < p) break;
        }
        if (!(counts[heaviest] > 1)) cj = heaviest;
        std::memcpy(centroids + ci * d, centroids + cj * d, sizeof(float) * d);
        for (int64_t j = 0; j < d; j++) {
            if (j % 2 == 0) {
                centroids[ci * d + j] *= 1 + eps;
                centroids[cj * d + j] *= 1 - eps;
            } else {
                centroids[ci * d + j] *= 1 - eps;
                centroids[cj * d + j] *= 1 + eps;
            }
        }
        counts[ci] = counts[cj] / 2;
        counts[cj] -= counts[ci];
        nsplit++;
    }
    return nsplit;
}

void centroids_from_sums(const double* sums, const double* weights, int64_t k, int64_t d, int64_t k_frozen,
                         float* centroids, float* counts) {
    for (int64_t c = k_frozen; c < k; c++) {
        const double w = weights[c];
        counts[c - k_frozen] = float(w);
        float* cen = centroids + c * d;
        if (w == 0) {
            std::fill(cen, cen + d, 0.0f);
            continue;
        }
        const float inv = 1 / float(w);
        for (int64_t j = 0; j < d; j++) cen[j] = float(sums[c * d + j]) * inv;
    }
}

double imbalance_from_counts(const int64_t* counts, int64_t k) {
    double tot = 0, uf = 0;
    for (int64_t i = 0; i < k; i++) {
        tot += counts[i];
        uf += counts[i] * double(counts[i]);
    }
    return uf * k / (tot * tot);
}

double imbalance_factor(const int64_t* labels, int64_t n, int64_t k) {
    std::vector<int64_t> hist(k, 0);
    for (int64_t i = 0; i < n; i++) hist[labels[i]]++;
    return imbalance_from_counts(hist.data(), k);
}

namespace {
std::atomic<bool> g_stop{false};
static_assert(std::atomic<bool>::is_always_lock_free, "request_stop must be async-signal-safe");
} // namespace

void request_stop() { g_stop.store(true); }
bool stop_requested() { return g_stop.load(std::memory_order_relaxed); }
void clear_stop_request() { g_stop.store(false); }

std::vector<int64_t> faiss_rand_perm(int64_t n, int64_t seed) {
    std::vector<int64_t> perm(n);
    for (int64_t i = 0; i < n; i++) perm[i] = i;
    std::mt19937 rng((unsigned int)seed);
    for (int64_t i = 0; i + 1 < n; i++) {
        const int64_t i2 = i + int64_t(rng() % uint32_t(n - i));
        std::swap(perm[i], perm[i2]);
    }
    return perm;
}

double wall_seconds() {
    using clock = std::chrono::steady_clock;
    return std::chrono::duration<double>(clock::now().time_since_epoch()).count();
}

} // namespace flash
