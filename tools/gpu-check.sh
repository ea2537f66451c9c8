#!/usr/bin/env bash
# GPU check for DistAlign (issues #8, #21).
#
#   tools/gpu-check.sh --prepare     on a machine with the .NET SDK: self-contained `dotnet publish -r linux-x64`
#                                     of tools/GpuCheck into artifacts/gpu-check/ (one compressed single file, no
#                                     .NET needed to run it; it carries the test assembly, see GpuCheck.csproj), prints its
#                                     size (must stay under 60 MiB) and runs it once on ILGPU's CPU simulator as a smoke
#                                     test, which ends with its test runner on the simulator cases of tests/Kernels/Gpu.
#   tools/gpu-check.sh OUTDIR [--quick] [--skip-bench] [--skip-tests]
#                                     on a Linux x86-64 machine with an NVIDIA driver and CUDA 12/13 libraries
#                                     (libcublas, libcublasLt, libnvrtc; no .NET SDK needed): runs the GPU checks
#                                     against the CPU kernels and GpuGpt against the CPU Gpt, every [TestFixture("cuda")]
#                                     case of tests/ (NUnit, inside the bundle), the kernel benchmarks, the GPT-2 step GEMM
#                                     benchmark and whole GPT-2 124M training steps, writing summary.md, checks.tsv,
#                                     benchmarks.tsv, tests.tsv, sections.tsv (rewritten after every section, so a run cut
#                                     short keeps what it finished), gpu-check.log and nvidia-smi.txt into OUTDIR. Then, where
#                                     python3 has a CUDA PyTorch, the same GPT-2 124M step in PyTorch eager
#                                     (tools/peers/torch_step.py --device cuda, bf16 autocast; scores materialised as ours,
#                                     and with SDPA/flash attention), appended to summary.md as peer.tsv.
#
# Time: gpu-check plans its sections into GPU_CHECK_LIMIT_S seconds (default 420, passed as --budget; the slowest sections
# are dropped first when their estimates do not fit, and summary.md says which and why) and is killed 30 s past it. Every
# step after it (the multi-rank run, Nsight Compute, the peer) runs only in what is left of GPU_CHECK_TOTAL_S (default 570:
# one device command may take 10 minutes), each cut to that. With the defaults the whole script ends within 9.5 minutes.
#
# CUDA libraries are found by the usual loader search (LD_LIBRARY_PATH, ld.so.cache) and, first, in the
# directories of DISTALIGN_CUDA_LIBRARY_PATH (colon-separated), e.g. a pip wheel's nvidia/*/lib folders.
# When that variable is unset, this script fills it with the folders under /usr/local and /opt that hold
# libcublas / libcublasLt / libnvrtc of CUDA 13 or 12 (a toolkit install or PyTorch's pip wheels).
# Exit codes: 0 all checks and tests passed, 1 a check or test failed, 2 usage, 3 no usable CUDA device, 124 time limit hit.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bundle="$repo/artifacts/gpu-check"
limit_mib=60

if [[ "${1:-}" == "--prepare" ]]; then
    rm -rf "$bundle"
    dotnet publish "$repo/tools/GpuCheck/GpuCheck.csproj" -c Release -r linux-x64 --self-contained true \
        -p:PublishSingleFile=true -p:EnableCompressionInSingleFile=true -p:DebugType=none \
        -p:GenerateDocumentationFile=false -p:EmbedAllSources=false -o "$bundle" --nologo
    bytes=$(du -sb "$bundle" | cut -f1)
    mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
    echo "gpu-check bundle: $bundle, $mib MiB"
    if (( bytes > limit_mib * 1048576 )); then
        echo "gpu-check: the bundle is over the $limit_mib MiB limit" >&2
        exit 1
    fi
    echo "smoke test on ILGPU's CPU simulator (no GPU):"
    # Every simulator case: artifacts/gpu-check/gpu-check --tests --backend simulator (3 to 5 minutes on 2 cores); the cuda
    # cases: --tests (skipped with the reason, exit 3, where there is no GPU).
    "$bundle/gpu-check" --simulator --out "$repo/artifacts/gpu-check-simulator"
    exit 0
fi

if [[ $# -lt 1 || "$1" == -* ]]; then
    echo "usage: tools/gpu-check.sh --prepare | tools/gpu-check.sh OUTDIR [--quick] [--skip-bench] [--skip-tests]" >&2
    exit 2
fi
out="$1"; shift
if [[ ! -x "$bundle/gpu-check" ]]; then
    echo "gpu-check: $bundle/gpu-check not found; run tools/gpu-check.sh --prepare first (on a machine with the .NET SDK)" >&2
    exit 2
fi
mkdir -p "$out"
if [[ -z "${DISTALIGN_CUDA_LIBRARY_PATH:-}" ]]; then
    found=$(find /usr/local /opt -maxdepth 8 \( -name 'libcublas.so.1[23]' -o -name 'libcublasLt.so.1[23]' -o -name 'libnvrtc.so.1[23]' -o -name 'libnccl.so.2' \) \
                 -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':' || true)
    export DISTALIGN_CUDA_LIBRARY_PATH="${found%:}"
    echo "DISTALIGN_CUDA_LIBRARY_PATH=$DISTALIGN_CUDA_LIBRARY_PATH"
fi
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
else
    echo "nvidia-smi not found" > "$out/nvidia-smi.txt"
fi
status=0
limit="${GPU_CHECK_LIMIT_S:-420}"
total_limit="${GPU_CHECK_TOTAL_S:-570}"
# left NEED MAX: the seconds a later step may take, at most MAX, from what remains of GPU_CHECK_TOTAL_S; 0 when under NEED.
left() { local l=$((total_limit - SECONDS)); (( l < $1 )) && echo 0 || echo $(( l < $2 ? l : $2 )); }
timeout --kill-after=15 "$((limit + 30))" "$bundle/gpu-check" --out "$out" --budget "$limit" "$@" 2>&1 | tee "$out/gpu-check.log" || status=${PIPESTATUS[0]}
if [[ $status -eq 124 || $status -eq 137 ]]; then
    echo "gpu-check: killed 30 s past its $limit s budget (the sections it finished are in $out/summary.md and the tables; sections.tsv shows which was running)" \
        | tee -a "$out/gpu-check.log" >&2
fi

# Data parallelism on GPUs: the checks above include a one-rank NCCL smoke test (all-reduce, broadcast, all-gather,
# reduce-scatter) when libnccl.so.2 is found. A multi-rank run needs several GPUs, Open MPI's mpirun and the CLI
# (mpirun -np N distalign pretrain --device cuda …: each rank takes the GPU of its local rank, gradients all-reduced by NCCL).
gpus=$( (nvidia-smi -L 2>/dev/null || true) | grep -c '^GPU ' || true)
if [[ "${gpus:-0}" -gt 1 ]] && command -v mpirun >/dev/null 2>&1 && [[ -x "$repo/artifacts/distalign/distalign" ]] && [[ $(left 60 120) -gt 0 ]]; then
    timeout "$(left 60 120)" mpirun --allow-run-as-root --bind-to none -np "$gpus" "$repo/artifacts/distalign/distalign" pretrain --device cuda \
        --out "$out/multi-rank" --steps 20 --batch "$((gpus * 4))" --seq 64 --layers 2 --channels 128 --heads 4 --check-weights-every 5 \
        > "$out/multi-rank.log" 2>&1 && echo "multi-rank NCCL pretraining on $gpus GPUs: passed (multi-rank.log)" | tee -a "$out/gpu-check.log" \
        || { echo "multi-rank NCCL pretraining on $gpus GPUs: FAILED (multi-rank.log)" | tee -a "$out/gpu-check.log"; status=1; }
else
    echo "multi-rank GPU run skipped: $gpus GPU(s) here$(command -v mpirun >/dev/null 2>&1 || echo ', no mpirun')$([[ -x "$repo/artifacts/distalign/distalign" ]] || echo ', no CLI bundle in artifacts/distalign')$([[ $(left 60 120) -gt 0 ]] || echo ", under 60 s of the $total_limit s left")" \
        | tee -a "$out/gpu-check.log"
fi

# Optional (GPU_CHECK_NCU=1): Nsight Compute's speed-of-light, occupancy and warp-stall sections for the flash-attention
# kernels at GPT-2 124M's shape, into ncu-flash.txt (where ncu can read the counters; --clock-control none leaves clocks alone).
if [[ "${GPU_CHECK_NCU:-0}" == "1" ]]; then
    ncu_bin=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1 || true)
    if [[ -n "$ncu_bin" && $(left 60 180) -gt 0 ]]; then
        timeout "$(left 60 180)" "$ncu_bin" --clock-control none --kernel-name regex:'distalign_flash_attention_(forward|backward_kv|backward_q)' \
            --launch-count 3 --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
            --section MemoryWorkloadAnalysis "$bundle/gpu-check" --flash-benchmark-only --out "$out/ncu-run" > "$out/ncu-flash.txt" 2>&1 \
            || echo "ncu exited with $?" >> "$out/ncu-flash.txt"
        rm -rf "$out/ncu-run"
    else
        echo "GPU_CHECK_NCU=1 but ncu was not found or under 60 s of the $total_limit s are left" | tee -a "$out/gpu-check.log"
    fi
fi

# The PyTorch eager peer, same model and step (GPT-2 124M, 16 × 1024 tokens, clip 1, AdamW), bf16 autocast.
peer_ok=0
if command -v python3 >/dev/null 2>&1 && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    rows=16; steps=10
    [[ " $* " == *" --quick "* ]] && { rows=2; steps=3; }
    printf 'variant\ttorch\tmedian_ms\ttokens_per_s\ttflops\tmfu_of_989\tpeak_memory_gib\tfirst_loss\tlast_loss\n' > "$out/peer.tsv"
    for attention in manual sdpa; do
        if [[ $(left 30 60) -eq 0 ]]; then
            echo "peer ($attention attention) skipped: under 30 s of the $total_limit s left" | tee -a "$out/peer.log"
            continue
        fi
        if json=$(timeout "$(left 30 60)" python3 "$repo/tools/peers/torch_step.py" --workload gpt2 --device cuda --bf16 --clip 1 \
                    --attention "$attention" --warmup 3 --steps "$steps" --no-install 2>>"$out/peer.log"); then
            echo "$json" >> "$out/peer.log"
            python3 - "$attention" "$json" >> "$out/peer.tsv" <<'PY'
import json, sys
r = json.loads(sys.argv[2])
print(f"PyTorch eager bf16 autocast, {sys.argv[1]} attention\t{r['torch']}\t{r['median_ms']:.2f}\t{r['tokens_per_s']:.0f}\t"
      f"{r['tflops']:.1f}\t{r['tflops'] / 989:.3f}\t{r['peak_memory_gib']:.1f}\t{r['first_loss']:.4f}\t{r['last_loss']:.4f}")
PY
            peer_ok=1
        else
            echo "peer ($attention attention) failed or timed out; see peer.log" | tee -a "$out/peer.log"
        fi
    done
    if [[ -f "$out/summary.md" ]]; then
        { echo; echo "## PyTorch eager peer (same machine, same model and step; tools/peers/torch_step.py --device cuda --bf16 --clip 1)"; echo
          echo "| variant | torch | median ms | tokens/s | TFLOP/s | MFU of 989 | peak GiB | first loss | last loss |"
          echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
          tail -n +2 "$out/peer.tsv" | sed 's/\t/ | /g; s/^/| /; s/$/ |/'; } >> "$out/summary.md"
    fi
else
    echo "PyTorch peer skipped: python3 with a CUDA PyTorch not found" | tee -a "$out/gpu-check.log"
fi
echo "results in $out (summary.md, checks.tsv, benchmarks.tsv, tests.tsv, sections.tsv, gpu-check.log$([[ $peer_ok -eq 1 ]] && echo ', peer.tsv')) after ${SECONDS} s"
exit "$status"
