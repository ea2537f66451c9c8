using DistAlign.Engine.Distributed;

namespace DistAlign.Alignment.Training;

/// <summary>
/// What every run over preference pairs shares: length, minibatch, schedule, clipping, held-out split and
/// seed. Everything here is part of a run's identity (a resume checks it).
/// </summary>
public abstract record PairTrainingOptions
{
    public int Steps { get; init; } = 100;
    /// <summary>Pairs per (micro-)batch.</summary>
    public int BatchPairs { get; init; } = 8;
    public float LearningRate { get; init; } = 1e-4f;
    public int WarmupSteps { get; init; } = 10;
    public float MinLearningRateFraction { get; init; } = 0.1f;
    /// <summary>Global gradient-norm clip (0 = off).</summary>
    public float GradientClip { get; init; } = 1f;
    /// <summary>Share of the pairs held out for evaluation (chosen by a seeded shuffle, <see cref="AlignmentTrainer.Split"/>).</summary>
    public double EvalFraction { get; init; } = 0.1;
    /// <summary>Evaluate every this many steps (0 = never; otherwise also after the last step).</summary>
    public int EvaluateEvery { get; init; } = 50;
    public ulong Seed { get; init; } = 1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first shared setting out of range.</summary>
    protected void ValidateShared()
    {
        if (Steps < 0) throw new ArgumentException($"steps must be ≥ 0 (got {Steps})");
        if (BatchPairs < 1) throw new ArgumentException($"batch must be at least 1 pair (got {BatchPairs})");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new ArgumentException($"learning rate must be a positive number (got {LearningRate})");
        if (WarmupSteps < 0) throw new ArgumentException($"warmup steps must be ≥ 0 (got {WarmupSteps})");
        if (!(GradientClip >= 0)) throw new ArgumentException($"gradient clip must be ≥ 0 (got {GradientClip})");
        if (!(EvalFraction >= 0 && EvalFraction < 1)) throw new ArgumentException($"eval fraction must lie in [0, 1) (got {EvalFraction})");
        if (EvaluateEvery < 0) throw new ArgumentException($"evaluation interval must be ≥ 0 (got {EvaluateEvery})");
    }

    /// <summary>Whether a run with held-out pairs evaluates after <paramref name="completedSteps"/> (every N steps and after the last).</summary>
    public bool EvaluationDue(int completedSteps) =>
        EvaluateEvery > 0 && (completedSteps % EvaluateEvery == 0 || completedSteps == Steps);

    /// <summary>
    /// Named sums (and <paramref name="extra"/> counters, in place) added over the ranks of a data-parallel job in one
    /// all-reduce; the names are every rank's, in the same order. One process: returned as they are.
    /// </summary>
    internal static List<KeyValuePair<string, double>> SumOverRanks(IProcessGroup group, List<KeyValuePair<string, double>> sums, string purpose,
                                                                     Span<double> extra = default)
    {
        if (group.Size == 1) return sums;
        var values = new double[sums.Count + extra.Length];
        for (int i = 0; i < sums.Count; i++) values[i] = sums[i].Value;
        extra.CopyTo(values.AsSpan(sums.Count));
        group.AllReduceSum(values, purpose);
        values.AsSpan(sums.Count).CopyTo(extra);
        return [.. sums.Select((kv, i) => new KeyValuePair<string, double>(kv.Key, values[i]))];
    }

    /// <summary>
    /// Adds the figures every pair trainer's step reports after its objective's own: <c>lr</c>, <c>grad_norm</c> (before
    /// clipping), <c>tokens_per_second</c> over the step's wall time, and <c>elapsed_seconds</c> of the run.
    /// </summary>
    internal static void AddStepFigures(List<KeyValuePair<string, double>> metrics, float learningRate, double gradientNorm, long tokens,
                                        double stepSeconds, double elapsedSeconds)
    {
        metrics.Add(new("lr", learningRate));
        metrics.Add(new("grad_norm", gradientNorm));
        metrics.Add(new("tokens_per_second", stepSeconds > 0 ? tokens / stepSeconds : 0));
        metrics.Add(new("elapsed_seconds", elapsedSeconds));
    }
}
