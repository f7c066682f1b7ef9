#!/usr/bin/env bash
# The project's test command (README "Tests"; .ci/run runs exactly this).
#   hack/test.sh [pytest args]      e.g. hack/test.sh -m "not e2e"   (skip the control plane)
# Builds the Kubernetes test control plane once if it is missing (hack/build-k8s.sh; K8S_BIN to use
# your own binaries), then runs pytest over tests/ (unit, api, e2e). "No tests collected" fails.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ " $* " != *" not e2e"* ]]; then
  K8S_BIN=$(bash hack/build-k8s.sh)
  export K8S_BIN
fi
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "hack/test.sh: pytest collected no tests; that is a failure, not a pass" >&2
  exit 1
fi
exit "$rc"
