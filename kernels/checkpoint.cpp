#include "kernels/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "kernels/lloyd_common.h"

namespace flash {

namespace {

// The last byte is the format's version (2: the run fingerprint).
constexpr char kMagic[8] = {'F', 'F', 'K', 'M', 'C', 'K', 'P', '2'};
constexpr int64_t kSampledRows = 4096;

uint64_t fnv1a(uint64_t h, const void* p, size_t bytes) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

template <class T>
void put(std::ofstream& f, const T& v) {
    f.write(reinterpret_cast<const char*>(&v), sizeof(T));
}

template <class T>
T get(std::ifstream& f, const std::string& path) {
    T v;
    if (!f.read(reinterpret_cast<char*>(&v), sizeof(T)))
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " is truncated");
    return v;
}

// kSampledRows rows of bytes spread evenly over rows (and the last one); none of none.
uint64_t sampled_rows(uint64_t h, const void* data, int64_t rows, size_t row) {
    if (rows <= 0) return h;
    const int64_t step = rows / kSampledRows + 1;
    for (int64_t r = 0; r < rows; r += step) h = fnv1a(h, static_cast<const char*>(data) + size_t(r) * row, row);
    return fnv1a(h, static_cast<const char*>(data) + size_t(rows - 1) * row, row);
}

} // namespace

uint64_t data_fingerprint(const Points& x) {
    uint64_t h = 1469598103934665603ull;
    const int64_t shape[4] = {x.batch, x.n, x.d, int64_t(x.dtype)};
    h = fnv1a(h, shape, sizeof(shape));
    if (x.device >= 0 || x.data == nullptr) return h;
    return sampled_rows(h, x.data, x.batch * x.n, dtype_size(x.dtype) * size_t(x.d));
}

uint64_t run_fingerprint(const Points& x, const float* initial_centroids, const LloydOptions& opt) {
    uint64_t h = 1469598103934665603ull;
    const int64_t fields[6] = {opt.k_frozen,           int64_t(opt.spherical),      int64_t(opt.int_centroids),
                               int64_t(opt.fp32_mode), int64_t(opt.transfer_dtype), opt.weights != nullptr};
    h = fnv1a(h, fields, sizeof(fields));
    h = fnv1a(h, initial_centroids, sizeof(float) * size_t(x.batch * opt.k * x.d));
    if (opt.weights) h = sampled_rows(h, opt.weights, x.batch * x.n, sizeof(float));
    return h;
}

void check_same_run(const Checkpoint& found, const Checkpoint& expected, int niter, const std::string& path) {
    if (found.batch != expected.batch || found.n != expected.n || found.d != expected.d || found.k != expected.k ||
        found.metric != expected.metric || found.data_fingerprint != expected.data_fingerprint)
        throw BadCheckpoint("faiss-flash: checkpoint " + path +
                            " was written for another problem (shape, metric or data differ)");
    if (found.run_fingerprint != expected.run_fingerprint)
        throw BadCheckpoint("faiss-flash: checkpoint " + path +
                            " was written for another run of this data (initial centroids, weights, "
                            "k_frozen, spherical, int_centroids, fp32_mode or transfer_dtype differ)");
    if (found.iterations_done > niter) // its centroids are those of a later iteration
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " holds " + std::to_string(found.iterations_done) +
                            " iterations, more than niter = " + std::to_string(niter) +
                            "; delete it or ask for at least as many");
}

uint64_t combine_fingerprints(const std::vector<uint64_t>& parts) {
    return fnv1a(1469598103934665603ull, parts.data(), sizeof(uint64_t) * parts.size());
}

void save_checkpoint(const std::string& path, const Checkpoint& c) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw std::runtime_error("faiss-flash: cannot write checkpoint " + tmp);
        f.write(kMagic, sizeof(kMagic));
        put(f, c.batch);
        put(f, c.n);
        put(f, c.d);
        put(f, c.k);
        put(f, int64_t(c.metric));
        put(f, c.data_fingerprint);
        put(f, c.run_fingerprint);
        put(f, int64_t(c.iterations_done));
        for (const auto& sb : c.stats)
            for (const auto& s : sb) {
                const double v[5] = {s.obj, s.time_s, s.search_time_s, s.imbalance, double(s.nsplit)};
                f.write(reinterpret_cast<const char*>(v), sizeof(v));
            }
        f.write(reinterpret_cast<const char*>(c.centroids.data()), std::streamsize(sizeof(float) * c.centroids.size()));
        if (!f) throw std::runtime_error("faiss-flash: writing checkpoint " + tmp + " failed");
    }
    // On the disk before it replaces the previous checkpoint (a crash of the machine must not
    // leave a renamed but empty file).
    const int fd = ::open(tmp.c_str(), O_RDONLY);
    if (fd < 0 || ::fsync(fd) != 0) {
        if (fd >= 0) ::close(fd);
        throw std::runtime_error("faiss-flash: cannot flush checkpoint " + tmp + " to disk");
    }
    ::close(fd);
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
        throw std::runtime_error("faiss-flash: cannot rename " + tmp + " to " + path);
}

bool load_checkpoint(const std::string& path, Checkpoint& c) {
    std::ifstream f(path, std::ios::binary);
    if (!f) {
        if (::access(path.c_str(), F_OK) != 0) return false;
        throw std::runtime_error("faiss-flash: checkpoint " + path + " exists but cannot be read");
    }
    char magic[8];
    if (!f.read(magic, sizeof(magic)) || std::memcmp(magic, kMagic, sizeof(kMagic) - 1) != 0)
        throw BadCheckpoint("faiss-flash: " + path + " is not a faiss-flash checkpoint");
    if (magic[7] != kMagic[7])
        throw BadCheckpoint("faiss-flash: checkpoint " + path +
                            " was written by another version of faiss-flash; delete it to start afresh");
    c.batch = get<int64_t>(f, path);
    c.n = get<int64_t>(f, path);
    c.d = get<int64_t>(f, path);
    c.k = get<int64_t>(f, path);
    c.metric = int(get<int64_t>(f, path));
    c.data_fingerprint = get<uint64_t>(f, path);
    c.run_fingerprint = get<uint64_t>(f, path);
    const int64_t done = get<int64_t>(f, path);
    constexpr int64_t kMax = int64_t(1) << 40; // (each factor checked before the product: no overflow)
    if (c.batch <= 0 || c.n <= 0 || c.d <= 0 || c.k <= 0 || done < 0 || done > INT32_MAX || c.batch > kMax ||
        c.k > kMax || c.d > kMax || c.batch > kMax / c.k || c.batch * c.k > kMax / c.d)
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " has an invalid header");
    c.iterations_done = int(done);
    c.stats.assign(c.batch, {});
    for (auto& sb : c.stats)
        for (int64_t i = 0; i < done; i++) {
            double v[5];
            for (double& e : v) e = get<double>(f, path);
            IterationStats s;
            s.obj = v[0];
            s.time_s = v[1];
            s.search_time_s = v[2];
            s.imbalance = v[3];
            s.nsplit = int(v[4]);
            sb.push_back(s);
        }
    c.centroids.resize(size_t(c.batch * c.k * c.d));
    if (!f.read(reinterpret_cast<char*>(c.centroids.data()), std::streamsize(sizeof(float) * c.centroids.size())))
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " is truncated");
    return true;
}

} // namespace flash
