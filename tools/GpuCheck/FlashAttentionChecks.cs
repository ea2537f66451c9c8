using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// <see cref="NvrtcFlashAttention"/> (native/flash_attention.cu) on the GPU: forward output and backward dQKV
/// against the CPU <see cref="Attention"/> (fp32, scores materialised) at odd shapes with packed segments,
/// within bf16 bounds (inputs rounded to 8-bit significands: 1.5 % of the output's scale, 3 % of the
/// gradient's); the backward twice, bit for bit; then the kernels' speed at GPT-2 124M's attention shape.
/// </summary>
internal sealed class FlashAttentionChecks(CudaAccelerator accelerator, Report report, bool quick)
{
    private const double OutputFraction = 1.5e-2, GradientFraction = 3e-2;

    /// <summary>The checks against the CPU attention (the CUDA test of tests/Cuda/FlashAttentionTests.cs runs these too).</summary>
    public void RunChecks() => Run(checks: true, benchmark: false);

    /// <summary>The kernels' speed at GPT-2 124M's attention shape (the compiled kernels come from the NVRTC cache).</summary>
    public void RunBenchmark() => Run(checks: false, benchmark: true);

    private void Run(bool checks, bool benchmark)
    {
        NvrtcFlashAttention flash;
        try { flash = new NvrtcFlashAttention(accelerator, NvrtcKernelCache.CreateDefault()); }
        catch (Exception e)
        {
            report.Add(new CheckResult("flash attention: NVRTC compile and load", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
            return;
        }
        using (flash)
        {
            report.Note($"NVRTC kernel {NvrtcFlashAttention.SourceName}: {(flash.LoadedFromCache ? "loaded from" : "compiled into")} {NvrtcKernelCache.DefaultDirectory}");
            if (checks)
                foreach (var (batch, seqLen, heads, segmented) in new[] { (2, 200, 3, true), (1, 1, 1, false), (3, 64, 2, false), (1, 129, 12, true) })
                    Run($"flash attention B{batch} T{seqLen} NH{heads}", () => Check(flash, batch, seqLen, heads, segmented));
            if (benchmark) Run("flash attention benchmark", () => Benchmark(flash));
        }
    }

    /// <summary>
    /// One forward and one backward at GPT-2 124M's attention shape and nothing else: a short process for a profiler
    /// (ncu matches the forward, backward_kv and backward_q launches in that order).
    /// </summary>
    public void RunOnceForProfiler()
    {
        using var flash = new NvrtcFlashAttention(accelerator, NvrtcKernelCache.CreateDefault());
        Run("flash attention, one forward and backward for a profiler", () =>
        {
            var shapes = new GptAttentionShape(quick ? 2 : 16, 1024, 12);
            using var buffers = new BenchmarkBuffers(accelerator, shapes);
            flash.Forward(buffers.Qkv.View, default, shapes.Batch, shapes.SeqLen, shapes.Heads, buffers.Output.View, buffers.LogSumExp.View);
            flash.Backward(buffers.DOut.View, buffers.Qkv.View, default, buffers.Output.View, buffers.LogSumExp.View, shapes.Batch, shapes.SeqLen,
                           shapes.Heads, buffers.Delta.View, buffers.DQkv.View);
            accelerator.Synchronize();
        });
    }

    private sealed record GptAttentionShape(int Batch, int SeqLen, int Heads)
    {
        public int Channels => Heads * NvrtcFlashAttention.HeadSize;
    }

    /// <summary>Device buffers of one attention call at <paramref name="shape"/>, random q, k, v and dout.</summary>
    private sealed class BenchmarkBuffers(CudaAccelerator accelerator, GptAttentionShape shape) : IDisposable
    {
        public MemoryBuffer1D<float, Stride1D.Dense> Qkv { get; } = accelerator.Allocate1D(KernelChecks.RandomFloats(shape.Batch * shape.SeqLen * 3 * shape.Channels, 81));
        public MemoryBuffer1D<float, Stride1D.Dense> DOut { get; } = accelerator.Allocate1D(KernelChecks.RandomFloats(shape.Batch * shape.SeqLen * shape.Channels, 82));
        public MemoryBuffer1D<float, Stride1D.Dense> Output { get; } = accelerator.Allocate1D<float>(shape.Batch * shape.SeqLen * shape.Channels);
        public MemoryBuffer1D<float, Stride1D.Dense> LogSumExp { get; } = accelerator.Allocate1D<float>(shape.Batch * shape.Heads * shape.SeqLen);
        public MemoryBuffer1D<float, Stride1D.Dense> Delta { get; } = accelerator.Allocate1D<float>(shape.Batch * shape.Heads * shape.SeqLen);
        public MemoryBuffer1D<float, Stride1D.Dense> DQkv { get; } = accelerator.Allocate1D<float>(shape.Batch * shape.SeqLen * 3 * shape.Channels);

        public void Dispose()
        {
            foreach (var buffer in new[] { Qkv, DOut, Output, LogSumExp, Delta, DQkv }) buffer.Dispose();
        }
    }

    private void Run(string name, Action action)
    {
        try { action(); }
        catch (Exception e) { report.Add(new CheckResult(name, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    private void Check(NvrtcFlashAttention flash, int batch, int seqLen, int heads, bool segmented)
    {
        int c = heads * NvrtcFlashAttention.HeadSize;
        var qkv = KernelChecks.RandomFloats(batch * seqLen * 3 * c, 71, 1.5f);
        var dOut = KernelChecks.RandomFloats(batch * seqLen * c, 72);
        var segments = segmented ? new int[batch * seqLen] : [];
        for (int i = 0; i < segments.Length; i++) segments[i] = (i % seqLen) < seqLen / 3 ? 4 : 7 + i / seqLen;   // two packed sequences per row
        var att = new float[batch * heads * seqLen * seqLen];
        var output = new float[batch * seqLen * c];
        Attention.Forward(qkv, segments, batch, seqLen, heads, att, output);
        var dQkv = new float[qkv.Length];
        Attention.Backward(dOut, qkv, att, output, batch, seqLen, heads, dQkv);

        using var gQkv = accelerator.Allocate1D(qkv);
        using var gSegments = accelerator.Allocate1D<int>(Math.Max(1, segments.Length));
        if (segments.Length > 0) gSegments.View.SubView(0, segments.Length).CopyFromCPU(segments);
        var segmentView = gSegments.View.SubView(0, segments.Length);
        using var gOut = accelerator.Allocate1D<float>(output.Length);
        using var gLse = accelerator.Allocate1D<float>(batch * heads * seqLen);
        using var gDelta = accelerator.Allocate1D<float>(batch * heads * seqLen);
        using var gDOut = accelerator.Allocate1D(dOut);
        using var gDQkv = accelerator.Allocate1D<float>(qkv.Length);
        string shape = $"[{batch}, {seqLen}, {heads}×64]{(segmented ? ", segments" : "")}";
        flash.Forward(gQkv.View, segmentView, batch, seqLen, heads, gOut.View, gLse.View);
        accelerator.Synchronize();
        report.CompareToScale($"flash attention output {shape} vs CPU attention", gOut.GetAsArray1D(), output, OutputFraction);
        gDQkv.MemSetToZero();
        flash.Backward(gDOut.View, gQkv.View, segmentView, gOut.View, gLse.View, batch, seqLen, heads, gDelta.View, gDQkv.View);
        accelerator.Synchronize();
        var first = gDQkv.GetAsArray1D();
        report.CompareToScale($"flash attention dQKV {shape} vs CPU attention backward", first, dQkv, GradientFraction);
        gDQkv.MemSetToZero();
        flash.Backward(gDOut.View, gQkv.View, segmentView, gOut.View, gLse.View, batch, seqLen, heads, gDelta.View, gDQkv.View);
        accelerator.Synchronize();
        report.Compare($"flash attention dQKV {shape}: second run bit-identical", gDQkv.GetAsArray1D(), first, 0, 0);
    }

    /// <summary>GPT-2 124M's attention (B × 1024 tokens, 12 heads of 64), one layer: forward, backward, CUDA events.</summary>
    private void Benchmark(NvrtcFlashAttention flash)
    {
        var attention = new GptAttentionShape(quick ? 2 : 16, 1024, 12);
        int batch = attention.Batch, seqLen = attention.SeqLen, heads = attention.Heads;
        using var buffers = new BenchmarkBuffers(accelerator, attention);
        var (qkv, dOut, output, lse, delta, dQkv) = (buffers.Qkv, buffers.DOut, buffers.Output, buffers.LogSumExp, buffers.Delta, buffers.DQkv);
        ArrayView<int> noSegments = default;   // one sequence per row
        // Causal products: each of q·kᵀ and P·v is 2·T²·hs/2 per (row, head); the backward does four (dv, dP, dS·k, dSᵀ·q)
        // plus the recomputed q·kᵀ in each of its two kernels.
        double product = 2.0 * seqLen * seqLen * 64 / 2 * batch * heads;
        double forwardMs = Time(() => flash.Forward(qkv.View, noSegments, batch, seqLen, heads, output.View, lse.View));
        double backwardMs = Time(() => flash.Backward(dOut.View, qkv.View, noSegments, output.View, lse.View, batch, seqLen, heads, delta.View, dQkv.View));
        string shape = $"{batch}×{heads} heads × {seqLen}² causal, hs 64";
        report.Add(new BenchmarkResult("flash attention forward (NVRTC, bf16 mma.sync)", shape, forwardMs,
            $"{2 * product / (forwardMs * 1e-3) / 1e12:F1} TFLOP/s (2 causal products)", $"{2 * product / (forwardMs * 1e-3) / KernelBenchmarks.PeakBf16Flops:P1} of 989 TFLOP/s"));
        report.Add(new BenchmarkResult("flash attention backward (NVRTC, bf16 mma.sync)", shape, backwardMs,
            $"{6 * product / (backwardMs * 1e-3) / 1e12:F1} TFLOP/s (6 causal products incl. 2 recomputed)", $"{6 * product / (backwardMs * 1e-3) / KernelBenchmarks.PeakBf16Flops:P1} of 989 TFLOP/s"));
    }

    private double Time(Action launch) => CudaTiming.MedianMilliseconds(accelerator, quick ? 3 : 10, launch);
}
