#!/usr/bin/env bash
# Regenerates docs/benchmarks.md and docs/benchmarks-peers.png in one run (≈ 10–15 min on 2 cores):
# machine description, whole steps (W1, W2, DPO) with per-op breakdowns, ours vs PyTorch (W2, DPO, W1),
# GEMM vs OpenBLAS, and the BenchmarkDotNet kernel suites against their in-run limits.
# Extra arguments go to the report (e.g. --threads 2, --quick for a smoke run, --out FILE).
# The PyTorch peer is skipped, with the reason in the report, when /usr/bin/python3 cannot import torch
# (install Debian's python3-torch, or run tools/peers/torch_step.py once by hand: it offers to install it).
set -euo pipefail
cd "$(dirname "$0")/.."
export OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-SkylakeX}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
exec dotnet run -c Release --project bench -- report --out docs/benchmarks.md "$@"
