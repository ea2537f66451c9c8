using System.Diagnostics;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Transformer.Training;

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
    /// Model FLOPs of one step, llm.c's convention: 6·N per token for the weights (N = every parameter,
    /// the tied LM head counted once) plus 6·L·C·T per token for causal attention.
    /// </summary>
    public double FlopsPerStep => Tokens * (6.0 * Config.ParameterCount + 6.0 * Config.Layers * Config.Channels * Length);
}

/// <summary>What <see cref="StepBenchmark.Run"/> measured.</summary>
public sealed record StepMeasurement(
    StepWorkload Workload, int Threads, double[] StepMilliseconds, IReadOnlyList<(string Op, double Milliseconds)> OpMillisecondsPerStep,
    long PeakResidentBytes, long PlannedBytes)
{
    public double MedianMilliseconds => Median(StepMilliseconds);
    public double MinMilliseconds => StepMilliseconds.Min();
    public double MaxMilliseconds => StepMilliseconds.Max();
    public double TokensPerSecond => Workload.Tokens / (MedianMilliseconds / 1000.0);
    public double GflopsPerSecond => Workload.FlopsPerStep / (MedianMilliseconds / 1000.0) / 1e9;

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    }
}

/// <summary>
/// The whole-step harness: one training step = forward + backward + AdamW on random tokens, weights
/// N(0, 0.02²) (GPT-2 init), several warm-up steps, then the median of the timed ones, with a per-op
/// breakdown from <see cref="OpProfile"/>.
/// </summary>
public static class StepBenchmark
{
    public static StepMeasurement Run(StepWorkload workload, int warmupSteps, int timedSteps, ulong seed = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(timedSteps, 1);
        var plan = Gpt.PlanTraining(workload.Config, workload.Rows, workload.Length);
        using var model = new Gpt(workload.Config);
        model.InitializeGpt2(seed);
        var batch = new GptBatch(workload.Rows, workload.Length);
        var rng = new PhiloxStream(seed, 99);
        var window = new int[workload.Tokens + 1];
        for (int i = 0; i < window.Length; i++) window[i] = (int)(rng.NextUInt() % (uint)workload.Config.VocabSize);
        batch.SetLanguageModelling(window);
        var logProbs = new float[workload.Tokens];
        var dLogProbs = Enumerable.Repeat(-1f / workload.Tokens, workload.Tokens).ToArray();
        var settings = new AdamWSettings();

        var profile = new OpProfile();
        var times = new double[timedSteps];
        for (int s = 0; s < warmupSteps + timedSteps; s++)
        {
            bool timed = s >= warmupSteps;
            model.Profile = timed ? profile : null;
            long start = Stopwatch.GetTimestamp();
            model.ZeroGradients();
            model.ForwardBackward(batch, dLogProbs, logProbs);
            long optimizerStart = Stopwatch.GetTimestamp();
            AdamWOptimizer.Step(model, s + 1, 1e-4f, settings);
            long end = Stopwatch.GetTimestamp();
            if (timed)
            {
                times[s - warmupSteps] = Stopwatch.GetElapsedTime(start, end).TotalMilliseconds;
                profile.Restart();
                // the optimizer and zeroing are outside the model: charge them by hand
                profile.Charge("adamw", Stopwatch.GetElapsedTime(optimizerStart, end).TotalMilliseconds);
            }
        }
        var perStep = profile.Totals().Select(x => (x.Op, x.Milliseconds / timedSteps)).ToList();
        return new StepMeasurement(workload, CpuParallel.Threads, times, perStep,
            Process.GetCurrentProcess().PeakWorkingSet64, plan.TotalBytes);
    }
}
