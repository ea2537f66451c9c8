namespace DistAlign.Transformer.Training;

/// <summary>
/// Linear warmup then cosine decay:
/// lr(s) = peak·(s+1)/warmup for s &lt; warmup, else
/// lr(s) = min + (peak − min)·½(1 + cos(π·(s − warmup)/(total − warmup))), with min = peak·minFraction.
/// Steps are 0-based; the last step (total − 1) sits just above min.
/// </summary>
public sealed record LearningRateSchedule(float Peak, int WarmupSteps, int TotalSteps, float MinFraction = 0.1f)
{
    public float At(int step)
    {
        if (step < 0) throw new ArgumentOutOfRangeException(nameof(step), step, "step must be ≥ 0");
        if (step < WarmupSteps) return Peak * (step + 1) / WarmupSteps;
        int decaySteps = Math.Max(1, TotalSteps - WarmupSteps);
        double progress = Math.Min(1.0, (double)(step - WarmupSteps) / decaySteps);
        double min = Peak * MinFraction;
        return (float)(min + (Peak - min) * 0.5 * (1 + Math.Cos(Math.PI * progress)));
    }
}
