#!/usr/bin/env bash
# GPU check for DistAlign (issue #8).
#
#   tools/gpu-check.sh --prepare     on a machine with the .NET SDK: self-contained `dotnet publish -r linux-x64`
#                                     of tools/GpuCheck into artifacts/gpu-check/ (one compressed single file, no
#                                     .NET needed to run it), prints its size (must stay under 60 MiB) and runs it
#                                     once on ILGPU's CPU simulator as a smoke test.
#   tools/gpu-check.sh OUTDIR [--quick]
#                                     on a Linux x86-64 machine with an NVIDIA driver and CUDA 12/13 libraries
#                                     (libcublas, libcublasLt, libnvrtc; no .NET SDK needed): runs the GPU checks
#                                     against the CPU kernels and GpuGpt against the CPU Gpt, the kernel benchmarks, the GPT-2 step GEMM
#                                     benchmark and whole GPT-2 124M training steps, writing summary.md, checks.tsv, benchmarks.tsv, gpu-check.log and
#                                     nvidia-smi.txt into OUTDIR. Capped at 10 minutes.
#
# CUDA libraries are found by the usual loader search (LD_LIBRARY_PATH, ld.so.cache) and, first, in the
# directories of DISTALIGN_CUDA_LIBRARY_PATH (colon-separated), e.g. a pip wheel's nvidia/*/lib folders.
# Exit codes: 0 all checks passed, 1 a check failed, 2 usage, 3 no usable CUDA device, 124 time limit hit.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$repo/artifacts/gpu-check"
limit_mib=60

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf "$bundle"
    dotnet publish "$repo/tools/GpuCheck/GpuCheck.csproj" -c Release -r linux-x64 --self-contained true \
        -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:DebugType=none \
        -p:GenerateDocumentationFile=false -o "$bundle" --nologo
    bytes=$(du -sb "$bundle" | cut -f1)
    mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
    echo "gpu-check bundle: $bundle, $mib MiB"
    if (( bytes > limit_mib * 1048576 )); then
        echo "gpu-check: the bundle is over the $limit_mib MiB limit" >&2
        exit 1
    fi
    echo "smoke test on ILGPU's CPU simulator (no GPU):"
    "$bundle/gpu-check" --simulator --out "$repo/artifacts/gpu-check-simulator"
    exit 0
fi

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: tools/gpu-check.sh --prepare | tools/gpu-check.sh OUTDIR [--quick]" >&2
    exit 2
fi
out="$1"; shift
if [[ ! -x "$bundle/gpu-check" ]]; then
    echo "gpu-check: $bundle/gpu-check not found; run tools/gpu-check.sh --prepare first (on a machine with the .NET SDK)" >&2
    exit 2
fi
mkdir -p "$out"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
else
    echo "nvidia-smi not found" > "$out/nvidia-smi.txt"
fi
status=0
timeout --kill-after=15 600 "$bundle/gpu-check" --out "$out" "$@" 2>&1 | tee "$out/gpu-check.log" || status=${PIPESTATUS[0]}
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "gpu-check: stopped at the 10-minute limit (partial results in $out/gpu-check.log)" | tee -a "$out/gpu-check.log" >&2
fi
echo "results in $out (summary.md, checks.tsv, benchmarks.tsv, gpu-check.log)"
exit "$status"
