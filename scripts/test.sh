#!/usr/bin/env bash
# The whole test suite: installs and builds what it needs, then runs GoogleTest (ctest)
# and pytest. GPU tests skip with a printed reason where there is no GPU.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
start=$(date +%s)
scripts/build.sh > build.log 2>&1 || { tail -n 80 build.log; echo "test.sh: build failed"; exit 1; }
grep -E "^-- faiss-flash" build.log || true
echo "build: $(( $(date +%s) - start )) s"

status=0
( cd build && ctest --output-on-failure --timeout 900 ) || status=1

if [ -d tests/python ]; then
  set +e
  PYTHONPATH="$root/build/python${PYTHONPATH:+:$PYTHONPATH}" /usr/bin/python3 -m pytest -q -rs tests/python
  rc=$?
  set -e
  # 5: no tests collected is a failure of the suite, not a pass
  [ $rc -eq 0 ] || status=1
fi
echo "test.sh: total $(( $(date +%s) - start )) s, status $status"
exit $status
