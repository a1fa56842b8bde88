// The main job: train a FAISS IVF index on Fashion-MNIST (Debian's dataset-fashion-mnist,
// 60,000 x 784 training images, 10,000 queries) with stock FAISS and with faiss-flash, then
// print training time, final k-means objective and recall@10 side by side.
//
//   flash_ivf_demo [--nlist 256] [--niter 25] [--nprobe 16] [--nq 2000] [--backend auto|cpu|cuda]
//                  [--data /usr/share/datasets/fashion-mnist]
#include <faiss/IndexFlat.h>
#include <faiss/IndexIVFFlat.h>
#include <zlib.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "faiss_ext/train_index.h"

namespace {

using idx_t = faiss::Index::idx_t;

// IDX image file (gzip): magic 0x00000803, count, rows, cols (big endian), then bytes.
std::vector<float> read_idx_images(const std::string& path, int64_t& n, int64_t& d) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (!f) throw std::runtime_error("cannot open " + path + " (install the Debian package dataset-fashion-mnist)");
    auto be32 = [&](const char* what) {
        unsigned char b[4];
        if (gzread(f, b, 4) != 4) throw std::runtime_error(path + ": truncated header (" + what + ")");
        return (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | b[3];
    };
    if (be32("magic") != 0x803) throw std::runtime_error(path + ": not an IDX image file");
    n = be32("count");
    const int64_t rows = be32("rows"), cols = be32("cols");
    d = rows * cols;
    std::vector<unsigned char> raw(n * d);
    size_t got = 0;
    while (got < raw.size()) {
        const int r = gzread(f, raw.data() + got, unsigned(std::min<size_t>(raw.size() - got, 1 << 30)));
        if (r <= 0) break;
        got += size_t(r);
    }
    gzclose(f);
    if (got != raw.size()) throw std::runtime_error(path + ": truncated pixel data");
    std::vector<float> x(raw.size());
    for (size_t i = 0; i < raw.size(); i++) x[i] = float(raw[i]);
    return x;
}

double seconds_since(std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}

struct Row {
    std::string name;
    double train_s;
    double objective;
    double recall;
};

} // namespace

int main(int argc, char** argv) try {
    std::string dir = "/usr/share/datasets/fashion-mnist", backend = "auto";
    int nlist = 256, niter = 25, nprobe = 16;
    int64_t nq = 2000;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i], v = argv[i + 1];
        if (a == "--nlist") nlist = std::atoi(v.c_str());
        else if (a == "--niter") niter = std::atoi(v.c_str());
        else if (a == "--nprobe") nprobe = std::atoi(v.c_str());
        else if (a == "--nq") nq = std::atol(v.c_str());
        else if (a == "--backend") backend = v;
        else if (a == "--data") dir = v;
        else throw std::invalid_argument("unknown option " + a);
    }
    faiss_flash::FlashOptions opt;
    if (backend == "cpu") opt.backend = flash::Backend::CPU;
    else if (backend == "cuda") opt.backend = flash::Backend::CUDA;
    else if (backend != "auto") throw std::invalid_argument("--backend must be auto, cpu or cuda");

    int64_t nb, d, nt, dq;
    const auto xb = read_idx_images(dir + "/train-images-idx3-ubyte.gz", nb, d);
    auto xq = read_idx_images(dir + "/t10k-images-idx3-ubyte.gz", nt, dq);
    if (dq != d) throw std::runtime_error("train and test images differ in size");
    nq = std::min(nq, nt);
    flash::Points probe;
    probe.data = xb.data();
    probe.n = nb;
    probe.d = d;
    const char* engine = flash::backend_name(flash::resolve_backend(opt.backend, probe));
    std::printf("Fashion-MNIST: %ld training images, %ld queries, d=%ld; IVF-Flat nlist=%d, %d k-means iterations, "
                "nprobe=%d; faiss-flash engine: %s\n",
                long(nb), long(nq), long(d), nlist, niter, nprobe, engine);

    // Ground truth: exact top-10.
    const int topk = 10;
    faiss::IndexFlatL2 exact(d);
    exact.add(nb, xb.data());
    std::vector<float> dis(nq * topk);
    std::vector<idx_t> gt(nq * topk), lab(nq * topk);
    exact.search(nq, xq.data(), topk, dis.data(), gt.data());

    auto evaluate = [&](const std::string& name, bool ours) {
        faiss::IndexFlatL2 quantizer(d);
        faiss::IndexIVFFlat index(&quantizer, d, nlist);
        index.cp.niter = niter;
        const auto t0 = std::chrono::steady_clock::now();
        if (ours)
            faiss_flash::train_index(&index, nb, xb.data(), opt);
        else
            index.train(nb, xb.data());
        const double train_s = seconds_since(t0);
        // Objective of the final centroids over all training images.
        std::vector<float> d1(nb);
        std::vector<idx_t> l1(nb);
        quantizer.search(nb, xb.data(), 1, d1.data(), l1.data());
        double obj = 0;
        for (float v : d1) obj += v;
        index.add(nb, xb.data());
        index.nprobe = nprobe;
        index.search(nq, xq.data(), topk, dis.data(), lab.data());
        int64_t hits = 0;
        for (int64_t q = 0; q < nq; q++) {
            std::set<idx_t> t(gt.begin() + q * topk, gt.begin() + (q + 1) * topk);
            for (int j = 0; j < topk; j++) hits += t.count(lab[q * topk + j]);
        }
        return Row{name, train_s, obj, double(hits) / double(nq * topk)};
    };

    const Row stock = evaluate("stock FAISS 1.7.3", false);
    const Row flash = evaluate(std::string("faiss-flash (") + engine + ")", true);
    std::printf("\n%-24s %14s %18s %11s\n", "IVF training", "train time (s)", "k-means objective", "recall@10");
    for (const Row& r : {stock, flash})
        std::printf("%-24s %14.3f %18.6g %11.4f\n", r.name.c_str(), r.train_s, r.objective, r.recall);
    std::printf("\nspeedup %.2fx, objective ratio %.6f, recall difference %+.4f\n", stock.train_s / flash.train_s,
                flash.objective / stock.objective, flash.recall - stock.recall);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "flash_ivf_demo: %s\n", e.what());
    return 1;
}
