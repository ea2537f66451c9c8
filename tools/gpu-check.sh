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

# The PyTorch eager peer and its stronger variants, same model and step (GPT-2 124M, 16 × 1024 tokens, bf16 autocast, clip 1,
# AdamW; tools/peers/torch_step.py): strongest first (SDPA + padded vocabulary + fused AdamW + chunked cross-entropy, the same
# with torch.compile where this torch has it, SDPA alone, written-out attention, then torch.compile with the plain
# cross-entropy), all within GPU_CHECK_PEER_LIMIT_S (default 180 s, cut to what is left of GPU_CHECK_TOTAL_S; each variant gets at most 90 s eager, 240 s compiled, and
# none starts with under 20 s left). After each variant: peer.jsonl (its JSON or why it failed), peer.tsv and peer.md
# rewritten; at the end peer.md is appended to summary.md: every variant, DistAlign's fastest whole step of the same shape
# from benchmarks.tsv, and our step against the FASTEST variant. MFU in llm.c's convention (6·N + 6·L·C·T FLOPs per token),
# nanoGPT's (6·N + 12·L·C·T) beside it, against the device's dense bf16 tensor peak (989 TFLOP/s on H100/H200 SXM).
peer_ok=0
peer_limit="${GPU_CHECK_PEER_LIMIT_S:-180}"
# ... and never past what is left of GPU_CHECK_TOTAL_S (the whole script's cap).
(( peer_limit > total_limit - SECONDS )) && peer_limit=$(( total_limit - SECONDS > 0 ? total_limit - SECONDS : 0 ))
if torch_info=$(python3 -c 'import torch, sys; sys.exit(1) if not torch.cuda.is_available() else print(torch.__version__, hasattr(torch, "compile"))' 2>/dev/null); then
    rows=16; steps=20
    [[ " $* " == *" --quick "* ]] && { rows=2; steps=3; }
    common=(--workload gpt2 --device cuda --bf16 --clip 1 --rows "$rows" --warmup 3 --steps "$steps" --no-install)
    strong=(--attention sdpa --pad-vocab --fused-adamw)
    variants=("${strong[*]} --chunked-ce" "${strong[*]} --chunked-ce --compile" "--attention sdpa" "--attention manual" "${strong[*]} --compile")
    : > "$out/peer.jsonl"; : > "$out/peer.log"
    peer_start=$SECONDS
    for flags in "${variants[@]}"; do
        compiled=0; [[ "$flags" == *--compile* ]] && compiled=1
        left=$(( peer_limit - (SECONDS - peer_start) ))
        cap=$(( compiled ? 240 : 90 )); (( cap > left )) && cap=$left
        if [[ $compiled -eq 1 && "$torch_info" != *True ]]; then
            printf '{"flags": "%s", "error": "skipped: torch.compile is not supported by torch %s"}\n' "$flags" "${torch_info%% *}" >> "$out/peer.jsonl"
        elif (( left < 20 )); then
            printf '{"flags": "%s", "error": "skipped: %s s left of the %s s peer cap (GPU_CHECK_PEER_LIMIT_S)"}\n' "$flags" "$left" "$peer_limit" >> "$out/peer.jsonl"
        else
            echo "peer: torch_step.py $flags (at most $cap s)" | tee -a "$out/peer.log"
            # shellcheck disable=SC2086  # flags is a list of options
            if json=$(timeout --kill-after=10 "$cap" python3 "$repo/tools/peers/torch_step.py" "${common[@]}" $flags 2>"$out/peer.err"); then
                cat "$out/peer.err" >> "$out/peer.log"; echo "$json" >> "$out/peer.log"
                if python3 -c 'import json, sys; r = json.loads(sys.argv[2]); r["flags"] = sys.argv[1]; print(json.dumps(r))' \
                       "$flags" "$(tail -n 1 <<< "$json")" >> "$out/peer.jsonl"; then
                    peer_ok=1
                else
                    printf '{"flags": "%s", "error": "printed no JSON (peer.log)"}\n' "$flags" >> "$out/peer.jsonl"
                fi
            else
                code=$?
                cat "$out/peer.err" >> "$out/peer.log"
                if (( code == 124 || code == 137 )); then why="timed out at $cap s"; else why=$( (grep -v '^[[:space:]]*$' "$out/peer.err" || true) | tail -n 1 | cut -c1-200); fi
                python3 -c 'import json, sys; print(json.dumps({"flags": sys.argv[1], "error": f"exit {sys.argv[2]}: {sys.argv[3]} (peer.log)"}))' \
                    "$flags" "$code" "$why" >> "$out/peer.jsonl" || true
            fi
        fi
        rm -f "$out/peer.err"
        if python3 - "$out" "$rows" "$peer_limit" <<'PY'
import json, math, os, sys
out, rows, cap = sys.argv[1], int(sys.argv[2]), sys.argv[3]
length = 1024   # the gpt2 workload's sequence length
runs = [json.loads(line) for line in open(os.path.join(out, "peer.jsonl")) if line.strip()]
ok = [r for r in runs if "median_ms" in r]
fastest = min(ok, key=lambda r: r["median_ms"]) if ok else None
fmt = lambda x, f: "" if x is None else format(x, f)
columns = ["variant", "flags", "torch", "device", "median_ms", "tokens_per_s", "tflops_llmc", "mfu_llmc", "mfu_nanogpt",
           "peak_tflops", "peak_memory_gib", "first_loss", "last_loss", "notes"]
with open(os.path.join(out, "peer.tsv"), "w") as tsv:
    print("\t".join(columns), file=tsv)
    for r in runs:
        notes = r.get("error") or "; ".join(f"{k}: {v}" for k, v in r.get("not_supported", {}).items())
        print("\t".join([r.get("variant", "(not measured)"), r["flags"], r.get("torch", ""), r.get("device", ""),
                         fmt(r.get("median_ms"), ".2f"), fmt(r.get("tokens_per_s"), ".0f"), fmt(r.get("tflops_llmc"), ".1f"),
                         fmt(r.get("mfu_llmc"), ".4f"), fmt(r.get("mfu_nanogpt"), ".4f"), fmt(r.get("peak_tflops"), ".0f"),
                         fmt(r.get("peak_memory_gib"), ".1f"), fmt(r.get("first_loss"), ".4f"), fmt(r.get("last_loss"), ".4f"),
                         notes.replace("\t", " ")]), file=tsv)
# DistAlign's fastest whole training step of the same shape, from the bundle's benchmarks.tsv (median_ms column)
ours = None
try:
    with open(os.path.join(out, "benchmarks.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            row = dict(zip(header, line.rstrip("\n").split("\t")))
            if ("whole training step" in row.get("benchmark", "") and row.get("shape", "").startswith(f"{rows}×{length} tokens")
                    and row.get("median_ms")):
                ms = float(row["median_ms"])
                if math.isfinite(ms) and (ours is None or ms < ours[1]):
                    ours = (row["benchmark"], ms)
except (OSError, ValueError):
    pass
md = [f"## PyTorch peer, every variant (same machine, same model and step: tools/peers/torch_step.py --workload gpt2 --device cuda "
      f"--bf16 --clip 1 --rows {rows})", ""]
if fastest:
    f = fastest
    md += [f"GPT-2 124M, {rows} × {length} tokens, bf16 autocast, clip 1, AdamW; torch {f['torch']} on {f['device']}; variants run "
           f"strongest first within the peer cap of {cap} s (GPU_CHECK_PEER_LIMIT_S). MFU in llm.c's convention, 6·N + 6·L·C·T "
           f"FLOPs per token ({f['flops_per_step_llmc'] / 1e12:.3f} TFLOP per step, N = {f['parameters']:,} with the real vocabulary), "
           f"nanoGPT's 6·N + 12·L·C·T ({f['flops_per_step_nanogpt'] / 1e12:.3f} TFLOP) beside it; peak {f['peak_tflops']:.0f} TFLOP/s "
           f"({f['peak_source']}).", ""]
md += ["| variant | median ms | tokens/s | TFLOP/s (llm.c) | MFU llm.c | MFU nanoGPT | peak GiB | first loss | last loss | notes |",
       "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
for r in runs:
    if "median_ms" not in r:
        md.append(f"| PyTorch `{r['flags']}` (not measured) | | | | | | | | | {r.get('error', '')} |")
        continue
    star = " **(fastest)**" if r is fastest else ""
    notes = "; ".join(f"{k}: {v}" for k, v in r.get("not_supported", {}).items())
    md.append(f"| PyTorch: {r['variant']}{star} | {r['median_ms']:.2f} | {r['tokens_per_s']:,.0f} | {r['tflops_llmc']:.1f} | "
              f"{r['mfu_llmc'] * 100:.1f} % | {r['mfu_nanogpt'] * 100:.1f} % | {r['peak_memory_gib']:.1f} | {r['first_loss']:.4f} | {r['last_loss']:.4f} | {notes} |")
if ours and fastest:
    f = fastest
    seconds = ours[1] * 1e-3
    md.append(f"| **DistAlign: {ours[0]}** | **{ours[1]:.2f}** | {rows * length / seconds:,.0f} | {f['flops_per_step_llmc'] / seconds / 1e12:.1f} | "
              f"**{f['flops_per_step_llmc'] / seconds / 1e10 / f['peak_tflops']:.1f} %** | {f['flops_per_step_nanogpt'] / seconds / 1e10 / f['peak_tflops']:.1f} % "
              f"| | | | benchmarks.tsv, same FLOP count |")
    ratio = f["median_ms"] / ours[1]
    verdict = f"{ratio:.2f}× faster" if ratio >= 1 else f"{1 / ratio:.2f}× slower"
    md += ["", f"**DistAlign against the fastest PyTorch variant** ({f['variant']}, {f['median_ms']:.2f} ms): {ours[1]:.2f} ms, "
               f"{verdict} ({ours[1] / f['median_ms']:.3f} of its time)."]
elif fastest:
    md += ["", f"DistAlign's whole step at {rows} × {length} tokens is not in benchmarks.tsv (the bundle's run did not reach it): no comparison."]
else:
    md += ["", "No PyTorch variant finished: no comparison."]
open(os.path.join(out, "peer.md"), "w").write("\n".join(md) + "\n")
PY
        then :; else echo "peer: writing peer.tsv / peer.md failed (peer.log)" | tee -a "$out/peer.log"; fi
    done
    if [[ -f "$out/summary.md" && -f "$out/peer.md" ]]; then { echo; cat "$out/peer.md"; } >> "$out/summary.md"; fi
else
    echo "PyTorch peer skipped: python3 with a CUDA PyTorch not found" | tee -a "$out/gpu-check.log"
fi
echo "results in $out (summary.md, checks.tsv, benchmarks.tsv, tests.tsv, sections.tsv, gpu-check.log$([[ $peer_ok -eq 1 ]] && echo ', peer.tsv, peer.md, peer.jsonl, peer.log')) after ${SECONDS} s"
exit "$status"
