#include "faiss_ext/FlashClustering.h"

#include <faiss/impl/FaissAssert.h>
#include <faiss/utils/random.h>
#include <faiss/utils/utils.h>

#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/cpu/half_convert.h"
#include "kernels/lloyd_common.h"

namespace faiss_flash {

namespace {

flash::Metric engine_metric(faiss::MetricType m) {
    if (m == faiss::METRIC_L2) return flash::Metric::L2;
    if (m == faiss::METRIC_INNER_PRODUCT) return flash::Metric::InnerProduct;
    FAISS_THROW_FMT("faiss-flash: unsupported metric type %d (only L2 and inner product)", int(m));
}

} // namespace

FlashClustering::FlashClustering(int d, int k) : faiss::Clustering(d, k) {}

FlashClustering::FlashClustering(int d, int k, const faiss::ClusteringParameters& cp)
        : faiss::Clustering(d, k, cp) {}

void FlashClustering::train(idx_t n, const float* x, faiss::Index& index, const float* x_weights) {
    flash::Points p;
    p.data = x;
    p.dtype = flash::DType::F32;
    p.n = n;
    p.d = int64_t(d);
    train_points(p, index, x_weights);
}

// Follows faiss 1.7.3 Clustering::train_encoded step by step (same checks, messages,
// random streams, stats and index updates); only the iterations run on the engine.
void FlashClustering::train_points(const flash::Points& xin, faiss::Index& index, const float* weights) {
    idx_t nx = xin.n;
    FAISS_THROW_IF_NOT_MSG(xin.data != nullptr, "faiss-flash: training data is a null pointer");
    FAISS_THROW_IF_NOT_FMT(xin.batch == 1, "faiss-flash: FlashClustering trains one problem, got batch %" PRId64,
                           xin.batch);
    FAISS_THROW_IF_NOT_FMT(k > 0, "faiss-flash: number of clusters k must be positive, got %zd", k);
    FAISS_THROW_IF_NOT_FMT(d > 0, "faiss-flash: dimension d must be positive, got %zd", d);
    FAISS_THROW_IF_NOT_FMT(xin.d == int64_t(d), "faiss-flash: data dimension %" PRId64 " differs from d=%zd",
                           xin.d, d);
    FAISS_THROW_IF_NOT_FMT(xin.device < 0, "faiss-flash: FlashClustering takes host data (got device %d); "
                           "use flash::run_lloyd for device-resident data", xin.device);
    FAISS_THROW_IF_NOT_FMT(nx >= idx_t(k),
                           "Number of training points (%" PRId64 ") should be at least "
                           "as large as number of clusters (%zd)",
                           nx, k);
    FAISS_THROW_IF_NOT_FMT(index.d == idx_t(d), "Index dimension %d not the same as data dimension %d",
                           int(index.d), int(d));
    const flash::Metric metric = engine_metric(index.metric_type);

    double t0 = faiss::getmillisecs();
    try {
        flash::check_finite_host(xin);
    } catch (const std::invalid_argument&) {
        FAISS_THROW_MSG("input contains NaN's or Inf's");
    }
    try {
        flash::check_weights_host(weights, nx); // (FAISS takes any weights; these would give NaN centroids)
    } catch (const std::invalid_argument& e) {
        FAISS_THROW_MSG(e.what());
    }

    FAISS_THROW_IF_NOT_FMT(max_points_per_centroid > 0, "max_points_per_centroid must be positive, got %d",
                           max_points_per_centroid); // (FAISS itself reads out of bounds)
    const size_t row_bytes = flash::dtype_size(xin.dtype) * d;
    const uint8_t* x = static_cast<const uint8_t*>(xin.data);
    std::vector<uint8_t> x_sub;
    std::vector<float> w_sub;

    if (nx > idx_t(k) * max_points_per_centroid) {
        if (verbose)
            printf("Sampling a subset of %zd / %" PRId64 " for training\n", k * max_points_per_centroid, nx);
        std::vector<int> perm(nx);
        faiss::rand_perm(perm.data(), nx, seed);
        nx = k * max_points_per_centroid;
        x_sub.resize(size_t(nx) * row_bytes);
        for (idx_t i = 0; i < nx; i++) memcpy(x_sub.data() + i * row_bytes, x + size_t(perm[i]) * row_bytes, row_bytes);
        x = x_sub.data();
        if (weights) {
            w_sub.resize(nx);
            for (idx_t i = 0; i < nx; i++) w_sub[i] = weights[perm[i]];
            weights = w_sub.data();
        }
    } else if (nx < idx_t(k) * min_points_per_centroid) {
        fprintf(stderr,
                "WARNING clustering %" PRId64 " points to %zd centroids: "
                "please provide at least %" PRId64 " training points\n",
                nx, k, idx_t(k) * min_points_per_centroid);
    }

    auto load_row = [&](idx_t i, float* out) { flash::cpu::load_row(x, xin.dtype, i, d, out); };

    if (nx == idx_t(k)) {
        if (verbose)
            printf("Number of training points (%" PRId64 ") same as number of clusters, just copying\n", nx);
        centroids.resize(d * k);
        for (idx_t i = 0; i < nx; i++) load_row(i, centroids.data() + i * d);
        iteration_stats.push_back({0.0, 0.0, 0.0, 1.0, 0});
        index.reset();
        index.add(k, centroids.data());
        return;
    }

    if (verbose)
        printf("Clustering %" PRId64 " points in %zdD to %zd clusters, redo %d times, %d iterations\n", nx, d, k,
               nredo, niter);

    const bool lower_is_better = index.metric_type != faiss::METRIC_INNER_PRODUCT;
    float best_obj = lower_is_better ? HUGE_VALF : -HUGE_VALF;
    std::vector<faiss::ClusteringIterationStats> best_iteration_stats;
    std::vector<float> best_centroids;

    FAISS_THROW_IF_NOT_MSG(centroids.size() % d == 0, "size of provided input centroids not a multiple of dimension");
    const size_t n_input_centroids = centroids.size() / d;
    FAISS_THROW_IF_NOT_FMT(n_input_centroids <= k, "faiss-flash: %zd input centroids given for k=%zd",
                           n_input_centroids, k);
    if (verbose && n_input_centroids > 0)
        printf("  Using %zd centroids provided as input (%sfrozen)\n", n_input_centroids,
               frozen_centroids ? "" : "not ");

    double t_search_tot = 0;
    if (verbose) printf("  Preprocessing in %.2f s\n", (faiss::getmillisecs() - t0) / 1000.);
    t0 = faiss::getmillisecs();

    flash::Points points = xin;
    points.data = x;
    points.n = nx;

    flash::LloydOptions opt;
    opt.k = int64_t(k);
    opt.niter = niter;
    opt.metric = metric;
    opt.spherical = spherical;
    opt.int_centroids = int_centroids;
    opt.k_frozen = frozen_centroids ? int64_t(n_input_centroids) : 0;
    opt.weights = weights;
    apply_engine_options(flash, opt);
    opt.checkpoint_every = flash.checkpoint_every;
    opt.stop_on_sigint = flash.stop_on_sigint;
    // The engine updates centroids.data() in place; FAISS' own post-processing keeps the
    // CPU engine bit-identical (the CUDA engine post-processes on the device).
    opt.post_process = [this](float*, int64_t, int64_t) { post_process_centroids(); };

    for (int redo = 0; redo < nredo; redo++) {
        if (verbose && nredo > 1) printf("Outer iteration %d / %d\n", redo, nredo);

        centroids.resize(d * k);
        std::vector<int> perm(nx);
        faiss::rand_perm(perm.data(), nx, seed + 1 + redo * 15486557L);
        for (size_t i = n_input_centroids; i < k; i++) load_row(perm[i], centroids.data() + i * d);

        post_process_centroids();

        if (index.ntotal != 0) index.reset();
        if (!index.is_trained) index.train(k, centroids.data());
        index.add(k, centroids.data());

        opt.checkpoint_path = flash.checkpoint_path.empty() || nredo == 1
                                      ? flash.checkpoint_path
                                      : flash.checkpoint_path + ".redo" + std::to_string(redo);
        // Stats are cumulative over redos, as in FAISS.
        const double time_offset = (faiss::getmillisecs() - t0) / 1000.0;
        const double search_offset = t_search_tot / 1000.0;
        float obj = 0;
        opt.on_iteration = [&](int64_t, int it, const flash::IterationStats& s) {
            faiss::ClusteringIterationStats st = {float(s.obj), time_offset + s.time_s,
                                                  search_offset + s.search_time_s, s.imbalance, s.nsplit};
            iteration_stats.push_back(st);
            obj = st.obj;
            if (verbose) {
                printf("  Iteration %d (%.2f s, search %.2f s): objective=%g imbalance=%.3f nsplit=%d       \r", it,
                       st.time, st.time_search, st.obj, st.imbalance_factor, st.nsplit);
                fflush(stdout);
            }
        };
        const auto stats = flash::run_lloyd(points, centroids.data(), opt);
        if (!stats.empty() && !stats[0].empty()) t_search_tot += stats[0].back().search_time_s * 1000.0;

        if (niter > 0) {
            index.reset();
            if (update_index) index.train(k, centroids.data());
            index.add(k, centroids.data());
        }

        if (verbose) printf("\n");
        if (nredo > 1) {
            if ((lower_is_better && obj < best_obj) || (!lower_is_better && obj > best_obj)) {
                if (verbose) printf("Objective improved: keep new clusters\n");
                best_centroids = centroids;
                best_iteration_stats = iteration_stats;
                best_obj = obj;
            }
            index.reset();
        }
    }
    if (nredo > 1) {
        centroids = best_centroids;
        iteration_stats = best_iteration_stats;
        index.reset();
        index.add(k, best_centroids.data());
    }
}

} // namespace faiss_flash
