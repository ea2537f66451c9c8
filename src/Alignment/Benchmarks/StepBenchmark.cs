using System.Diagnostics;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Benchmarks;

/// <summary>A training-step workload: model size and batch.</summary>
public sealed record StepWorkload(string Name, GptConfig Config, int Rows, int Length)
{
    /// <summary>W1: GPT-2 124M, batch 4 × 64 (llm.c's CPU test configuration).</summary>
    public static StepWorkload W1 => new("W1", GptConfig.Gpt2Small, 4, 64);
    /// <summary>W2: 4 layers, 4 heads, width 256, vocabulary 4,096, context 128, batch 8 × 128.</summary>
    public static StepWorkload W2 => new("W2", new GptConfig(4, 4, 256, 4096, 128), 8, 128);
    /// <summary>GPT-2 124M at batch 16 × 1024: issue #8's GPU workload (llm.c's and nanoGPT's GPU configuration).</summary>
    public static StepWorkload Gpt2 => new("GPT-2 124M", GptConfig.Gpt2Small with { MaxSequenceLength = 1024 }, 16, 1024);

    public int Tokens => Rows * Length;

    /// <summary>
    /// Model FLOPs of one step with causal attention counted as half the T×T products: 6·N per token for the weights
    /// (N = every parameter, the tied LM head counted once) plus 6·L·C·T per token, as llm.c counts them. The numerator of
    /// the GFLOP/s figure and of MFU.
    /// </summary>
    public double FlopsPerStep => Tokens * (6.0 * Config.ParameterCount + 6.0 * Config.Layers * Config.Channels * Length);

    /// <summary>
    /// Model FLOPs of one step as nanoGPT counts them for MFU: 6·N per token plus 12·L·C·T per token for attention (QKᵀ and
    /// A·V, forward and backward, the full T×T). llm.c counts causal attention as half of that (<see cref="FlopsPerStep"/>, the
    /// MFU figure's numerator); this one is printed beside it, so figures quoted in either convention compare.
    /// </summary>
    public double NanoGptFlopsPerStep => Tokens * (6.0 * Config.ParameterCount + 12.0 * Config.Layers * Config.Channels * Length);
}

/// <summary>How <see cref="StepBenchmark.Run"/> steps: the learning rate and the gradient clip (0: none, as the CPU peer's step).</summary>
public sealed record StepSettings(float LearningRate = 1e-4f, float GradientClip = 0f)
{
    /// <summary>The CPU workloads' step, what the PyTorch peer runs: AdamW at 1e-4, no clipping.</summary>
    public static StepSettings Peer { get; } = new();

    /// <summary>A pretraining step as llm.c's and nanoGPT's GPU runs: AdamW at 3e-4, global-norm clipping at 1.</summary>
    public static StepSettings Pretraining { get; } = new(3e-4f, 1f);
}

/// <summary>What <see cref="StepBenchmark.Run"/> measured.</summary>
/// <param name="Device">the device the engine ran on, in words</param>
/// <param name="StepMilliseconds">wall time of each timed step, host to host, synchronised</param>
/// <param name="OpMillisecondsPerStep">milliseconds per kind of op, averaged over the profiled steps run after the timed ones
/// (a device engine synchronises at each op while profiled, so the sum can exceed a timed step); empty when none was profiled</param>
/// <param name="FirstLoss">mean next-token loss of the first (warm-up) step</param>
/// <param name="LastLoss">mean loss of the last step (the same batch every step, so it falls: a cheap check that the step learns)</param>
/// <param name="LastGradientNorm">the last step's global gradient norm before clipping (NaN when the step does not clip)</param>
/// <param name="PlannedBytes">host bytes a CPU model of this workload plans (parameters, gradients, moments, activations)</param>
/// <param name="DeviceBytesInUse">device memory in use after the steps (the whole context), when the device reports it</param>
/// <param name="Ranks">processes of the data-parallel job that shared each step's batch (1: one process)</param>
/// <param name="ShardedOptimizer">whether the AdamW moments were sharded over the ranks (ZeRO-1)</param>
public sealed record StepMeasurement(
    StepWorkload Workload, string Device, int Threads, double[] StepMilliseconds, IReadOnlyList<(string Op, double Milliseconds)> OpMillisecondsPerStep,
    float FirstLoss, float LastLoss, double LastGradientNorm, long PeakResidentBytes, long PlannedBytes, long? DeviceBytesInUse,
    int Ranks = 1, bool ShardedOptimizer = false)
{
    public double MedianMilliseconds => Median(StepMilliseconds);
    public double MinMilliseconds => StepMilliseconds.Min();
    public double MaxMilliseconds => StepMilliseconds.Max();
    public double TokensPerSecond => Workload.Tokens / (MedianMilliseconds / 1000.0);
    public double GflopsPerSecond => Workload.FlopsPerStep / (MedianMilliseconds / 1000.0) / 1e9;

    /// <summary>Model FLOP utilisation in llm.c's count: <see cref="StepWorkload.FlopsPerStep"/> per median step over <paramref name="peakFlops"/>.</summary>
    public double Mfu(double peakFlops) => Workload.FlopsPerStep / (MedianMilliseconds * 1e-3) / peakFlops;

    /// <summary>Model FLOP utilisation in nanoGPT's count (<see cref="StepWorkload.NanoGptFlopsPerStep"/>), for comparing with figures quoted that way.</summary>
    public double NanoGptMfu(double peakFlops) => Workload.NanoGptFlopsPerStep / (MedianMilliseconds * 1e-3) / peakFlops;

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    }
}

/// <summary>
/// The whole-step harness, on any device: one training step = zero gradients, forward + backward with the fused LM head
/// (∂L/∂logprob = −1/N), optional global-norm clipping, AdamW, synchronise. GPT-2 initialisation, random tokens from
/// Philox (the same batch every step), several warm-up steps, then the median of the timed ones; then
/// <c>profiledSteps</c> more with an <see cref="OpProfile"/> attached for the per-op breakdown. Over the ranks of a
/// data-parallel job each rank takes its share of the batch's rows and the gradients are all-reduced before AdamW (the
/// "all-reduce" op), optionally with the AdamW state sharded (ZeRO-1, the "all-gather" op); the times are rank 0's.
/// </summary>
public static class StepBenchmark
{
    public static StepMeasurement Run(GptDevice device, StepWorkload workload, StepSettings settings, int warmupSteps, int timedSteps,
                                      int profiledSteps = 1, ulong seed = 1, IProcessGroup? ranks = null, bool shardOptimizer = false)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(warmupSteps, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(timedSteps, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(profiledSteps);
        ranks ??= SingleProcessGroup.Instance;
        var (firstRow, rows) = ranks.ShareOf(workload.Rows, $"{workload.Name}'s rows");
        int shards = shardOptimizer ? ranks.Size : 1;
        var plan = Gpt.PlanTraining(workload.Config, rows, workload.Length, shards);
        using var host = new Gpt(workload.Config, shardOptimizerOver: shardOptimizer ? ranks : null);
        host.InitializeGpt2(seed);
        var engine = device.EngineFor(host);
        try
        {
            var batch = new GptBatch(rows, workload.Length);
            var rng = new PhiloxStream(seed, 99);
            var window = new int[workload.Tokens + 1];
            for (int i = 0; i < window.Length; i++) window[i] = (int)(rng.NextUInt() % (uint)workload.Config.VocabSize);
            batch.SetLanguageModelling(window.AsSpan(firstRow * workload.Length, rows * workload.Length + 1));
            var logProbs = new float[batch.TokenCount];
            var dLogProbs = Enumerable.Repeat(-1f / workload.Tokens, batch.TokenCount).ToArray();
            var adamW = new AdamWSettings();

            var profile = new OpProfile();
            var times = new double[timedSteps];
            float firstLoss = float.NaN, lastLoss = float.NaN;
            double norm = double.NaN;
            int total = warmupSteps + timedSteps + profiledSteps;
            for (int step = 1; step <= total; step++)
            {
                bool profiled = step > warmupSteps + timedSteps;
                engine.Profile = profiled ? profile : null;
                long start = Stopwatch.GetTimestamp();
                engine.ZeroGradients();
                engine.ForwardBackward(batch, dLogProbs, logProbs);
                engine.AllReduceGradients(ranks, $"gradients of benchmark step {step}");
                if (settings.GradientClip > 0) norm = engine.ClipGradients(settings.GradientClip).Norm;   // no clip: no norm pass either, as the peer
                engine.AdamWStep(step, settings.LearningRate, adamW);
                engine.Synchronize();
                if (step > warmupSteps && !profiled) times[step - warmupSteps - 1] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
                float loss = (float)(-ranks.Sum(logProbs.Sum(), $"loss of benchmark step {step}") / workload.Tokens);   // after the timing
                if (step == 1) firstLoss = loss;
                lastLoss = loss;
            }
            engine.Profile = null;
            var perStep = profiledSteps == 0 ? [] : profile.Totals().Select(x => (x.Op, x.Milliseconds / profiledSteps)).ToList();
            return new StepMeasurement(workload, device.Description, CpuParallel.Threads, times, perStep, firstLoss, lastLoss, norm,
                Process.GetCurrentProcess().PeakWorkingSet64, plan.TotalBytes, device.MemoryInUseBytes(), ranks.Size, shards > 1);
        }
        finally
        {
            GptDevice.Release(engine, host);
        }
    }
}
