#include "kernels/checkpoint.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "kernels/lloyd_common.h"

namespace flash {

namespace {

// The last byte is the format's version (2: the run fingerprint; 3: the file's length fixed by
// its header, and a checksum of everything before it at the end).
constexpr char kMagic[8] = {'F', 'F', 'K', 'M', 'C', 'K', 'P', '3'};
constexpr size_t kHeaderBytes = sizeof(kMagic) + 8 * sizeof(int64_t);
constexpr size_t kStatsBytes = 5 * sizeof(double); // per iteration and problem
constexpr int64_t kSampledRows = 4096;

uint64_t fnv1a(uint64_t h, const void* p, size_t bytes) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

template <class T>
void put(std::string& out, const T& v) {
    out.append(reinterpret_cast<const char*>(&v), sizeof(T));
}

// Reads the file's bytes in order (the caller checked their number).
struct Reader {
    const std::string& bytes;
    size_t at = 0;
    template <class T>
    T get() {
        T v;
        std::memcpy(&v, bytes.data() + at, sizeof(T));
        at += sizeof(T);
        return v;
    }
};

// kSampledRows rows of bytes spread evenly over rows (and the last one); none of none.
uint64_t sampled_rows(uint64_t h, const void* data, int64_t rows, size_t row) {
    if (rows <= 0) return h;
    const int64_t step = rows / kSampledRows + 1;
    for (int64_t r = 0; r < rows; r += step) h = fnv1a(h, static_cast<const char*>(data) + size_t(r) * row, row);
    return fnv1a(h, static_cast<const char*>(data) + size_t(rows - 1) * row, row);
}

// The file's checksum: FNV-1a over 8-byte words (then the bytes left), eight times the byte-wise
// rate (about 0.8 GB/s byte-wise) for large checkpoints.
uint64_t checksum(const char* p, size_t bytes) {
    uint64_t h = 1469598103934665603ull;
    size_t i = 0;
    for (; i + 8 <= bytes; i += 8) {
        uint64_t w;
        std::memcpy(&w, p + i, 8);
        h = (h ^ w) * 1099511628211ull;
    }
    return fnv1a(h, p + i, bytes - i);
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
    std::string differ; // "name: there, here" for each field that differs
    auto field = [&](const char* name, int64_t there, int64_t here) {
        if (there != here)
            differ += std::string(differ.empty() ? "" : "; ") + name + ": " + std::to_string(there) + " there, " +
                      std::to_string(here) + " here";
    };
    field("batch", found.batch, expected.batch);
    field("n", found.n, expected.n);
    field("d", found.d, expected.d);
    field("k", found.k, expected.k);
    if (found.metric != expected.metric) differ += std::string(differ.empty() ? "" : "; ") + "the metric";
    if (differ.empty() && found.data_fingerprint != expected.data_fingerprint) differ = "the data";
    if (!differ.empty())
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " was written for another problem (" + differ + ")");
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
    // (an invariant of the callers: the loader reads iterations_done stats per problem)
    assert(std::all_of(c.stats.begin(), c.stats.end(),
                       [&](const std::vector<IterationStats>& sb) { return int64_t(sb.size()) == c.iterations_done; }));
    assert(c.iterations_done == 0 || int64_t(c.stats.size()) == c.batch);
    std::string out(kMagic, sizeof(kMagic));
    out.reserve(kHeaderBytes + size_t(c.batch * c.iterations_done) * kStatsBytes + sizeof(float) * c.centroids.size() +
                sizeof(uint64_t));
    put(out, c.batch);
    put(out, c.n);
    put(out, c.d);
    put(out, c.k);
    put(out, int64_t(c.metric));
    put(out, c.data_fingerprint);
    put(out, c.run_fingerprint);
    put(out, int64_t(c.iterations_done));
    for (const auto& sb : c.stats)
        for (const auto& s : sb) {
            const double v[5] = {s.obj, s.time_s, s.search_time_s, s.imbalance, double(s.nsplit)};
            out.append(reinterpret_cast<const char*>(v), sizeof(v));
        }
    out.append(reinterpret_cast<const char*>(c.centroids.data()), sizeof(float) * c.centroids.size());
    put(out, checksum(out.data(), out.size()));
    const std::string tmp = path + ".tmp";
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) throw std::runtime_error("faiss-flash: cannot write checkpoint " + tmp);
        f.write(out.data(), std::streamsize(out.size()));
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
    struct stat st;
    if (::stat(path.c_str(), &st) != 0) {
        if (errno == ENOENT) return false;
        throw std::runtime_error("faiss-flash: checkpoint " + path + " cannot be read (" + std::strerror(errno) + ")");
    }
    if (S_ISDIR(st.st_mode)) throw BadCheckpoint("faiss-flash: checkpoint " + path + " is a directory, not a file");
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("faiss-flash: checkpoint " + path + " exists but cannot be read");
    const std::streamoff length = st.st_size;
    auto truncated = [&] { return BadCheckpoint("faiss-flash: checkpoint " + path + " is truncated"); };
    // The header (or as much of the file as there is), read once: the magic, then the fields.
    std::string bytes(size_t(std::min<std::streamoff>(length, kHeaderBytes)), '\0');
    if (!f.read(bytes.data(), std::streamsize(bytes.size())) || bytes.size() < sizeof(kMagic) ||
        std::memcmp(bytes.data(), kMagic, sizeof(kMagic) - 1) != 0)
        throw BadCheckpoint("faiss-flash: " + path + " is not a faiss-flash checkpoint");
    if (bytes[7] != kMagic[7])
        throw BadCheckpoint("faiss-flash: checkpoint " + path +
                            " was written by another version of faiss-flash; delete it to start afresh");
    if (bytes.size() < kHeaderBytes) throw truncated();
    Reader r{bytes, sizeof(kMagic)};
    c.batch = r.get<int64_t>();
    c.n = r.get<int64_t>();
    c.d = r.get<int64_t>();
    c.k = r.get<int64_t>();
    const int64_t metric = r.get<int64_t>();
    c.metric = int(metric);
    c.data_fingerprint = r.get<uint64_t>();
    c.run_fingerprint = r.get<uint64_t>();
    const int64_t done = r.get<int64_t>();
    constexpr int64_t kMax = int64_t(1) << 40; // (each factor checked before the product: no overflow)
    if (c.batch <= 0 || c.n <= 0 || c.d <= 0 || c.k <= 0 || done < 0 || done > INT32_MAX || c.batch > kMax ||
        c.k > kMax || c.d > kMax || c.batch > kMax / c.k || c.batch * c.k > kMax / c.d ||
        (done > 0 && c.batch > kMax / done) ||
        (metric != int64_t(Metric::L2) && metric != int64_t(Metric::InnerProduct)))
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " has an invalid header");
    // The header fixes the length: checked before anything is allocated for the rest.
    const uint64_t expected = kHeaderBytes + uint64_t(c.batch * done) * kStatsBytes +
                              sizeof(float) * uint64_t(c.batch * c.k * c.d) + sizeof(uint64_t);
    if (uint64_t(length) < expected) throw truncated();
    if (uint64_t(length) > expected)
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " is damaged (" + std::to_string(length) +
                            " bytes, its header says " + std::to_string(expected) + ")");
    bytes.resize(size_t(expected));
    if (!f.read(bytes.data() + kHeaderBytes, std::streamsize(expected - kHeaderBytes))) throw truncated();
    uint64_t sum;
    std::memcpy(&sum, bytes.data() + expected - sizeof(sum), sizeof(sum));
    if (sum != checksum(bytes.data(), size_t(expected) - sizeof(sum)))
        throw BadCheckpoint("faiss-flash: checkpoint " + path + " is damaged (its checksum does not match)");
    c.iterations_done = int(done);
    c.stats.assign(c.batch, {});
    for (auto& sb : c.stats)
        for (int64_t i = 0; i < done; i++) {
            double v[5];
            for (double& e : v) e = r.get<double>();
            IterationStats s;
            s.obj = v[0];
            s.time_s = v[1];
            s.search_time_s = v[2];
            s.imbalance = v[3];
            s.nsplit = int(v[4]);
            sb.push_back(s);
        }
    c.centroids.resize(size_t(c.batch * c.k * c.d));
    std::memcpy(c.centroids.data(), bytes.data() + r.at, sizeof(float) * c.centroids.size());
    return true;
}

} // namespace flash
