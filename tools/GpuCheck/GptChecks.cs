using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using ILGPU.Runtime;

namespace DistAlign.GpuCheck;

/// <summary>
/// The whole GPT on the accelerator: <see cref="GpuGpt"/>'s log-probs and every gradient tensor against the
/// CPU <see cref="Gpt"/> at a tiny odd shape (2 layers, 2 heads, C = 12, V = 37, B = 2, T = 9, row 0 packing
/// two segments), fp32 GEMMs; and the whole-step benchmark (<see cref="Alignment.Benchmarks.StepBenchmark"/>).
/// </summary>
internal sealed class GptChecks(Accelerator accelerator, Report report)
{
    private const double AbsoluteTolerance = 1e-5, RelativeTolerance = 1e-4;

    public void CompareWithTheCpuModel()
    {
        try { Compare(new GptConfig(Layers: 2, Heads: 2, Channels: 12, VocabSize: 37, MaxSequenceLength: 16), length: 9, flash: false, GemmPrecision.Float32); }
        catch (Exception e) { report.Add(new CheckResult("GpuGpt vs CPU Gpt", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    /// <summary>
    /// GpuGpt with <see cref="NvrtcFlashAttention"/> (head size 64) against the CPU Gpt: bf16 attention products, so
    /// log-probs within 2 % and every gradient tensor within 3 % of its largest entry. T = 75 spans two 64-row tiles.
    /// </summary>
    public void CompareFlashWithTheCpuModel()
    {
        var config = new GptConfig(Layers: 2, Heads: 2, Channels: 128, VocabSize: 37, MaxSequenceLength: 80);
        try { Compare(config, length: 75, flash: true, GemmPrecision.Float32); }
        catch (Exception e) { report.Add(new CheckResult("GpuGpt (flash attention) vs CPU Gpt", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
        // Mixed precision, as the GPT-2 step benchmark runs: bf16 operands for every GEMM (weights mirrored, activations rounded).
        try { Compare(config, length: 75, flash: true, GemmPrecision.BFloat16); }
        catch (Exception e) { report.Add(new CheckResult("GpuGpt (flash attention, bf16 GEMMs) vs CPU Gpt", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
        try { Compare(new GptConfig(Layers: 2, Heads: 2, Channels: 12, VocabSize: 37, MaxSequenceLength: 16), length: 9, flash: false, GemmPrecision.BFloat16); }
        catch (Exception e) { report.Add(new CheckResult("GpuGpt (bf16 GEMMs, odd shapes) vs CPU Gpt", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    private void Compare(GptConfig config, int length, bool flash, GemmPrecision precision)
    {
        var batch = new GptBatch(2, length);
        var random = new Random(7);
        for (int i = 0; i < batch.TokenCount; i++)
        {
            batch.Tokens[i] = random.Next(config.VocabSize);
            batch.Targets[i] = i % 9 == 2 ? -1 : random.Next(config.VocabSize);
        }
        int split = (length + 1) / 2 - 1;   // row 0 packs two segments (4 + 5 tokens at T = 9)
        for (int t = 0; t < length; t++)
        {
            batch.Segments[t] = t < split ? 0 : 1;
            batch.Positions[t] = t < split ? t : t - split;
        }
        using var cpu = new Gpt(config);
        cpu.InitializeGpt2(11);
        var noise = KernelChecks.RandomFloats((int)cpu.Layout.TotalElements, 12, 0.05f);
        var p = cpu.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        var dLogProbs = KernelChecks.RandomFloats(batch.TokenCount, 13);
        for (int i = 0; i < batch.TokenCount; i++) if (batch.Targets[i] < 0) dLogProbs[i] = 0f;

        var gemm = GpuContext.CreateGemm(accelerator, precision);
        using var gemmOwner = gemm as IDisposable;
        using var flashAttention = flash ? new NvrtcFlashAttention((ILGPU.Runtime.Cuda.CudaAccelerator)accelerator, NvrtcKernelCache.CreateDefault()) : null;
        using var gpu = new GpuGpt(accelerator, config, gemm, flashAttention);
        gpu.CopyStateFrom(cpu);
        var cpuLogProbs = new float[batch.TokenCount];
        var gpuLogProbs = new float[batch.TokenCount];
        cpu.ForwardBackward(batch, dLogProbs, cpuLogProbs);
        gpu.ForwardBackward(batch, dLogProbs, gpuLogProbs);
        using var fromGpu = new Gpt(config);
        gpu.CopyStateTo(fromGpu);
        if (!flash && precision == GemmPrecision.Float32)
        {
            report.Compare("GpuGpt log-probs vs CPU Gpt", gpuLogProbs, cpuLogProbs, AbsoluteTolerance, RelativeTolerance);
            report.Compare("GpuGpt all gradients vs CPU Gpt", fromGpu.Gradients, cpu.Gradients, AbsoluteTolerance, RelativeTolerance);
            return;
        }
        string what = $"GpuGpt ({(flash ? "flash attention" : "materialized attention")}, {precision} GEMMs{(gpu.UsesBFloat16Operands ? " on bf16 operands" : "")}) C{config.Channels}";
        report.CompareToScale($"{what} log-probs vs CPU Gpt, T {length}", gpuLogProbs, cpuLogProbs, 2e-2);
        foreach (var tensor in cpu.Layout.Tensors)
            report.CompareToScale($"{what} ∂{tensor.Name} vs CPU Gpt", fromGpu.Gradients.Slice((int)tensor.Offset, (int)tensor.Length),
                                  cpu.Gradients.Slice((int)tensor.Offset, (int)tensor.Length), 3e-2);
    }

    /// <summary>
    /// The backbone-only API a reward model and a value head use: <see cref="GpuGpt.ForwardFeatures"/> (h = ln_f(x) [N, C],
    /// read back whole and as gathered rows) and <see cref="GpuGpt.BackwardFeatures"/> (every gradient tensor for a random ∂L/∂h)
    /// against <see cref="Gpt.ForwardFeatures"/> / <see cref="Gpt.BackwardFeatures"/>. Odd shape (C = 15, NH = 3, T = 11, rows
    /// packing 3 and 2 segments): fp32 GEMMs within 1e-5 + 1e-4·|cpu|; bf16 GEMMs within 3 % of each tensor's largest entry.
    /// Flash attention (head size 64: C = 128, NH = 2, T = 75) with fp32 and bf16 GEMMs: h within 2 %, gradients within 3 %.
    /// Also, exactly: the gathered rows are the rows of h, and <see cref="GpuGpt.BackwardFeatureRows"/> equals the dense backward.
    /// </summary>
    public void CompareFeaturesWithTheCpuModel(bool cuda)
    {
        var odd = new GptConfig(Layers: 2, Heads: 3, Channels: 15, VocabSize: 41, MaxSequenceLength: 16);
        var flashShape = new GptConfig(Layers: 2, Heads: 2, Channels: 128, VocabSize: 37, MaxSequenceLength: 80);
        var cases = new List<(GptConfig Config, int Length, bool Flash, GemmPrecision Precision)> { (odd, 11, false, GemmPrecision.Float32) };
        if (cuda)
            cases.AddRange([(odd, 11, false, GemmPrecision.BFloat16), (flashShape, 75, true, GemmPrecision.Float32), (flashShape, 75, true, GemmPrecision.BFloat16)]);
        foreach (var (config, length, flash, precision) in cases)
        {
            string what = $"GpuGpt features ({(flash ? "flash" : "materialized")} attention, {precision} GEMMs) C{config.Channels} T{length}";
            try { CompareFeatures(what, config, length, flash, precision); }
            catch (Exception e) { report.Add(new CheckResult(what + " vs CPU Gpt", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
        }
    }

    private void CompareFeatures(string what, GptConfig config, int length, bool flash, GemmPrecision precision)
    {
        var batch = new GptBatch(2, length);
        var random = new Random(3);
        for (int i = 0; i < batch.TokenCount; i++)
        {
            batch.Tokens[i] = random.Next(config.VocabSize);
            batch.Targets[i] = -1;   // features only: no targets needed
        }
        int[][] starts = [[0, length * 3 / 11, length * 7 / 11], [0, length * 6 / 11]];   // row 0: 3 segments, row 1: 2
        for (int b = 0; b < 2; b++)
            for (int t = 0; t < length; t++)
            {
                int segment = starts[b].Count(x => x <= t) - 1;
                batch.Segments[b * length + t] = segment;
                batch.Positions[b * length + t] = t - starts[b][segment];
            }
        using var cpu = new Gpt(config);
        cpu.InitializeGpt2(17);
        var noise = KernelChecks.RandomFloats((int)cpu.Layout.TotalElements, 18, 0.05f);
        var p = cpu.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        var dFeatures = KernelChecks.RandomFloats(batch.TokenCount * config.Channels, 19);

        var gemm = GpuContext.CreateGemm(accelerator, precision);
        using var gemmOwner = gemm as IDisposable;
        using var flashAttention = flash ? new NvrtcFlashAttention((ILGPU.Runtime.Cuda.CudaAccelerator)accelerator, NvrtcKernelCache.CreateDefault()) : null;
        using var gpu = new GpuGpt(accelerator, config, gemm, flashAttention);
        if (flash && !gpu.UsesFlashAttention) throw new InvalidOperationException("flash attention was not taken up");
        gpu.CopyStateFrom(cpu);
        cpu.ZeroGradients();
        float[] expected = cpu.ForwardFeatures(batch).ToArray();
        cpu.BackwardFeatures(batch, dFeatures);
        gpu.ZeroGradients();
        gpu.ForwardFeatures(batch);
        var features = new float[expected.Length];
        gpu.CopyFeaturesToHost(features);
        int[] positions = [length - 1, 0, 2 * length - 1, length + 1];
        var rows = new float[positions.Length * config.Channels];
        gpu.CopyFeaturesToHost(positions, rows);
        var expectedRows = positions.SelectMany(x => features.AsSpan(x * config.Channels, config.Channels).ToArray()).ToArray();
        report.Compare($"{what}: gathered rows = the same rows of h", rows, expectedRows, 0, 0);
        gpu.BackwardFeatures(batch, dFeatures);
        using var fromGpu = new Gpt(config);
        gpu.CopyStateTo(fromGpu);
        // the rows form (a reward model's): ∂L/∂h scattered from S rows on the device = the dense call with those rows, bit for bit
        var dRows = positions.SelectMany(x => dFeatures.AsSpan(x * config.Channels, config.Channels).ToArray()).ToArray();
        var sparse = new float[dFeatures.Length];
        for (int i = 0; i < positions.Length; i++) dRows.AsSpan(i * config.Channels, config.Channels).CopyTo(sparse.AsSpan(positions[i] * config.Channels));
        using var viaDense = new Gpt(config);
        using var viaRows = new Gpt(config);
        gpu.ZeroGradients();
        gpu.ForwardFeatures(batch);
        gpu.BackwardFeatures(batch, sparse);
        gpu.CopyStateTo(viaDense);
        gpu.ZeroGradients();
        gpu.ForwardFeatures(batch);
        gpu.BackwardFeatureRows(batch, positions, dRows);
        gpu.CopyStateTo(viaRows);
        report.Compare($"{what}: BackwardFeatureRows = BackwardFeatures of the scattered rows", viaRows.Gradients, viaDense.Gradients, 0, 0);
        if (!flash && precision == GemmPrecision.Float32)
        {
            report.Compare($"{what}: h = ln_f(x) vs CPU Gpt", features, expected, AbsoluteTolerance, RelativeTolerance);
            report.Compare($"{what}: all gradients vs CPU Gpt", fromGpu.Gradients, cpu.Gradients, AbsoluteTolerance, RelativeTolerance);
            return;
        }
        report.CompareToScale($"{what}: h = ln_f(x) vs CPU Gpt", features, expected, flash ? 2e-2 : 3e-2);
        foreach (var tensor in cpu.Layout.Tensors)
            report.CompareToScale($"{what}: ∂{tensor.Name} vs CPU Gpt", fromGpu.Gradients.Slice((int)tensor.Offset, (int)tensor.Length),
                                  cpu.Gradients.Slice((int)tensor.Offset, (int)tensor.Length), 3e-2);
    }

    /// <summary>Whole training steps at <paramref name="config"/>, B × T, reported as ms/step, tokens/s and MFU against <paramref name="peakFlops"/>.</summary>
    public void StepBenchmark(string name, GptConfig config, int rows, int length, GemmPrecision precision, int warmup, int steps, double peakFlops,
                              bool profile = false, bool flash = false)
    {
        if (flash) name += " flash attention,";
        try
        {
            if (flash && !NvrtcFlashAttention.Supports(config.Channels, config.Heads))
                throw new ArgumentException($"flash attention needs head size {NvrtcFlashAttention.HeadSize}; this config has {config.Channels / config.Heads}");
            var gemm = GpuContext.CreateGemm(accelerator, precision);
            using var gemmOwner = gemm as IDisposable;
            using var flashKernels = flash ? new NvrtcFlashAttention((ILGPU.Runtime.Cuda.CudaAccelerator)accelerator, NvrtcKernelCache.CreateDefault()) : null;
            var device = new GptDevice(accelerator, gemm, flashKernels, $"{accelerator.Name} ({precision} GEMMs)");
            var workload = new StepWorkload(name, config, rows, length);
            var r = Alignment.Benchmarks.StepBenchmark.Run(device, workload, StepSettings.Pretraining, warmup, steps, profiledSteps: profile ? 1 : 0);
            string memory = r.DeviceBytesInUse is long bytes ? $", {bytes / (double)(1L << 30):F1} GiB of device memory in use" : "";
            report.Add(new BenchmarkResult($"{name} whole training step (fwd+bwd+clip+AdamW), {precision} GEMMs",
                $"{rows}×{length} tokens, L{config.Layers} C{config.Channels} NH{config.Heads} V{config.VocabSize}, {workload.FlopsPerStep / 1e12:F3} TFLOP per step (llm.c's count)",
                r.MedianMilliseconds, $"{r.TokensPerSecond:N0} tokens/s, {workload.FlopsPerStep / (r.MedianMilliseconds * 1e-3) / 1e12:F2} TFLOP/s{memory}",
                $"MFU {r.Mfu(peakFlops):P1} of {peakFlops / 1e12:F0} TFLOP/s (llm.c's count; {r.NanoGptMfu(peakFlops):P1} in nanoGPT's)"));
            double profiled = r.OpMillisecondsPerStep.Sum(x => x.Milliseconds);
            foreach (var (op, ms) in r.OpMillisecondsPerStep)
                report.Add(new BenchmarkResult($"{name} {precision} step breakdown: {op}", "one step, each op synchronised", ms,
                                               $"{ms / profiled:P1} of the profiled step ({profiled:F1} ms)", ""));
            bool learns = float.IsFinite(r.LastLoss) && r.LastLoss < r.FirstLoss;
            report.Add(new CheckResult($"{name} step: loss falls on a repeated batch ({r.FirstLoss:F4} → {r.LastLoss:F4}, last grad norm {r.LastGradientNorm:F3})",
                1, 0, 0, "last loss < first loss", learns ? null : "the loss did not fall"));
        }
        catch (Exception e)
        {
            report.Add(new CheckResult($"{name} whole training step", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
        }
    }
}
