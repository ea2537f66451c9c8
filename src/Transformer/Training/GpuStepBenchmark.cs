using System.Diagnostics;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using ILGPU.Runtime;

namespace DistAlign.Transformer.Training;

/// <summary>What one <see cref="GpuStepBenchmark.Run"/> measured.</summary>
/// <param name="MedianMilliseconds">median wall time of one whole training step (host to host, synchronised)</param>
/// <param name="FlopsPerStep"><see cref="GpuGpt.TrainingFlops"/> of the step's forward and backward</param>
/// <param name="Mfu">achieved FLOP/s over the given peak</param>
/// <param name="FirstLoss">mean next-token loss of the first (warm-up) step</param>
/// <param name="LastLoss">mean loss of the last step (the same batch every step, so it falls)</param>
/// <param name="Breakdown">milliseconds per kind of op of one extra step run with an <see cref="OpProfile"/> attached
/// (each op synchronised, so the sum exceeds the timed step); empty when not asked for</param>
/// <param name="DeviceBytesInUse">device memory in use after the steps (the whole context, as cuMemGetInfo reports it), when known</param>
public sealed record GpuStepResult(GptConfig Config, int Rows, int Length, GemmPrecision Precision, bool FlashAttention, int TimedSteps,
                                   double MedianMilliseconds, double TokensPerSecond, double FlopsPerStep, double Mfu,
                                   float FirstLoss, float LastLoss, double LastGradientNorm,
                                   IReadOnlyList<(string Op, double Milliseconds)> Breakdown, long? DeviceBytesInUse);

/// <summary>
/// Times whole pretraining steps of <see cref="GpuGpt"/>: upload the batch, forward and backward with the
/// fused LM head (dL/dlogprob = −1/N), global-norm clipping at 1, AdamW (lr 3e-4, weight decay 0.1 on the
/// matrices), all on the device, synchronised at the end of each step. GPT-2 initialisation; random
/// tokens, the same batch every step (the loss must fall: a cheap check that the step learns). With
/// <c>profile</c>, one more step runs with an <see cref="OpProfile"/> attached for the per-op breakdown. With
/// <c>flashAttention</c> (CUDA only), attention runs as <see cref="NvrtcFlashAttention"/>.
/// </summary>
public static class GpuStepBenchmark
{
    public static GpuStepResult Run(Accelerator accelerator, GptConfig config, int rows, int length, GemmPrecision precision,
                                    int warmupSteps, int timedSteps, double peakFlops, ulong seed = 1, bool profile = false,
                                    bool flashAttention = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(warmupSteps, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(timedSteps, 1);
        var gemm = GpuContext.CreateGemm(accelerator, precision);
        using var gemmOwner = gemm as IDisposable;
        using var cpu = new Gpt(config);
        cpu.InitializeGpt2(seed);
        using var flash = flashAttention
            ? new NvrtcFlashAttention(accelerator as ILGPU.Runtime.Cuda.CudaAccelerator
                                      ?? throw new ArgumentException("flash attention needs a CUDA accelerator", nameof(accelerator)), NvrtcKernelCache.CreateDefault())
            : null;
        using var model = new GpuGpt(accelerator, config, gemm, flash);
        if (flashAttention && !model.UsesFlashAttention)
            throw new ArgumentException($"flash attention needs head size {NvrtcFlashAttention.HeadSize}; this config has {config.Channels / config.Heads}");
        model.Upload(cpu);

        var batch = new GptBatch(rows, length);
        var random = new Random((int)seed);
        var window = new int[batch.TokenCount + 1];
        for (int i = 0; i < window.Length; i++) window[i] = random.Next(config.VocabSize);
        batch.SetLanguageModelling(window);
        var dLogProbs = new float[batch.TokenCount];
        Array.Fill(dLogProbs, -1f / batch.TokenCount);
        var logProbs = new float[batch.TokenCount];
        var settings = new AdamWSettings();

        float firstLoss = float.NaN, lastLoss = float.NaN;
        double norm = double.NaN;
        var times = new double[timedSteps];
        int profiledStep = profile ? warmupSteps + timedSteps + 1 : 0;
        var breakdown = new OpProfile();
        for (int step = 1; step <= warmupSteps + timedSteps + (profile ? 1 : 0); step++)
        {
            model.Profile = step == profiledStep ? breakdown : null;
            var watch = Stopwatch.StartNew();
            model.ZeroGradients();
            model.ForwardBackward(batch, dLogProbs, logProbs);
            norm = model.ClipGradients(1f).Norm;
            model.AdamWStep(step, 3e-4f, settings.Beta1, settings.Beta2, settings.Epsilon, settings.WeightDecay);
            model.Synchronize();
            if (step > warmupSteps && step != profiledStep) times[step - warmupSteps - 1] = watch.Elapsed.TotalMilliseconds;
            float loss = -logProbs.Sum() / batch.TokenCount;
            if (step == 1) firstLoss = loss;
            lastLoss = loss;
        }
        model.Profile = null;
        long? inUse = null;
        if (accelerator is ILGPU.Runtime.Cuda.CudaAccelerator)
        {
            var (free, total) = Engine.Cuda.CudaDriver.MemoryInfo();
            inUse = total - free;
        }
        Array.Sort(times);
        double ms = times[timedSteps / 2];
        double flops = GpuGpt.TrainingFlops(config, rows, length);
        return new GpuStepResult(config, rows, length, precision, flashAttention, timedSteps, ms, batch.TokenCount / (ms * 1e-3), flops,
                                 flops / (ms * 1e-3) / peakFlops, firstLoss, lastLoss, norm, breakdown.Totals(), inUse);
    }
}
