// pybind11 bindings: thin. Arrays arrive as raw pointers + shapes validated on the Python side
// (python/faiss_flash/_arrays.py), which is what lets numpy arrays and torch tensors (CPU or
// CUDA) pass without copies. The GIL is released around every computation.
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVF.h>
#include <faiss/IndexIVFPQ.h>
#include <faiss/IndexPQ.h>
#include <faiss/impl/FaissAssert.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <faiss/IndexIVFFlat.h>
#include <faiss/utils/random.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "faiss_ext/FlashAssignIndex.h"
#include "faiss_ext/FlashClustering.h"
#include "faiss_ext/refresh_index.h"
#include "faiss_ext/train_index.h"
#include "kernels/checkpoint.h"
#include "kernels/flash_kmeans.h"

namespace py = pybind11;

namespace {

using farray = py::array_t<float, py::array::c_style | py::array::forcecast>;

flash::Backend backend_of(const std::string& b) {
    if (b == "auto") return flash::Backend::Auto;
    if (b == "cpu") return flash::Backend::CPU;
    if (b == "cuda") return flash::Backend::CUDA;
    throw std::invalid_argument("device: expected 'auto', 'cpu' or 'cuda[:N]', got '" + b + "'");
}

flash::DType dtype_of(const std::string& t) {
    if (t == "float32") return flash::DType::F32;
    if (t == "float16") return flash::DType::F16;
    if (t == "bfloat16") return flash::DType::BF16;
    throw std::invalid_argument("dtype: expected float32, float16 or bfloat16, got " + t);
}

faiss::Index* index_from(uintptr_t ptr) {
    if (ptr == 0) throw std::invalid_argument("index: null faiss index");
    return reinterpret_cast<faiss::Index*>(ptr);
}

// A faiss Python index reaches us as int(index.this): an object built by python3-faiss' own
// static libfaiss. dynamic_cast works across the two copies (libstdc++ compares type_info by
// name); should it ever fail, the Python class name (after faiss.downcast_index) is trusted
// and the pointer is static_cast to that concrete class.
bool g_force_name_cast = false; // test hook: take the fallback path

template <class T>
T* concrete_cast(faiss::Index* index) {
    return g_force_name_cast ? nullptr : dynamic_cast<T*>(index);
}

faiss::IndexIVF* as_ivf(uintptr_t ptr, const std::string& type_name) {
    faiss::Index* index = index_from(ptr);
    if (auto* ivf = concrete_cast<faiss::IndexIVF>(index)) return ivf;
    if (type_name == "IndexIVFFlat") return static_cast<faiss::IndexIVFFlat*>(index);
    if (type_name == "IndexIVFPQ") return static_cast<faiss::IndexIVFPQ*>(index);
    return nullptr;
}

faiss::IndexPQ* as_pq(uintptr_t ptr, const std::string& type_name) {
    faiss::Index* index = index_from(ptr);
    if (auto* pq = concrete_cast<faiss::IndexPQ>(index)) return pq;
    if (type_name == "IndexPQ") return static_cast<faiss::IndexPQ*>(index);
    return nullptr;
}

// What dynamic_cast sees behind a Python index pointer (tests check it against the Python type).
std::string cast_probe(uintptr_t ptr) {
    faiss::Index* index = index_from(ptr);
    if (dynamic_cast<faiss::IndexIVFPQ*>(index)) return "IndexIVFPQ";
    if (dynamic_cast<faiss::IndexIVFFlat*>(index)) return "IndexIVFFlat";
    if (dynamic_cast<faiss::IndexIVF*>(index)) return "IndexIVF";
    if (dynamic_cast<faiss::IndexPQ*>(index)) return "IndexPQ";
    if (dynamic_cast<faiss::IndexFlatL2*>(index)) return "IndexFlatL2";
    if (dynamic_cast<faiss::IndexFlatIP*>(index)) return "IndexFlatIP";
    if (dynamic_cast<faiss::IndexFlat*>(index)) return "IndexFlat";
    return "Index";
}

// Zero-copy check: the data pointer the engine was last handed (tests compare it with the
// caller's buffer address).
std::atomic<uintptr_t> g_last_points_ptr{0};

py::list stats_list(const std::vector<flash::IterationStats>& st) {
    py::list out;
    for (const auto& s : st) {
        py::dict d;
        d["obj"] = s.obj;
        d["time"] = s.time_s;
        d["time_search"] = s.search_time_s;
        d["imbalance_factor"] = s.imbalance;
        d["nsplit"] = s.nsplit;
        out.append(d);
    }
    return out;
}

// Several GPUs / streaming options from faiss_flash._arrays.parse_placement (already
// validated there) into flash::LloydOptions or faiss_flash::FlashOptions (same field names).
template <class Options>
void apply_placement(const py::dict& p, Options& o) {
    for (auto item : p) {
        const std::string key = py::str(item.first);
        const py::handle v = item.second;
        if (key == "devices") o.cuda_devices = v.cast<std::vector<int>>();
        else if (key == "streaming") {
            const std::string m = v.cast<std::string>();
            o.streaming = m == "force" ? flash::Streaming::Force : m == "off" ? flash::Streaming::Off : flash::Streaming::Auto;
        } else if (key == "max_gpu_memory") o.device_memory_limit = v.cast<int64_t>();
        else if (key == "transfer_dtype") o.transfer_dtype = dtype_of(v.cast<std::string>());
        else if (key == "piece_rows") o.stream_piece_rows = v.cast<int64_t>();
        else if (key == "fp32_mode")
            o.fp32_mode = v.cast<std::string>() == "tf32" ? flash::Fp32Mode::TF32 : flash::Fp32Mode::Exact;
        else throw std::invalid_argument("unknown placement option '" + key + "'");
    }
}

// How the sharded / streaming engine placed the points, or None when it did not run.
py::object placement_report(const flash::Placement& p) {
    if (p.shards == 0) return py::none();
    py::dict out;
    out["shards"] = p.shards;
    out["pieces"] = p.pieces;
    out["resident_rows"] = p.resident_rows;
    out["streamed_rows"] = p.streamed_rows;
    out["streamed_bytes"] = p.streamed_bytes;
    out["host_pinned"] = p.host_pinned;
    out["converted_rows"] = p.converted_rows;
    out["setup_s"] = p.setup_s;
    out["copy_s"] = p.copy_s;
    out["compute_s"] = p.compute_s;
    out["iteration_s"] = p.iteration_s;
    return std::move(out);
}

// faiss::Clustering semantics end to end; `index` is a faiss (Python) index. Returns the
// centroids, the iteration stats and the placement report (placement_report).
py::tuple train_clustering(farray x, int64_t k, const py::dict& params, std::optional<farray> weights,
                           std::optional<farray> init, uintptr_t index_ptr, const std::string& backend, int device,
                           const py::dict& placement) {
    if (x.ndim() != 2) throw std::invalid_argument("x: expected a 2-D array (n, d)");
    const int64_t n = x.shape(0), d = x.shape(1);
    faiss_flash::FlashClustering clus(static_cast<int>(d), static_cast<int>(k));
    for (auto item : params) {
        const std::string key = py::str(item.first);
        const py::handle v = item.second;
        if (key == "niter") clus.niter = v.cast<int>();
        else if (key == "nredo") clus.nredo = v.cast<int>();
        else if (key == "verbose") clus.verbose = v.cast<bool>();
        else if (key == "spherical") clus.spherical = v.cast<bool>();
        else if (key == "int_centroids") clus.int_centroids = v.cast<bool>();
        else if (key == "update_index") clus.update_index = v.cast<bool>();
        else if (key == "frozen_centroids") clus.frozen_centroids = v.cast<bool>();
        else if (key == "min_points_per_centroid") clus.min_points_per_centroid = v.cast<int>();
        else if (key == "max_points_per_centroid") clus.max_points_per_centroid = v.cast<int>();
        else if (key == "seed") clus.seed = v.cast<int>();
        else if (key == "decode_block_size") clus.decode_block_size = v.cast<size_t>();
        else if (key == "checkpoint_path") clus.flash.checkpoint_path = v.cast<std::string>();
        else if (key == "checkpoint_every") clus.flash.checkpoint_every = v.cast<int>();
        else throw std::invalid_argument("unknown clustering parameter '" + key + "'");
    }
    clus.flash.backend = backend_of(backend);
    clus.flash.cuda_device = device;
    clus.flash.stop_on_sigint = true;
    apply_placement(placement, clus.flash);
    flash::Placement placed;
    clus.flash.placement = &placed;
    if (weights && (weights->ndim() != 1 || weights->shape(0) != n))
        throw std::invalid_argument("weights: expected shape (" + std::to_string(n) + ",)");
    if (init) {
        if (init->ndim() != 2 || init->shape(1) != d)
            throw std::invalid_argument("init_centroids: expected shape (m, " + std::to_string(d) + ")");
        clus.centroids.assign(init->data(), init->data() + init->size());
    }
    faiss::Index* index = index_from(index_ptr);
    {
        py::gil_scoped_release release;
        clus.train(n, x.data(), *index, weights ? weights->data() : nullptr);
    }
    py::array_t<float> cen({int64_t(clus.centroids.size() / d), d});
    std::copy(clus.centroids.begin(), clus.centroids.end(), cen.mutable_data());
    std::vector<flash::IterationStats> st;
    for (const auto& s : clus.iteration_stats)
        st.push_back({s.obj, s.time, s.time_search, s.imbalance_factor, s.nsplit});
    return py::make_tuple(cen, stats_list(st), placement_report(placed));
}

flash::Points points(uintptr_t ptr, const std::string& dtype, int64_t batch, int64_t n, int64_t d, int device) {
    flash::Points p;
    p.data = reinterpret_cast<const void*>(ptr);
    p.dtype = dtype_of(dtype);
    p.batch = batch;
    p.n = n;
    p.d = d;
    p.device = device;
    g_last_points_ptr = ptr;
    return p;
}

// The iteration stats per problem and the placement report (placement_report).
py::tuple run_lloyd(uintptr_t ptr, const std::string& dtype, int64_t batch, int64_t n, int64_t d, int data_device,
                    py::array_t<float, py::array::c_style> centroids, int64_t k, int niter, const std::string& metric,
                    bool spherical, std::optional<farray> weights, const std::string& backend, int cuda_device,
                    const py::dict& placement) {
    if (centroids.size() != batch * k * d) throw std::invalid_argument("init_centroids: expected (B, k, d) values");
    if (weights && weights->size() != batch * n) throw std::invalid_argument("weights: expected (B, N) values");
    flash::LloydOptions opt;
    opt.k = k;
    opt.niter = niter;
    opt.metric = metric == "ip" ? flash::Metric::InnerProduct : flash::Metric::L2;
    opt.spherical = spherical;
    opt.weights = weights ? weights->data() : nullptr;
    opt.backend = backend_of(backend);
    opt.cuda_device = cuda_device;
    opt.stop_on_sigint = true;
    apply_placement(placement, opt);
    flash::Placement placed;
    opt.placement = &placed;
    const flash::Points p = points(ptr, dtype, batch, n, d, data_device);
    std::vector<std::vector<flash::IterationStats>> st;
    float* c = centroids.mutable_data();
    {
        py::gil_scoped_release release;
        st = flash::run_lloyd(p, c, opt);
    }
    py::list out;
    for (const auto& s : st) out.append(stats_list(s));
    return py::make_tuple(out, placement_report(placed));
}

py::tuple assign(uintptr_t ptr, const std::string& dtype, int64_t batch, int64_t n, int64_t d, int data_device,
                 farray centroids, int64_t k, const std::string& metric, const std::string& backend, int cuda_device) {
    if (centroids.size() != batch * k * d) throw std::invalid_argument("centroids: expected (B, k, d) values");
    py::array_t<int64_t> labels({batch, n});
    py::array_t<float> dist({batch, n});
    const flash::Points p = points(ptr, dtype, batch, n, d, data_device);
    int64_t* l = labels.mutable_data();
    float* ds = dist.mutable_data();
    const float* c = centroids.data();
    {
        py::gil_scoped_release release;
        flash::assign_nearest(p, c, k, metric == "ip" ? flash::Metric::InnerProduct : flash::Metric::L2, l, ds,
                              backend_of(backend), cuda_device);
    }
    return py::make_tuple(dist, labels);
}

void train_index(uintptr_t index_ptr, farray x, const std::string& backend, int device) {
    if (x.ndim() != 2) throw std::invalid_argument("x: expected a 2-D array (n, d)");
    faiss::Index* index = index_from(index_ptr);
    if (x.shape(1) != index->d)
        throw std::invalid_argument("x: has d=" + std::to_string(x.shape(1)) + " but the index has d=" +
                                    std::to_string(index->d));
    faiss_flash::FlashOptions opt;
    opt.backend = backend_of(backend);
    opt.cuda_device = device;
    py::gil_scoped_release release;
    faiss_flash::train_index(index, x.shape(0), x.data(), opt);
}

// A FlashAssignIndex owned by Python (freed by _free_assign_index).
uintptr_t new_assign_index(int64_t d, bool inner_product, const std::string& backend, int device) {
    auto* a = new faiss_flash::FlashAssignIndex(d, inner_product ? faiss::METRIC_INNER_PRODUCT : faiss::METRIC_L2);
    a->flash.backend = backend_of(backend);
    a->flash.cuda_device = device;
    return reinterpret_cast<uintptr_t>(a);
}

void free_assign_index(uintptr_t p) { delete reinterpret_cast<faiss_flash::FlashAssignIndex*>(p); }

// Sets the training hook of an IVF (clustering_index) or PQ (pq.assign_index) index.
std::string install_assign_index(uintptr_t index_ptr, const std::string& type_name, uintptr_t assign_ptr) {
    auto* a = reinterpret_cast<faiss::Index*>(assign_ptr);
    if (auto* pq = as_pq(index_ptr, type_name)) {
        pq->pq.assign_index = a;
        return "pq.assign_index";
    }
    if (auto* ivf = as_ivf(index_ptr, type_name)) {
        ivf->clustering_index = a;
        return "clustering_index";
    }
    throw std::invalid_argument("index: expected an IndexIVF* or IndexPQ, got " + type_name);
}

py::dict refresh_ivf(uintptr_t index_ptr, const std::string& type_name, std::optional<farray> x,
                     std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> ids,
                     std::optional<farray> train_extra, bool keep_existing, int niter, int64_t max_train, int seed,
                     int64_t max_rebalance, int rebalance_rounds, bool verbose, bool objective_after, const std::string& backend,
                     int device) {
    faiss::IndexIVF* ivf = as_ivf(index_ptr, type_name);
    if (!ivf) throw std::invalid_argument("index: expected an IndexIVF*, got " + type_name);
    const int64_t d = ivf->d;
    int64_t n = 0;
    if (x) {
        if (x->ndim() != 2 || x->shape(1) != d)
            throw std::invalid_argument("x: expected shape (n, " + std::to_string(d) + ")");
        n = x->shape(0);
    }
    if (ids && (ids->ndim() != 1 || ids->shape(0) != n))
        throw std::invalid_argument("ids: expected shape (" + std::to_string(n) + ",)");
    faiss_flash::RefreshOptions opt;
    opt.niter = niter;
    opt.max_train = max_train;
    opt.seed = seed;
    opt.keep_existing = keep_existing;
    opt.verbose = verbose;
    opt.objective_after = objective_after;
    opt.max_rebalance = max_rebalance;
    opt.rebalance_rounds = rebalance_rounds;
    opt.flash.backend = backend_of(backend);
    opt.flash.cuda_device = device;
    if (train_extra) {
        if (train_extra->ndim() != 2 || train_extra->shape(1) != d)
            throw std::invalid_argument("train_extra: expected shape (m, " + std::to_string(d) + ")");
        opt.n_train_extra = train_extra->shape(0);
        opt.train_extra = train_extra->data();
    }
    faiss_flash::RefreshStats st;
    {
        py::gil_scoped_release release;
        st = faiss_flash::refresh_ivf(ivf, n, n ? x->data() : nullptr, ids ? ids->data() : nullptr, opt);
    }
    py::dict out;
    out["n_train"] = st.n_train;
    out["ntotal"] = st.ntotal;
    out["obj_before"] = st.obj_before;
    out["obj_after"] = st.obj_after;
    out["mean_shift"] = st.mean_shift;
    out["n_rebalanced"] = st.n_rebalanced;
    out["kmeans_s"] = st.kmeans_s;
    out["rebuild_s"] = st.rebuild_s;
    return out;
}

// A checkpoint's contents (kernels/checkpoint.h), or None when the file does not exist; a file
// that is not a faiss-flash checkpoint is a BadCheckpointError (a ValueError).
py::object read_checkpoint(const std::string& path) {
    flash::Checkpoint c;
    if (!flash::load_checkpoint(path, c)) return py::none();
    py::dict out;
    out["iterations_done"] = c.iterations_done;
    out["batch"] = c.batch;
    out["n"] = c.n;
    out["d"] = c.d;
    out["k"] = c.k;
    out["metric"] = c.metric == int(flash::Metric::InnerProduct) ? "ip" : "l2";
    py::array_t<double> obj({c.batch, int64_t(c.iterations_done)});
    for (int64_t b = 0; b < c.batch; b++)
        for (int it = 0; it < c.iterations_done; it++) obj.mutable_at(b, it) = c.stats[b][it].obj;
    out["obj"] = obj;
    py::array_t<float> cen({c.batch, c.k, c.d});
    std::copy(c.centroids.begin(), c.centroids.end(), cen.mutable_data());
    out["centroids"] = cen;
    return std::move(out);
}

py::array_t<int> rand_perm(int64_t n, int64_t seed) {
    py::array_t<int> perm(n);
    faiss::rand_perm(perm.mutable_data(), size_t(n), seed);
    return perm;
}

} // namespace

PYBIND11_MODULE(_faiss_flash, m) {
    m.doc() = "faiss-flash engine bindings (use the faiss_flash package)";
    // FAISS errors arrive as RuntimeError (what faiss' own Python wrappers raise); the class
    // also derives from ValueError since most of them (n < k, NaN input, d mismatch) are
    // argument errors. std::invalid_argument -> ValueError is pybind11's default.
    static PyObject* faiss_error = [] {
        py::tuple bases = py::make_tuple(py::handle(PyExc_RuntimeError), py::handle(PyExc_ValueError));
        return PyErr_NewException("faiss_flash.FaissError", bases.ptr(), nullptr);
    }();
    m.attr("FaissError") = py::handle(faiss_error);
    // A checkpoint_path file that cannot be resumed from (another run's, damaged, not a
    // checkpoint): a ValueError of its own, so that callers can tell it from other bad input.
    py::register_exception<flash::BadCheckpoint>(m, "BadCheckpointError", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const flash::Interrupted& e) {
            PyErr_SetString(PyExc_KeyboardInterrupt, e.what());
        } catch (const faiss::FaissException& e) {
            PyErr_SetString(faiss_error, e.what());
        }
    });
    m.def("cuda_available", &flash::cuda_available);
    m.def("train_clustering", &train_clustering);
    m.def("run_lloyd", &run_lloyd);
    m.def("assign", &assign);
    m.def("train_index", &train_index);
    m.def("new_assign_index", &new_assign_index);
    m.def("free_assign_index", &free_assign_index);
    m.def("install_assign_index", &install_assign_index);
    m.def("refresh_ivf", &refresh_ivf);
    m.def("read_checkpoint", &read_checkpoint);
    m.def("rand_perm", &rand_perm, "faiss::rand_perm (FAISS' own initialisation permutation)");
    m.def("_cast_probe", &cast_probe);
    m.def("_force_name_cast", [](bool on) { g_force_name_cast = on; });
    m.def("_last_points_ptr", [] { return uintptr_t(g_last_points_ptr.load()); });
}
