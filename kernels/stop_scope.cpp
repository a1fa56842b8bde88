#include "kernels/stop_scope.h"

#include <signal.h>

#include <mutex>

#include "kernels/flash_kmeans.h"
#include "kernels/lloyd_common.h"

namespace flash {

namespace {

struct State {
    std::mutex mutex;
    int runs = 0;
    bool installed = false; // our handler (not where SIGINT was ignored)
    struct sigaction previous = {};
};

State& state() {
    static State s;
    return s;
}

} // namespace

Interrupted stopped_after(int done, int niter, const std::string& checkpoint_path) {
    return Interrupted("faiss-flash: stopped after iteration " + std::to_string(done) + " of " + std::to_string(niter) +
                       (checkpoint_path.empty() ? "" : "; resume from checkpoint " + checkpoint_path));
}

StopScope::StopScope(bool enable) : enabled_(enable) {
    if (!enabled_) return;
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (st.runs++ == 0) {
        clear_stop_request();
        // A process told to ignore SIGINT (started in the background by a shell, nohup) keeps
        // ignoring it: stops then come only from request_stop().
        sigaction(SIGINT, nullptr, &st.previous);
        st.installed = !(st.previous.sa_handler == SIG_IGN && !(st.previous.sa_flags & SA_SIGINFO));
        if (!st.installed) return;
        struct sigaction sa = {};
        sa.sa_handler = [](int) { request_stop(); };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGINT, &sa, nullptr);
    }
}

StopScope::~StopScope() {
    if (!enabled_) return;
    State& st = state();
    std::lock_guard<std::mutex> lock(st.mutex);
    if (--st.runs == 0 && st.installed) sigaction(SIGINT, &st.previous, nullptr);
}

} // namespace flash
