#!/usr/bin/env bash
# Tools the benchmarks need beyond the Python environment: wrk, the closed-loop HTTP load generator
# that bench/roundtrip.py drives for throughput (Debian package `wrk`). Installed only when missing.
set -euo pipefail

if ! command -v wrk >/dev/null 2>&1; then
  echo "bench-tools: installing wrk"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq wrk >/dev/null
fi
echo "bench-tools: $(wrk --version 2>&1 | head -n1 || true)"
