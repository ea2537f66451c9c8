using System.Diagnostics;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using ILGPU.Runtime;

namespace DistAlign.GpuCheck;

/// <summary>
/// KV-cache decoding on the accelerator (<c>sample --device cuda</c>): <see cref="GpuGptDecoder"/> against the CPU
/// <see cref="GptDecoder"/> on the same weights (GPT-2 initialisation plus noise, so biases and LayerNorm parameters are not
/// trivial), R rows fed the same random tokens for every position of the decode, fp32 GEMMs. Check: the logits of every step,
/// max |gpu − cpu| ≤ 1e-5 + 1e-4·max |cpu| over the whole decode (summation order only). Timing: ms per cached step
/// (embedding … logits copied to the host, what the sampler waits for), the mean over a whole decode of L positions after a
/// warm-up decode, GPU and CPU (<see cref="CpuParallel.Threads"/> threads) side by side.
/// </summary>
internal sealed class DecoderChecks(Accelerator accelerator, Report report)
{
    private const double AbsoluteTolerance = 1e-5, RelativeTolerance = 1e-4;

    /// <summary>Compares and (when <paramref name="time"/>) times a decode of <paramref name="length"/> positions for <paramref name="rows"/> rows.</summary>
    public void Run(string name, GptConfig config, int rows, int length, bool time)
    {
        string what = $"GpuGptDecoder vs CPU GptDecoder, {name} (L{config.Layers} C{config.Channels} NH{config.Heads} V{config.VocabSize}), {rows} rows × {length} steps";
        try { Compare(what, config, rows, length, time); }
        catch (Exception e) { report.Add(new CheckResult(what, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    private void Compare(string what, GptConfig config, int rows, int length, bool time)
    {
        using var cpu = new Gpt(config);
        cpu.InitializeGpt2(21);
        var noise = KernelChecks.RandomFloats((int)cpu.Layout.TotalElements, 22, 0.02f);
        var p = cpu.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        var gemm = GpuContext.CreateGemm(accelerator, GemmPrecision.Float32);
        using var gemmOwner = gemm as IDisposable;
        using var gpu = new GpuGpt(accelerator, config, gemm);
        gpu.CopyStateFrom(cpu);

        var random = new Random(23);
        var tokens = new int[length][];
        for (int t = 0; t < length; t++) tokens[t] = [.. Enumerable.Range(0, rows).Select(_ => random.Next(config.VocabSize))];
        var cpuDecoder = new GptDecoder(cpu, rows, length);
        using var gpuDecoder = new GpuGptDecoder(gpu, rows, length);
        long perStep = (long)rows * config.VocabSize;
        var cpuLogits = new float[length * perStep];
        var gpuLogits = new float[length * perStep];
        for (int t = 0; t < length; t++)
        {
            cpuDecoder.Step(tokens[t]);
            gpuDecoder.Step(tokens[t]);
            cpuDecoder.Logits.CopyTo(cpuLogits.AsSpan((int)(t * perStep), (int)perStep));
            gpuDecoder.Logits.CopyTo(gpuLogits.AsSpan((int)(t * perStep), (int)perStep));
        }
        double scale = cpuLogits.Max(Math.Abs);
        report.Compare($"{what}: logits of every step (max |cpu| {scale:G3})", gpuLogits, cpuLogits, AbsoluteTolerance + RelativeTolerance * scale, 0);
        if (!time) return;

        double gpuMs = MillisecondsPerStep(gpuDecoder, tokens);
        double cpuMs = MillisecondsPerStep(cpuDecoder, tokens);
        report.Add(new BenchmarkResult($"decoder step (KV cache), {what.Split(", ")[1]}", $"{rows} rows, positions 0…{length - 1}, fp32 GEMMs, logits to the host",
            gpuMs, $"{rows / (gpuMs * 1e-3):N0} tokens/s on the GPU; CPU GptDecoder {cpuMs:F3} ms/step ({CpuParallel.Threads} threads)",
            $"{cpuMs / gpuMs:F1}× the CPU"));
    }

    /// <summary>Mean ms per step over a whole decode, after one warm-up decode.</summary>
    private static double MillisecondsPerStep(IIncrementalDecoder decoder, int[][] tokens)
    {
        double elapsed = 0;
        for (int pass = 0; pass < 2; pass++)
        {
            decoder.Reset();
            var watch = Stopwatch.StartNew();
            foreach (var step in tokens) decoder.Step(step);   // each step ends with the logits on the host
            elapsed = watch.Elapsed.TotalMilliseconds;
        }
        return elapsed / tokens.Length;
    }
}
