#!/usr/bin/env bash
# Regenerates docs/benchmarks.md (and docs/benchmarks-peers-*.png), one section per view of the CPU, each from one report run
# (≈ 10–15 min each on 2 cores): machine description, whole steps (W1, W2, DPO) with per-op breakdowns, ours vs PyTorch
# (W2, DPO, W1), GEMM vs OpenBLAS, and the BenchmarkDotNet kernel suites against their in-run limits.
#
# Views, by the rule "never force an ISA the CPU lacks":
#   CPU with avx512f: 1. native AVX-512: OPENBLAS_CORETYPE=SkylakeX (or the caller's), for OpenBLAS and the PyTorch peer;
#                     2. AVX2 view of it: DOTNET_EnableAVX512=0 (.NET's AVX-512 hidden, so our Vector256 kernels run) and
#                        OPENBLAS_CORETYPE=Haswell (OpenBLAS's AVX2 + FMA kernels), so everyone runs AVX2.
#   CPU without avx512f: native only, OPENBLAS_CORETYPE left unset (OpenBLAS's own choice; SkylakeX would die with SIGILL)
#                        unless the caller set it. With avx2 this run is the AVX2 section.
# Each run replaces its own section of the file and keeps the other one (and "Earlier measurements").
#
# Usage: tools/bench-report.sh [--views native,avx2] [--dry-run] [report options...]
#   --views LIST   which of the views above to run (default: every one this CPU has);
#   --dry-run      print each view's variables and command instead of running it (CPUINFO=FILE reads another cpuinfo);
#   these two are the script's own.
# Everything else goes to the report, e.g. --threads 2, --quick (smoke run), --skip-suites (no BenchmarkDotNet suites),
# --out FILE (default docs/benchmarks.md), --isa-label TEXT.
# The PyTorch peer is skipped, with the reason in the report, when /usr/bin/python3 cannot import torch
# (install Debian's python3-torch, or run tools/peers/torch_step.py once by hand: it offers to install it).
set -euo pipefail
cd "$(dirname "$0")/.."

views=""
dry_run=0
report_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --views) [[ $# -ge 2 ]] || { echo "bench-report.sh: --views needs a value (native, avx2 or native,avx2)" >&2; exit 2; }
             views="$2"; shift 2 ;;
    --views=*) views="${1#--views=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    *) report_args+=("$1"); shift ;;
  esac
done

flags=" $(grep -m1 '^flags' "${CPUINFO:-/proc/cpuinfo}" 2>/dev/null | cut -d: -f2- || true) "
has_flag() { [[ "$flags" == *" $1 "* ]]; }

if [[ -z "$views" ]]; then
  views="native"
  if has_flag avx512f && has_flag avx2 && has_flag fma; then views="native,avx2"; fi
fi
for view in ${views//,/ }; do
  case "$view" in
    native) ;;
    avx2)
      if ! has_flag avx2 || ! has_flag fma; then echo "bench-report.sh: the avx2 view needs a CPU with avx2 and fma; this one has neither" >&2; exit 2; fi
      if ! has_flag avx512f; then echo "bench-report.sh: this CPU has no avx512f: its native view is the AVX2 one (use --views native)" >&2; exit 2; fi ;;
    *) echo "bench-report.sh: unknown view '$view' (expected native or avx2)" >&2; exit 2 ;;
  esac
done

export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
[[ $dry_run == 1 ]] || dotnet build -c Release -nologo -v quiet bench

out_args=(--out docs/benchmarks.md)
for arg in ${report_args[@]+"${report_args[@]}"}; do [[ "$arg" == --out ]] && out_args=(); done
report() {
  local command=(dotnet run -c Release --no-build --project bench -- report ${out_args[@]+"${out_args[@]}"} ${report_args[@]+"${report_args[@]}"})
  if [[ $dry_run == 1 ]]; then
    echo "  DOTNET_EnableAVX512=${DOTNET_EnableAVX512:-} OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-} OMP_WAIT_POLICY=$OMP_WAIT_POLICY ${command[*]}"
  else
    "${command[@]}"
  fi
}

for view in ${views//,/ }; do
  if [[ "$view" == native ]]; then
    # native: whatever .NET and the CPU offer, even where the caller's shell hides an ISA
    unset DOTNET_EnableAVX512 DOTNET_EnableAVX2
    if has_flag avx512f; then
      echo "bench-report.sh: native AVX-512 (OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-SkylakeX})"
      OPENBLAS_CORETYPE="${OPENBLAS_CORETYPE:-SkylakeX}" report
    else
      peer_core="OPENBLAS_CORETYPE unset, so OpenBLAS picks its own kernels"
      [[ -n "${OPENBLAS_CORETYPE:-}" ]] && peer_core="OPENBLAS_CORETYPE=$OPENBLAS_CORETYPE, from the caller"
      echo "bench-report.sh: native view of a CPU without avx512f ($peer_core)"
      report
    fi
  else
    echo "bench-report.sh: AVX2 view of an AVX-512 CPU (DOTNET_EnableAVX512=0 OPENBLAS_CORETYPE=Haswell)"
    DOTNET_EnableAVX512=0 OPENBLAS_CORETYPE=Haswell report
  fi
done
