using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// Timings with CUDA events on ILGPU's stream (median of repeats after warm-up):
/// every GEMM of one GPT-2 124M training step (B·T = 16×1024 tokens, 12 layers, C = 768, 12 heads,
/// V = 50,257; forward and backward, attention as strided-batched GEMMs) in fp32, TF32 and bf16, summed into
/// GEMM-only tokens/s and MFU against 989 TFLOP/s (H100/H200 SXM dense bf16); and the fused target-log-prob
/// kernels' read bandwidth against 4.8 TB/s (H200 HBM3e). The LM head GEMMs are timed as
/// <see cref="GpuSequenceLogProbs"/> runs them (chunks of <see cref="GpuSequenceLogProbs.ChunkRows"/> rows, logits
/// row stride Vp = 50,304 = <see cref="GpuSequenceLogProbs.RowStride"/>: these count in the step sum) — in bf16 with
/// bf16 operands and the vocabulary padded (n = Vp forward, k = Vp for dX, m = V for dW:
/// <see cref="GpuSequenceLogProbs.UsesBFloat16Operands"/>), in TF32/fp32 with n = k = V — and for comparison: in bf16
/// the unpadded chunk shapes of run 3 (n = k = V), and in every precision the whole batch with the padded stride and
/// with the unpadded one (ld = 50,257, unaligned rows: the shapes of run 1).
/// </summary>
internal sealed class KernelBenchmarks(CudaAccelerator accelerator, Report report, bool quick)
{
    public const double PeakBf16Flops = 989e12;
    public const double PeakBytesPerSecond = 4.8e12;

    private const int Layers = 12, Channels = 768, Heads = 12, HeadDim = 64, Vocab = 50257, SeqLen = 1024;
    private int Batch => quick ? 2 : 16;
    private int Tokens => Batch * SeqLen;
    private int Repeats => quick ? 3 : 10;

    /// <summary>
    /// One GEMM shape of the step: row-major C[m×n] = op(A)·op(B), batch (1 = plain), how many per step (0: timed for
    /// comparison, not in the step sum); leading dimensions of A and C when not dense (0 = dense).
    /// </summary>
    private sealed record StepGemm(string Name, bool TransA, bool TransB, int M, int N, int K, int BatchCount, int PerStep, int Lda = 0, int Ldc = 0)
    {
        public double Flops => 2.0 * M * N * K * BatchCount;
    }

    private IEnumerable<StepGemm> StepGemms(GemmPrecision precision)
    {
        int n = Tokens, c = Channels, bh = Batch * Heads, t = SeqLen;
        var linears = new (string Name, int In, int Out)[] { ("qkv", c, 3 * c), ("attn proj", c, c), ("fc", c, 4 * c), ("fc proj", 4 * c, c) };
        foreach (var (name, input, output) in linears)
        {
            yield return new($"{name} forward", false, false, n, output, input, 1, Layers);
            yield return new($"{name} dX", false, true, n, input, output, 1, Layers);
            yield return new($"{name} dW", true, false, input, output, n, 1, Layers);
        }
        // LM head: logits [rows, ·] = h·Eᵀ stored with row stride vp; dh = dlogits·E and dE = dlogitsᵀ·h read them with lda = vp.
        // bf16 (the step's GpuSequenceLogProbs with a bf16-rounding cuBLAS GEMM): bf16 operands, E padded with zero rows to
        // [vp, C], so the forward has n = vp and dX has k = vp; dW keeps m = V (the real rows of ∂E). TF32/fp32: n = k = V.
        int vp = GpuSequenceLogProbs.RowStride(Vocab);
        int chunk = GpuSequenceLogProbs.ChunkRows(n, Vocab, GpuSequenceLogProbs.ScratchLength(n, Vocab));
        int chunks = (n + chunk - 1) / chunk;   // even chunks (ChunkRows): all of them this size
        int padded = precision == GemmPrecision.BFloat16 ? vp : Vocab;
        yield return new($"lm head forward, {chunk}-row chunk, n {padded}, ldc {vp}", false, true, chunk, padded, c, 1, chunks, Ldc: vp);
        yield return new($"lm head dX, {chunk}-row chunk, k {padded}, lda {vp}", false, false, chunk, c, padded, 1, chunks, Lda: vp);
        yield return new($"lm head dW, {chunk}-row chunk, m {Vocab}, lda {vp}", true, false, Vocab, c, chunk, 1, chunks, Lda: vp);
        if (padded != Vocab)
        {
            yield return new($"lm head forward, {chunk}-row chunk, n {Vocab} unpadded (run 3, not in step sum)", false, true, chunk, Vocab, c, 1, 0, Ldc: vp);
            yield return new($"lm head dX, {chunk}-row chunk, k {Vocab} unpadded (run 3, not in step sum)", false, false, chunk, c, Vocab, 1, 0, Lda: vp);
        }
        yield return new($"lm head forward, ldc {vp} (whole batch, not in step sum)", false, true, n, Vocab, c, 1, 0, Ldc: vp);
        yield return new($"lm head dX, lda {vp} (whole batch, not in step sum)", false, false, n, c, Vocab, 1, 0, Lda: vp);
        yield return new($"lm head dW, lda {vp} (whole batch, not in step sum)", true, false, Vocab, c, n, 1, 0, Lda: vp);
        yield return new("lm head forward (unpadded, not in step sum)", false, true, n, Vocab, c, 1, 0);
        yield return new("lm head dX (unpadded, not in step sum)", false, false, n, c, Vocab, 1, 0);
        yield return new("lm head dW (unpadded, not in step sum)", true, false, Vocab, c, n, 1, 0);
        yield return new("attention QKᵀ", false, true, t, t, HeadDim, bh, Layers);
        yield return new("attention PV", false, false, t, HeadDim, t, bh, Layers);
        yield return new("attention dP = dO·Vᵀ", false, true, t, t, HeadDim, bh, Layers);
        yield return new("attention dV = Pᵀ·dO", true, false, t, HeadDim, t, bh, Layers);
        yield return new("attention dQ = dS·K", false, false, t, HeadDim, t, bh, Layers);
        yield return new("attention dK = dSᵀ·Q", true, false, t, HeadDim, t, bh, Layers);
    }

    public void RunAll()
    {
        accelerator.Bind();
        foreach (var precision in new[] { GemmPrecision.BFloat16, GemmPrecision.Tf32, GemmPrecision.Float32 })
            Run($"GEMM benchmark {precision}", () => StepGemmBenchmark(precision));
        Run("fused log-prob bandwidth benchmark", LogProbBandwidth);
        report.Note("PyTorch eager comparison: not measured by gpu-check (it needs Python + CUDA PyTorch on the GPU machine)");
    }

    /// <summary>Runs one benchmark; a failure is reported as a failed check and the next benchmark still runs.</summary>
    private void Run(string name, Action benchmark)
    {
        try { benchmark(); }
        catch (Exception e) { report.Add(new CheckResult(name, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    private double Time(Action launch) => CudaTiming.MedianMilliseconds(accelerator, Repeats, launch);

    /// <summary>Fills a device buffer with a repeated block of random values in [−scale, scale] (real data, not zeros: power and clocks depend on it).</summary>
    private static void Fill<T>(ArrayView<T> view, Func<float, T> convert, float scale = 1f) where T : unmanaged
    {
        const int block = 1 << 20;
        var rng = new Random(1);
        var host = new T[(int)Math.Min(block, view.Length)];
        for (int i = 0; i < host.Length; i++) host[i] = convert((float)(rng.NextDouble() * 2 - 1) * scale);
        for (long at = 0; at < view.Length; at += host.Length)
        {
            long count = Math.Min(host.Length, view.Length - at);
            view.SubView(at, count).CopyFromCPU(host.AsSpan(0, (int)count));
        }
    }

    private static ushort Bf16(float x) => DistAlign.Engine.SafeTensors.HalfPrecision.ToBFloat16Bits(x);

    private void StepGemmBenchmark(GemmPrecision precision)
    {
        using var gemm = new CublasGemm(accelerator, precision);
        double stepMs = 0, stepFlops = 0;
        foreach (var g in StepGemms(precision))
        {
            long aRows = g.TransA ? g.K : g.M, aCols = g.TransA ? g.M : g.K, bRows = g.TransB ? g.N : g.K, bCols = g.TransB ? g.K : g.N;
            int lda = g.Lda == 0 ? (int)aCols : g.Lda, ldc = g.Ldc == 0 ? g.N : g.Ldc;
            long aSize = aRows * lda * g.BatchCount, bSize = bRows * bCols * g.BatchCount, cSize = (long)g.M * ldc * g.BatchCount;
            double ms;
            using var c = accelerator.Allocate1D<float>(cSize);
            if (precision == GemmPrecision.BFloat16 && g.BatchCount == 1)
            {
                using var a = accelerator.Allocate1D<ushort>(aSize);
                using var b = accelerator.Allocate1D<ushort>(bSize);
                Fill<ushort>(a.View, Bf16);
                Fill<ushort>(b.View, Bf16);
                ms = Time(() => gemm.MultiplyBFloat16(g.TransA, g.TransB, g.M, g.N, g.K, 1f, a.View, lda, b.View, (int)bCols, 0f, c.View, ldc));
            }
            else
            {
                using var a = accelerator.Allocate1D<float>(aSize);
                using var b = accelerator.Allocate1D<float>(bSize);
                Fill<float>(a.View, x => x);
                Fill<float>(b.View, x => x);
                ms = g.BatchCount == 1
                    ? Time(() => gemm.Multiply(g.TransA, g.TransB, g.M, g.N, g.K, 1f, a.View, lda, b.View, (int)bCols, 0f, c.View, ldc))
                    : Time(() => gemm.MultiplyStridedBatched(g.TransA, g.TransB, g.M, g.N, g.K, 1f, a.View, lda, aRows * lda,
                                                             b.View, (int)bCols, bRows * bCols, 0f, c.View, ldc, (long)g.M * ldc, g.BatchCount));
            }
            stepMs += ms * g.PerStep;
            stepFlops += g.Flops * g.PerStep;
            string shape = (g.BatchCount > 1 ? $"{g.BatchCount}×" : "") + $"{g.M}×{g.N}×{g.K} {(g.TransA ? 'T' : 'N')}{(g.TransB ? 'T' : 'N')}"
                           + (g.Lda != 0 ? $" lda {g.Lda}" : "") + (g.Ldc != 0 ? $" ldc {g.Ldc}" : "") + (g.PerStep > 1 ? $" ×{g.PerStep} per step" : "");
            report.Add(new BenchmarkResult($"GEMM {precision} {g.Name}", shape, ms, $"{g.Flops / (ms * 1e-3) / 1e12:F1} TFLOP/s",
                                           $"{g.Flops / (ms * 1e-3) / PeakBf16Flops:P1} of 989 TFLOP/s"));
        }
        double achieved = stepFlops / (stepMs * 1e-3);
        report.Add(new BenchmarkResult($"GPT-2 124M step, all GEMMs, {precision}", $"{Batch}×{SeqLen} tokens, {stepFlops / 1e12:F2} TFLOP per step",
            stepMs, $"{Tokens / (stepMs * 1e-3):N0} tokens/s (GEMMs only), {achieved / 1e12:F1} TFLOP/s", $"MFU {achieved / PeakBf16Flops:P1} of 989 TFLOP/s"));
    }

    private void LogProbBandwidth()
    {
        int rows = Tokens;
        var targets = Enumerable.Range(0, rows).Select(r => (r * 7919) % Vocab).ToArray();
        using var dt = accelerator.Allocate1D(targets);
        using var lp = accelerator.Allocate1D<float>(rows);
        using var lse = accelerator.Allocate1D<float>(rows);
        using var nvrtc = new NvrtcTargetLogProbs(accelerator, NvrtcKernelCache.CreateDefault());
        var ilgpu = new GpuTargetLogProbs(accelerator);
        string shape = $"{rows}×{Vocab}";
        {
            using var logits16 = accelerator.Allocate1D<ushort>((long)rows * Vocab);
            Fill<ushort>(logits16.View, Bf16, 8f);
            double ms = Time(() => nvrtc.Forward(logits16.View, dt.View, Vocab, lp.View, lse.View));
            Bandwidth("fused log-probs NVRTC bf16", shape, ms, (long)rows * Vocab * 2);
        }
        {
            using var logits = accelerator.Allocate1D<float>((long)rows * Vocab);
            Fill<float>(logits.View, x => x, 8f);
            Bandwidth("fused log-probs NVRTC fp32", shape, Time(() => nvrtc.Forward(logits.View, dt.View, Vocab, lp.View, lse.View)), (long)rows * Vocab * 4);
            Bandwidth("fused log-probs ILGPU fp32", shape, Time(() => ilgpu.Forward(logits.View, dt.View, Vocab, lp.View, lse.View)), (long)rows * Vocab * 4);
        }
        int stride = GpuSequenceLogProbs.RowStride(Vocab);   // the LM head's padded rows: each starts 256-byte aligned
        using var padded = accelerator.Allocate1D<float>((long)rows * stride);
        Fill<float>(padded.View, x => x, 8f);
        Bandwidth($"fused log-probs ILGPU fp32, row stride {stride}", shape, Time(() => ilgpu.Forward(padded.View, dt.View, Vocab, stride, lp.View, lse.View)),
                  (long)rows * Vocab * 4);
        Bandwidth($"fused log-probs NVRTC fp32, row stride {stride}", shape, Time(() => nvrtc.Forward(padded.View, dt.View, Vocab, stride, lp.View, lse.View)),
                  (long)rows * Vocab * 4);
        // The LM head's backward on its bf16 path: read fp32 logits, write bf16 d(logits) (both counted: 6 bytes per column)
        using var dLogProbs = accelerator.Allocate1D<float>(rows);
        Fill<float>(dLogProbs.View, x => x, 1f);
        using var gradient = accelerator.Allocate1D<ushort>((long)rows * stride);
        Bandwidth($"d(logits) to bf16 ILGPU, row stride {stride}", shape,
                  Time(() => ilgpu.BackwardToBFloat16(padded.View, dt.View, Vocab, stride, lse.View, dLogProbs.View, gradient.View)), (long)rows * stride * 6);
        Bandwidth($"d(logits) to bf16 NVRTC, row stride {stride}", shape,
                  Time(() => nvrtc.BackwardToBFloat16(padded.View, dt.View, Vocab, stride, lse.View, dLogProbs.View, gradient.View)), (long)rows * stride * 6);
    }

    private void Bandwidth(string name, string shape, double ms, long bytes)
    {
        double perSecond = bytes / (ms * 1e-3);
        report.Add(new BenchmarkResult(name, shape, ms, $"{perSecond / 1e12:F2} TB/s moved", $"{perSecond / PeakBytesPerSecond:P1} of 4.8 TB/s"));
    }
}
