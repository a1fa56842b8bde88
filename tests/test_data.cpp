#include "test_data.h"

#include <cstdlib>
#include <random>
#include <string>
#include <set>

namespace flash_test {

std::vector<float> gaussian_mixture(int64_t n, int64_t d, int64_t ncenters, uint64_t seed, float separation) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<float> g(0.f, 1.f);
    std::vector<float> centres(ncenters * d);
    for (auto& c : centres) c = separation * g(rng);
    std::uniform_int_distribution<int64_t> pick(0, ncenters - 1);
    std::vector<float> x(n * d);
    for (int64_t i = 0; i < n; i++) {
        const int64_t c = pick(rng);
        for (int64_t j = 0; j < d; j++) x[i * d + j] = centres[c * d + j] + g(rng);
    }
    return x;
}

std::vector<float> integer_points(int64_t n, int64_t d, int range, uint64_t seed) {
    std::mt19937_64 rng(seed);
    std::uniform_int_distribution<int> u(0, range - 1);
    std::vector<float> x(n * d);
    for (auto& v : x) v = float(u(rng));
    return x;
}

flash::Backend test_backend() {
    const char* b = std::getenv("FLASH_TEST_BACKEND");
    if (b && std::string(b) == "cuda") return flash::Backend::CUDA;
    return flash::Backend::CPU;
}

flash::Points host_points(const void* data, int64_t n, int64_t d, flash::DType dtype, int64_t batch) {
    flash::Points p;
    p.data = data;
    p.dtype = dtype;
    p.n = n;
    p.d = d;
    p.batch = batch;
    return p;
}

double recall_at(const std::vector<int64_t>& truth, const std::vector<int64_t>& found, int64_t nq, int64_t k) {
    int64_t hits = 0;
    for (int64_t q = 0; q < nq; q++) {
        std::set<int64_t> t(truth.begin() + q * k, truth.begin() + (q + 1) * k);
        for (int64_t j = 0; j < k; j++) hits += t.count(found[q * k + j]);
    }
    return double(hits) / double(nq * k);
}

} // namespace flash_test
