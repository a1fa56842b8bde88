// Scale benchmark of the CUDA engine: host-resident points (pageable unless --pinned), one
// data set per process, every combination of --k, --devices and --streaming timed on it.
//   bench_scale --n 32000000 [--d 128] [--dtype f32|f16] [--k 4096,16384] [--niter 3]
//               [--devices "0;0,1"] [--streaming auto,force] [--transfer f16] [--pinned]
//               [--fp32-mode exact|tf32] [--checkpoint-every N [--checkpoint-dir /tmp]] [--piece-rows R]
//               [--csv out.csv]
// Points: kernels/synthetic_points.h (256 centres plus noise), generated on all cores.
// Reported per run:
//   iter_ms    median wall time between consecutive iterations (the first one excluded)
//   setup_s    whole call less niter * iter_ms: upload, pinning, buffers
//   (--checkpoint-every: a checkpoint written every N iterations, to a fresh file per run)
//   copy_ms / compute_ms   per iteration, CUDA events on the copy and compute streams of the
//              slowest shard (sharded / streaming path only), and their ratio to iter_ms
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/flash_kmeans.h"
#include "kernels/synthetic_points.h"

namespace {

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, sep))
        if (!item.empty()) out.push_back(item);
    return out;
}

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

} // namespace

int main(int argc, char** argv) {
    int64_t n = 1 << 20, d = 128;
    std::string dtype_s = "f32", ks = "4096", devs = "0", modes = "auto", transfer, fp32_mode = "exact", csv;
    int niter = 3, checkpoint_every = 0;
    int64_t piece_rows = 0; // LloydOptions::stream_piece_rows (0: its default)
    std::string checkpoint_dir = "/tmp";
    bool pinned = false;
    for (int i = 1; i < argc; i++) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= argc) {
                std::fprintf(stderr, "missing value after %s\n", a.c_str());
                std::exit(2);
            }
            return argv[++i];
        };
        if (a == "--n") n = std::atoll(value().c_str());
        else if (a == "--d") d = std::atoll(value().c_str());
        else if (a == "--dtype") dtype_s = value();
        else if (a == "--k") ks = value();
        else if (a == "--niter") niter = std::atoi(value().c_str());
        else if (a == "--devices") devs = value();
        else if (a == "--streaming") modes = value();
        else if (a == "--transfer") transfer = value();
        else if (a == "--pinned") pinned = true;
        else if (a == "--fp32-mode") fp32_mode = value();
        else if (a == "--csv") csv = value();
        else if (a == "--checkpoint-every") checkpoint_every = std::atoi(value().c_str());
        else if (a == "--piece-rows") piece_rows = std::atoll(value().c_str());
        else if (a == "--checkpoint-dir") checkpoint_dir = value();
        else {
            std::fprintf(stderr, "unknown argument %s\n", a.c_str());
            return 2;
        }
    }
    if (fp32_mode != "exact" && fp32_mode != "tf32") {
        std::fprintf(stderr, "--fp32-mode must be exact or tf32, not %s\n", fp32_mode.c_str());
        return 2;
    }
    const flash::DType dtype = dtype_s == "f16" ? flash::DType::F16 : flash::DType::F32;
    // fp32 in TF32 mode reported as f32-tf32 (exact fp32 is plain f32)
    const std::string label = dtype_s + (dtype == flash::DType::F32 && fp32_mode == "tf32" ? "-tf32" : "");
    const size_t bytes = size_t(n) * d * (dtype == flash::DType::F16 ? 2 : 4);
    const auto g0 = std::chrono::steady_clock::now();
    std::unique_ptr<char[]> data(new char[bytes]); // untouched until generated, in parallel
    flash::synthetic_points(0, n, d, dtype, data.get());
    const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count();
    if (pinned && cudaHostRegister(data.get(), bytes, cudaHostRegisterPortable) != cudaSuccess) {
        std::fprintf(stderr, "bench_scale: cudaHostRegister of %.1f GB failed\n", bytes / 1e9);
        return 1;
    }
    cudaDeviceProp prop{};
    cudaGetDeviceProperties(&prop, 0);
    std::printf("device: %s; N=%lld d=%lld %s host points (%.1f GB, %s), generated in %.1f s\n", prop.name,
                (long long)n, (long long)d, label.c_str(), bytes / 1e9, pinned ? "pinned" : "pageable", gen_s);
    std::printf("%-8s %-8s %-6s %-7s %9s %8s %9s %10s %8s %8s %9s %9s\n", "K", "devices", "mode", "xfer", "iter_ms",
                "setup_s", "copy_ms", "compute_ms", "max/iter", "resident", "GB/iter", "TFLOP/s");
    FILE* out = csv.empty() ? nullptr : std::fopen(csv.c_str(), "w");
    if (out)
        std::fprintf(out, "n,d,dtype,k,devices,streaming,transfer,pinned,iter_ms,setup_s,copy_ms,compute_ms,"
                          "resident_rows,streamed_gb,tflops\n");

    for (const auto& kstr : split(ks, ',')) {
        const int64_t k = std::atoll(kstr.c_str());
        for (const auto& dl : split(devs, ';')) {
            std::vector<int> devices;
            for (const auto& s : split(dl, ',')) devices.push_back(std::atoi(s.c_str()));
            for (const auto& mode : split(modes, ',')) {
                flash::LloydOptions opt;
                opt.k = k;
                opt.niter = niter;
                opt.backend = flash::Backend::CUDA;
                opt.cuda_devices = devices;
                opt.streaming = mode == "force" ? flash::Streaming::Force
                                                : (mode == "off" ? flash::Streaming::Off : flash::Streaming::Auto);
                if (transfer == "f16") opt.transfer_dtype = flash::DType::F16;
                if (transfer == "bf16") opt.transfer_dtype = flash::DType::BF16;
                if (fp32_mode == "tf32") opt.fp32_mode = flash::Fp32Mode::TF32;
                opt.stream_piece_rows = piece_rows;
                if (checkpoint_every > 0) {
                    opt.checkpoint_every = checkpoint_every;
                    opt.checkpoint_path = checkpoint_dir + "/bench_scale.ckpt";
                    std::remove(opt.checkpoint_path.c_str());
                }
                flash::Placement pl;
                opt.placement = &pl;
                flash::Points x;
                x.data = data.get();
                x.dtype = dtype;
                x.n = n;
                x.d = d;
                std::vector<float> cen(size_t(k) * d);
                for (int64_t c = 0; c < k; c++) flash::synthetic_points(c * (n / k), 1, d, flash::DType::F32, &cen[c * d]);
                const auto t0 = std::chrono::steady_clock::now();
                std::vector<std::vector<flash::IterationStats>> st;
                try {
                    st = flash::run_lloyd(x, cen.data(), opt);
                } catch (const std::exception& e) {
                    std::printf("%-8lld %-8s %-6s: %s\n", (long long)k, dl.c_str(), mode.c_str(), e.what());
                    continue;
                }
                const double call_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
                if (!opt.checkpoint_path.empty()) std::remove(opt.checkpoint_path.c_str());
                std::vector<double> gaps;
                for (size_t i = 1; i < st[0].size(); i++) gaps.push_back(st[0][i].time_s - st[0][i - 1].time_s);
                const double iter_s = median(gaps);
                const double tflops = 2.0 * double(n) * k * d / iter_s / 1e12;
                const bool sharded = pl.shards > 0;
                const int64_t resident = sharded ? pl.resident_rows : n;
                std::printf("%-8lld %-8s %-6s %-7s %9.1f %8.2f %9.1f %10.1f %8.2f %7.0f%% %9.2f %9.1f\n", (long long)k,
                            dl.c_str(), mode.c_str(), transfer.empty() ? "-" : transfer.c_str(), 1e3 * iter_s,
                            call_s - niter * iter_s, sharded ? 1e3 * pl.copy_s : 0.0, sharded ? 1e3 * pl.compute_s : 0.0,
                            sharded ? std::max(pl.copy_s, pl.compute_s) / iter_s : 0.0, 100.0 * resident / n,
                            pl.streamed_bytes / 1e9, tflops);
                std::fflush(stdout);
                if (out)
                    std::fprintf(out, "%lld,%lld,%s,%lld,%s,%s,%s,%d,%.3f,%.3f,%.3f,%.3f,%lld,%.3f,%.2f\n", (long long)n,
                                 (long long)d, label.c_str(), (long long)k, dl.c_str(), mode.c_str(),
                                 transfer.empty() ? "-" : transfer.c_str(), int(pinned), 1e3 * iter_s,
                                 call_s - niter * iter_s, 1e3 * pl.copy_s, 1e3 * pl.compute_s, (long long)resident,
                                 pl.streamed_bytes / 1e9, tflops);
            }
        }
    }
    if (out) std::fclose(out);
    if (pinned) cudaHostUnregister(data.get());
    return 0;
}
