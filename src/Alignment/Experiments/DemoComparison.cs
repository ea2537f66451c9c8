namespace DistAlign.Alignment.Experiments;

/// <summary>
/// How far apart two runs of the known-target experiment are, number by number: π0's validation loss, π0's and π*'s evaluations,
/// and at one n the reward model's loss and accuracy and every method's loss curve and evaluation. For checking one device against
/// another (the same seed draws the same samples, so the runs differ only by rounding).
/// </summary>
public static class DemoComparison
{
    /// <summary>One compared number: where it is, and its value in the two runs.</summary>
    public sealed record Difference(string Name, double Actual, double Expected)
    {
        /// <summary>|actual − expected| / max(1, |expected|); +∞ when either is not finite.</summary>
        public double Relative => double.IsFinite(Actual) && double.IsFinite(Expected)
            ? Math.Abs(Actual - Expected) / Math.Max(1, Math.Abs(Expected)) : double.PositiveInfinity;
    }

    /// <summary>Every compared number of <paramref name="actual"/> against <paramref name="expected"/> (same settings and n).</summary>
    public static IEnumerable<Difference> Differences(DemoExperiment actual, DemoSizeResult actualSize, DemoExperiment expected, DemoSizeResult expectedSize)
    {
        if (actualSize.Pairs != expectedSize.Pairs) throw new ArgumentException($"different n: {actualSize.Pairs} and {expectedSize.Pairs}");
        yield return new("π0 validation loss", actual.Pi0.ValidationLoss, expected.Pi0.ValidationLoss);
        foreach (var d in Evaluations("π0", actual.ReferenceEvaluation, expected.ReferenceEvaluation)) yield return d;
        foreach (var d in Evaluations("π*", actual.TargetEvaluation, expected.TargetEvaluation)) yield return d;
        yield return new("reward model loss", actualSize.Reward.FinalLoss, expectedSize.Reward.FinalLoss);
        yield return new("reward model accuracy", actualSize.Reward.TrueOrderAccuracy, expectedSize.Reward.TrueOrderAccuracy);
        if (!actualSize.Methods.Select(m => m.Method).SequenceEqual(expectedSize.Methods.Select(m => m.Method)))
            throw new ArgumentException("the runs trained different methods");
        for (int i = 0; i < expectedSize.Methods.Count; i++)
        {
            var (a, e) = (actualSize.Methods[i], expectedSize.Methods[i]);
            if (a.LossCurve.Count != e.LossCurve.Count) throw new ArgumentException($"{e.Name}: loss curves of different lengths");
            for (int s = 0; s < e.LossCurve.Count; s++) yield return new($"{e.Name} loss at step {e.LossCurve[s].Step}", a.LossCurve[s].Loss, e.LossCurve[s].Loss);
            foreach (var d in Evaluations(e.Name, a.Evaluation, e.Evaluation)) yield return d;
        }
    }

    private static IEnumerable<Difference> Evaluations(string what, KnownTargetEvaluation actual, KnownTargetEvaluation expected)
    {
        var values = expected.Named().ToDictionary();
        foreach (var (name, value) in actual.Named()) yield return new($"{what}: {name}", value, values[name]);
    }
}
