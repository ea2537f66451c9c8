namespace DistAlign.Alignment.Experiments;

/// <summary>One progress event: a stage (pretraining, pairs, a method, …), how far it is, and a short status line.</summary>
public sealed record DemoProgress(string Stage, double Done, double Total, string Detail);

/// <summary>What describes the task, printed in every report (OBJECTIVES.md asks for KL(π*‖π0) and the label margin).</summary>
public sealed record DemoTaskSummary(Estimate TargetKl, double TargetMeanLength, int LexiconTokens, int TrainPrompts, int EvalPrompts,
                                     int EvalSamples, double Temperature, double Gamma, int ResponseTokens);

/// <summary>The reward model fitted on the n pairs: its last training loss and its accuracy against the true ln π* ordering on fresh π0 pairs.</summary>
public sealed record DemoRewardSummary(int Steps, double FinalLoss, double TrueOrderAccuracy, double Seconds);

/// <summary>One method's run: settings in words, training and evaluation seconds, loss curve (its own objective per step), evaluation.</summary>
/// <param name="ValidationLoss">held-out preference loss −ln σ(γ Δ ln π̂) (NaN when nothing was held out)</param>
/// <param name="Candidates">every run of the tuning grid (empty without tuning); this result is the honest pick among them</param>
public sealed record DemoMethodResult(DemoMethod Method, string Name, string Settings, double Seconds,
                                      IReadOnlyList<(int Step, double Loss)> LossCurve, KnownTargetEvaluation Evaluation,
                                      double ValidationLoss = double.NaN, IReadOnlyList<DemoCandidate>? Candidates = null)
{
    /// <summary>The step whose policy was kept and evaluated (early stopping on the held-out loss; the last step without it).</summary>
    public int KeptStep { get; init; }

    /// <summary>The candidate the oracle (lowest KL(π*‖π̂)) would pick; null without tuning.</summary>
    public DemoCandidate? OraclePick => Candidates is { Count: > 0 } c ? c.MinBy(x => x.Evaluation.ForwardKl.Mean) : null;
}

/// <summary>One run of a method's tuning grid: its key parameter's name and value, the honest criterion and the full evaluation.</summary>
/// <param name="Kept">whether this run is the honest pick (the one the method's result reports)</param>
public sealed record DemoCandidate(string Parameter, double Value, double ValidationLoss, KnownTargetEvaluation Evaluation, double Seconds, bool Kept = false);

/// <summary>Everything measured at one dataset size n.</summary>
/// <remarks>The fields are the first seed's; <see cref="OtherSeeds"/> holds the same for every further seed.</remarks>
public sealed record DemoSizeResult(int Pairs, double MeanLabelMargin, double AgreementWithTarget, DemoRewardSummary Reward, IReadOnlyList<DemoMethodResult> Methods)
{
    /// <summary>Share of labels that differ from what π0 alone would predict (<see cref="KnownTargetPairs.AgainstReference"/>).</summary>
    public double AgainstReference { get; init; }

    /// <summary>The runs with seeds 2, 3, … (empty with one seed).</summary>
    public IReadOnlyList<DemoSizeResult> OtherSeeds { get; init; } = [];

    /// <summary>Every seed's run, the first one included.</summary>
    public IEnumerable<DemoSizeResult> AllSeeds => OtherSeeds.Prepend(this);

    /// <summary>
    /// A method's KL(π*‖π̂) over the seeds: mean and standard error of the per-seed values of its kept run (honest pick) and of
    /// the oracle's pick (the kept run itself without tuning). Evaluation samples are shared, so this spread is that of pairs and training.
    /// </summary>
    public (Estimate Honest, Estimate Oracle) ForwardKlOverSeeds(DemoMethod method)
    {
        var runs = AllSeeds.Select(s => s.Methods.First(m => m.Method == method)).ToList();
        return (Spread(runs.Select(r => r.Evaluation.ForwardKl.Mean)), Spread(runs.Select(r => (r.OraclePick?.Evaluation ?? r.Evaluation).ForwardKl.Mean)));
    }

    /// <summary>Mean and standard error (0 for one value) of a list of per-seed values.</summary>
    public static Estimate Spread(IEnumerable<double> values)
    {
        var list = values.ToList();
        double mean = list.Average();
        double se = list.Count < 2 ? 0 : Math.Sqrt(list.Sum(v => (v - mean) * (v - mean)) / (list.Count - 1) / list.Count);
        return new Estimate(mean, se, list.Count);
    }
}
