// Puts an environment variable back (value or absence) at the end of the scope: a suite run may
// set the switch a test sets.
#pragma once

#include <cstdlib>
#include <string>

namespace flash_test {

class ScopedEnv {
  public:
    explicit ScopedEnv(const char* name) : name_(name) {
        if (const char* v = std::getenv(name)) had_ = true, saved_ = v;
    }
    ~ScopedEnv() {
        if (had_)
            setenv(name_, saved_.c_str(), 1);
        else
            unsetenv(name_);
    }
    ScopedEnv(const ScopedEnv&) = delete;
    ScopedEnv& operator=(const ScopedEnv&) = delete;
    void set(const char* value) const { setenv(name_, value, 1); }
    void unset() const { unsetenv(name_); }

  private:
    const char* name_;
    bool had_ = false;
    std::string saved_;
};

} // namespace flash_test
