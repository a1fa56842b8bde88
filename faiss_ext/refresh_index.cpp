#include "faiss_ext/refresh_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/invlists/InvertedLists.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "faiss_ext/FlashClustering.h"
#include "kernels/flash_kmeans.h"

namespace faiss_flash {

namespace {

using idx_t = faiss::Index::idx_t;

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

void require(bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument("refresh_ivf: " + msg);
}

// The vectors and ids an IndexIVFFlat holds, read from its inverted lists.
struct Stored {
    std::vector<float> x; // (n, d) row-major
    std::vector<idx_t> ids; // (n,)
};

Stored read_ivf_flat(const faiss::IndexIVFFlat& index) {
    const faiss::InvertedLists* il = index.invlists;
    const size_t d = index.d;
    Stored s;
    s.x.reserve(size_t(index.ntotal) * d);
    s.ids.reserve(index.ntotal);
    for (size_t l = 0; l < il->nlist; l++) {
        const size_t ls = il->list_size(l);
        if (ls == 0) continue;
        faiss::InvertedLists::ScopedCodes codes(il, l);
        faiss::InvertedLists::ScopedIds ids(il, l);
        const float* v = reinterpret_cast<const float*>(codes.get());
        s.x.insert(s.x.end(), v, v + ls * d);
        s.ids.insert(s.ids.end(), ids.get(), ids.get() + ls);
    }
    return s;
}

// Rows sorted by id (an array direct map needs ids 0, 1, 2, ... in order).
void sort_by_id(Stored& s, size_t d) {
    std::vector<size_t> order(s.ids.size());
    std::iota(order.begin(), order.end(), size_t(0));
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return s.ids[a] < s.ids[b]; });
    Stored t;
    t.x.resize(s.x.size());
    t.ids.resize(s.ids.size());
    for (size_t i = 0; i < order.size(); i++) {
        std::memcpy(&t.x[i * d], &s.x[order[i] * d], d * sizeof(float));
        t.ids[i] = s.ids[order[i]];
    }
    s = std::move(t);
}

// index->add_with_ids(n, x, ids), with the coarse assignment computed by the engine when the
// quantizer is a flat index (exact search, ties to the lowest index: the lists FAISS' own
// quantizer->assign would give, except at float near-ties); other quantizers assign themselves.
void add_to_lists(faiss::IndexIVF* index, idx_t n, const float* x, const idx_t* ids, const FlashOptions& flash) {
    if (n == 0) return;
    const auto* flat = dynamic_cast<const faiss::IndexFlat*>(index->quantizer);
    const faiss::MetricType m = index->quantizer->metric_type;
    if (flat == nullptr || (m != faiss::METRIC_L2 && m != faiss::METRIC_INNER_PRODUCT)) {
        index->add_with_ids(n, x, ids);
        return;
    }
    flash::Points p;
    p.data = x;
    p.n = n;
    p.d = index->d;
    std::vector<int64_t> lists(n); // (n,) coarse list of each vector
    flash::assign_nearest(p, flat->get_xb(), idx_t(index->nlist),
                          m == faiss::METRIC_INNER_PRODUCT ? flash::Metric::InnerProduct : flash::Metric::L2,
                          lists.data(), nullptr, flash.backend, flash.cuda_device);
    static_assert(sizeof(int64_t) == sizeof(idx_t), "faiss idx_t is 64-bit");
    index->add_core(n, x, ids, reinterpret_cast<const idx_t*>(lists.data()));
}

// Moves centroids from the least to the most populated clusters before the warm-started
// Lloyd iterations. Lloyd only moves a centroid towards the points it already owns, so a
// dense region that appeared far from the old centroids stays covered by the few centroids
// that first captured it (huge lists, slow search) however long it runs. Here the largest
// cluster L (by the assignment to the old centroids, `labels`) is split with FAISS' own
// empty-cluster rule (a copy of centroid L, even dimensions scaled by 1 + 1/1024 and odd ones
// by 1 - 1/1024, the original the other way round) into the slot of the smallest cluster S,
// whose points fall to their neighbours; repeated while L is above twice the mean size and S
// below half of it, at most max_moves times, each cluster giving its slot at most once.
// centroids: (k, d), updated in place. Returns the number of moves.
idx_t rebalance(float* centroids, idx_t k, size_t d, const std::vector<int64_t>& labels, idx_t max_moves) {
    const double mean = double(labels.size()) / double(k);
    std::vector<double> h(k, 0.0);
    for (int64_t l : labels) h[l] += 1;
    std::vector<idx_t> by_size(k); // donors, smallest first (ties: lowest index)
    std::iota(by_size.begin(), by_size.end(), idx_t(0));
    std::stable_sort(by_size.begin(), by_size.end(), [&](idx_t a, idx_t b) { return h[a] < h[b]; });
    std::vector<std::pair<double, idx_t>> heap; // (size, cluster), largest on top (ties: lowest index)
    auto before = [](const std::pair<double, idx_t>& a, const std::pair<double, idx_t>& b) {
        return a.first < b.first || (a.first == b.first && a.second > b.second);
    };
    for (idx_t c = 0; c < k; c++) heap.emplace_back(h[c], c);
    std::make_heap(heap.begin(), heap.end(), before);
    std::vector<char> used(k, 0); // gave its slot, or received a split
    idx_t moves = 0;
    for (idx_t next = 0; moves < max_moves && next < k; next++) {
        const idx_t s = by_size[next];
        if (used[s]) continue;
        if (h[s] >= 0.5 * mean) break;
        std::pop_heap(heap.begin(), heap.end(), before);
        auto [size, l] = heap.back();
        heap.pop_back();
        if (size <= 2.0 * mean || l == s) break;
        float* cl = centroids + size_t(l) * d;
        float* cs = centroids + size_t(s) * d;
        constexpr float eps = 1.0f / 1024;
        for (size_t j = 0; j < d; j++) {
            const float v = cl[j];
            cs[j] = j % 2 == 0 ? v * (1 + eps) : v * (1 - eps);
            cl[j] = j % 2 == 0 ? v * (1 - eps) : v * (1 + eps);
        }
        used[s] = used[l] = 1;
        h[l] = h[s] = size / 2;
        heap.emplace_back(h[l], l);
        std::push_heap(heap.begin(), heap.end(), before);
        heap.emplace_back(h[s], s);
        std::push_heap(heap.begin(), heap.end(), before);
        moves++;
    }
    return moves;
}

} // namespace

RefreshStats refresh_ivf(faiss::IndexIVF* index, idx_t n, const float* x, const idx_t* ids,
                         const RefreshOptions& opt) {
    const auto t0 = std::chrono::steady_clock::now();
    require(index != nullptr, "index is a null pointer");
    require(index->is_trained, "index is not trained (train it once, then refresh)");
    require(index->quantizer != nullptr && index->quantizer->ntotal == idx_t(index->nlist),
            "index->quantizer must hold nlist=" + std::to_string(index->nlist) + " centroids");
    require(n >= 0, "n must be >= 0, got " + std::to_string(n));
    require(n == 0 || x != nullptr, "x is a null pointer");
    require(opt.niter >= 0, "niter must be >= 0, got " + std::to_string(opt.niter));
    require(opt.n_train_extra >= 0 && (opt.n_train_extra == 0 || opt.train_extra != nullptr),
            "train_extra must hold n_train_extra rows");
    const size_t d = index->d;
    const idx_t nlist = idx_t(index->nlist);
    const bool array_map = index->direct_map.type == faiss::DirectMap::Array;
    require(!(array_map && ids != nullptr), "ids cannot be given: the index has an array direct map");

    // 1. The vectors the index keeps, read back exactly from an IVF-Flat's lists.
    Stored kept;
    if (opt.keep_existing && index->ntotal > 0) {
        const auto* flat = dynamic_cast<const faiss::IndexIVFFlat*>(index);
        require(flat != nullptr && dynamic_cast<const faiss::IndexIVFFlatDedup*>(index) == nullptr &&
                        index->code_size == d * sizeof(float),
                "keep_existing needs an IndexIVFFlat (its codes are the vectors); for other IVF "
                "indexes pass keep_existing=false and the whole set to hold in x");
        kept = read_ivf_flat(*flat);
        if (array_map) sort_by_id(kept, d);
    }
    const idx_t n_kept = idx_t(kept.ids.size());

    // 2. Training sample: up to max_train rows of [kept; x; train_extra], a seeded partial
    //    Fisher-Yates draw sorted back into pool order.
    const idx_t pool = n_kept + n + opt.n_train_extra;
    const idx_t cap = opt.max_train > 0 ? opt.max_train : idx_t(index->cp.max_points_per_centroid) * nlist;
    require(pool >= nlist, "only " + std::to_string(pool) + " training rows for nlist=" + std::to_string(nlist));
    auto row = [&](idx_t i) -> const float* {
        if (i < n_kept) return &kept.x[size_t(i) * d];
        i -= n_kept;
        if (i < n) return x + size_t(i) * d;
        return opt.train_extra + size_t(i - n) * d;
    };
    std::vector<float> sample; // (n_train, d)
    const float* train_x = nullptr;
    idx_t n_train = std::min(pool, cap);
    if (n_train == pool && pool == n) {
        train_x = x; // the new vectors alone, in place
    } else {
        std::vector<idx_t> pick(pool);
        std::iota(pick.begin(), pick.end(), idx_t(0));
        if (n_train < pool) {
            std::mt19937 rng(opt.seed);
            for (idx_t i = 0; i < n_train; i++) {
                const idx_t j = i + idx_t(rng() % uint64_t(pool - i));
                std::swap(pick[i], pick[j]);
            }
            pick.resize(n_train);
            std::sort(pick.begin(), pick.end());
        }
        sample.resize(size_t(n_train) * d);
        for (idx_t i = 0; i < n_train; i++) std::memcpy(&sample[size_t(i) * d], row(pick[i]), d * sizeof(float));
        train_x = sample.data();
    }

    // 3. Warm-started k-means: the current centroids are the initial ones (all nlist given,
    //    so none is drawn at random); FAISS' parameters of the index otherwise.
    std::vector<float> old(size_t(nlist) * d); // (nlist, d)
    index->quantizer->reconstruct_n(0, nlist, old.data());
    RefreshStats st;
    st.n_train = n_train;
    const flash::Metric metric = index->quantizer->metric_type == faiss::METRIC_INNER_PRODUCT
            ? flash::Metric::InnerProduct
            : flash::Metric::L2;
    flash::Points p;
    p.data = train_x;
    p.n = n_train;
    p.d = int64_t(d);
    auto objective = [&](const float* c, int64_t* labels) {
        std::vector<float> dist(n_train);
        flash::assign_nearest(p, c, nlist, metric, labels, dist.data(), opt.flash.backend, opt.flash.cuda_device);
        double s = 0;
        for (float v : dist) s += v;
        return s;
    };
    // Rounds of (rebalance, then a share of the niter Lloyd iterations); one round without
    // rebalancing is plain FAISS k-means from the current centroids.
    std::vector<float> cur = old; // (nlist, d)
    bool have_obj_before = false;
    const idx_t max_rebalance = opt.max_rebalance < 0 ? nlist / 4 : opt.max_rebalance;
    const int rounds = max_rebalance > 0 && n_train > nlist ? std::max(1, std::min(opt.rebalance_rounds, opt.niter)) : 1;
    faiss::IndexFlat assign_index(int(d), index->quantizer->metric_type);
    for (int r = 0; r < rounds; r++) {
        if (max_rebalance > 0 && n_train > nlist) {
            std::vector<int64_t> labels(n_train);
            const double obj = objective(cur.data(), labels.data());
            if (r == 0) {
                st.obj_before = obj;
                have_obj_before = true;
            }
            st.n_rebalanced += rebalance(cur.data(), nlist, d, labels, max_rebalance);
        }
        FlashClustering clus(int(d), int(nlist), index->cp);
        clus.niter = opt.niter / rounds + (r < opt.niter % rounds ? 1 : 0);
        clus.nredo = 1;
        clus.seed = opt.seed;
        clus.verbose = opt.verbose;
        clus.max_points_per_centroid = int(std::min<idx_t>(n_train / nlist + 1, 1 << 30)); // no second subsampling
        clus.flash = opt.flash;
        clus.centroids = cur;
        clus.train(n_train, train_x, assign_index);
        // Without rebalancing, the first iteration's objective is that of the old centroids
        // (computed before the update), unless k-means did not iterate (niter 0, n == nlist).
        if (!have_obj_before) {
            if (clus.niter > 0 && n_train > nlist && !clus.iteration_stats.empty())
                st.obj_before = clus.iteration_stats.front().obj;
            else
                st.obj_before = objective(old.data(), nullptr);
            have_obj_before = true;
        }
        cur = clus.centroids;
    }
    st.obj_after = opt.objective_after ? objective(cur.data(), nullptr) : std::nan("");
    double shift = 0;
    for (idx_t c = 0; c < nlist; c++) {
        double s2 = 0;
        for (size_t j = 0; j < d; j++) {
            const double v = double(cur[c * d + j]) - old[c * d + j];
            s2 += v * v;
        }
        shift += std::sqrt(s2);
    }
    st.mean_shift = shift / double(nlist);
    st.kmeans_s = seconds_since(t0);

    // 4. Swap the centroids, rebuild the inverted lists.
    const auto t1 = std::chrono::steady_clock::now();
    index->quantizer->reset();
    index->quantizer->add(nlist, cur.data());
    if (auto* ivfpq = dynamic_cast<faiss::IndexIVFPQ*>(index); ivfpq && ivfpq->use_precomputed_table != 0)
        ivfpq->precompute_table(); // tables of ||c||^2 + 2 <c, r> depend on the coarse centroids
    sample = {};
    index->reset();
    // (an array direct map takes no ids: the kept rows are in id order, 0, 1, 2, ...)
    add_to_lists(index, n_kept, kept.x.data(), array_map ? nullptr : kept.ids.data(), opt.flash);
    kept = {};
    add_to_lists(index, n, x, ids, opt.flash);
    st.ntotal = index->ntotal;
    st.rebuild_s = seconds_since(t1);
    return st;
}

} // namespace faiss_flash
