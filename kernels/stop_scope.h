// The Lloyd runs in progress that stop on request (LloydOptions::stop_on_sigint), counted
// process-wide; shared by the single-process engines and the MPI engine.
#pragma once

#include <string>

#include "kernels/flash_kmeans.h"

namespace flash {

/// The flash::Interrupted of a run stopped after `done` of `niter` iterations, naming the
/// checkpoint to resume from (if any).
Interrupted stopped_after(int done, int niter, const std::string& checkpoint_path);

/// While at least one enabled scope is alive, SIGINT asks the runs to stop between iterations
/// (flash::request_stop), and the handler that was there before the first is put back after
/// the last (per run, two overlapping runs could leave ours installed for good); where SIGINT
/// was ignored (SIG_IGN) it stays ignored. A stop request
/// reaches every such run; it is cleared when one starts with none in progress, so one run
/// cannot wipe another's pending stop.
class StopScope {
  public:
    explicit StopScope(bool enable);
    ~StopScope();
    StopScope(const StopScope&) = delete;
    StopScope& operator=(const StopScope&) = delete;

  private:
    bool enabled_;
};

} // namespace flash
