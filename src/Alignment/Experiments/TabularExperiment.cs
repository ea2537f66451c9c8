using System.Diagnostics;

namespace DistAlign.Alignment.Experiments;

/// <summary>Settings of the tabular known-target experiment (OBJECTIVES.md, "Known-target evaluation A").</summary>
public sealed record TabularExperimentOptions
{
    public int Contexts { get; init; } = 10;
    public int Responses { get; init; } = 10;
    /// <summary>σ of the i.i.d. normal logits α*, α0.</summary>
    public double LogitStd { get; init; } = 0.1;
    /// <summary>γ, the preference temperature (also RKL's entropy weight).</summary>
    public double Gamma { get; init; } = 0.5;
    public TabularSampler Sampler { get; init; } = TabularSampler.Pi0;
    /// <summary>The data-set sizes n (each seed's data sets are nested prefixes of one stream of pairs).</summary>
    public IReadOnlyList<int> Ns { get; init; } = [.. Enumerable.Range(5, 12).Select(e => 1 << e)];
    /// <summary>Number of seeds; seed s = FirstSeed + s draws its own α*, α0 and pairs.</summary>
    public int Seeds { get; init; } = 5;
    public ulong FirstSeed { get; init; } = 1;
    /// <summary>Runs in flight at once (results do not depend on it).</summary>
    public int Threads { get; init; } = Environment.ProcessorCount;
    public TabularTrainingSchedule Schedule { get; init; } = new();
    /// <summary>Full-batch Adam steps of the Bradley–Terry reward fit (lr 0.05, L2 1e-4: <see cref="TabularReward.Fit"/>).</summary>
    public int RewardSteps { get; init; } = 500;
    /// <summary>The methods to run (null: <see cref="TabularMethods.All"/>).</summary>
    public IReadOnlyList<ITabularMethod>? Methods { get; init; }
    /// <summary>
    /// After tuning, also train RLHF and reverse KL with <see cref="TabularPpo"/> (the GPT's PPO trainer) at the β their
    /// closed forms were tuned to, per seed and n: rows "RLHF-PPO@tuned" and "RKL-PPO@tuned".
    /// </summary>
    public bool PpoCheck { get; init; }
    /// <summary>PPO iterations per fit of the <see cref="PpoCheck"/>.</summary>
    public int PpoIterations { get; init; } = 200;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first bad setting.</summary>
    public TabularExperimentOptions Validate()
    {
        if (Contexts < 1) throw new ArgumentException($"contexts must be ≥ 1 (got {Contexts})");
        if (Responses < 2) throw new ArgumentException($"responses must be ≥ 2 (got {Responses})");
        if (!(LogitStd >= 0 && double.IsFinite(LogitStd))) throw new ArgumentException($"the logit standard deviation must be finite and ≥ 0 (got {LogitStd})");
        if (!(Gamma > 0 && double.IsFinite(Gamma))) throw new ArgumentException($"γ must be finite and > 0 (got {Gamma})");
        if (Ns.Count == 0) throw new ArgumentException("at least one n is needed");
        foreach (int n in Ns) if (n < 1) throw new ArgumentException($"every n must be ≥ 1 (got {n})");
        if (Ns.Distinct().Count() != Ns.Count) throw new ArgumentException("the n values must be distinct");
        if (Seeds < 1) throw new ArgumentException($"seeds must be ≥ 1 (got {Seeds})");
        if (Threads < 1) throw new ArgumentException($"threads must be ≥ 1 (got {Threads})");
        if (RewardSteps < 1) throw new ArgumentException($"reward steps must be ≥ 1 (got {RewardSteps})");
        try { Schedule.Validate(); } catch (ArgumentOutOfRangeException e) { throw new ArgumentException(e.Message, e); }
        return this;
    }
}

/// <summary>One fit: a method at one parameter value on one seed's first n pairs, and its forward KL to π*.</summary>
public sealed record TabularRunRecord(ulong Seed, int N, string Method, string ParameterName, double Parameter, double ForwardKl, double GradientNorm, int Steps);

/// <summary>The Bradley–Terry reward fit of one (seed, n): final loss and the norm of its full gradient there.</summary>
public sealed record TabularRewardFitRecord(ulong Seed, int N, double Loss, double GradientNorm);

/// <summary>
/// One method at one n with its parameter tuned: the grid value with the lowest forward KL averaged over the seeds,
/// and the mean ± standard error (sample standard deviation / √seeds) of the seeds' forward KL there.
/// </summary>
public sealed record TabularSummaryRow(string Method, string ParameterName, int N, double Parameter, double MeanKl, double StandardError,
                                       int Seeds, double MaxGradientNorm);

/// <summary>Least-squares slope of ln(mean KL) on ln n over [<paramref name="NMin"/>, <paramref name="NMax"/>], with its standard error (NaN with fewer than 3 points).</summary>
public sealed record TabularSlope(string Method, double Slope, double StandardError, int NMin, int NMax, int Points);

/// <summary>Everything one run of the experiment produced.</summary>
public sealed record TabularExperimentResult(
    TabularExperimentOptions Options,
    IReadOnlyList<(string Name, string ParameterName, string How, IReadOnlyList<double> Grid)> Methods,
    IReadOnlyList<TabularRunRecord> Runs,
    IReadOnlyList<TabularRewardFitRecord> RewardFits,
    IReadOnlyList<TabularSummaryRow> Summary,
    IReadOnlyList<TabularSlope> Slopes,
    double ReferenceKl,
    double RlhfFloorKl,
    double WallSeconds,
    double CpuSeconds);

/// <summary>
/// The tabular known-target experiment: for every seed and n, fit R̂ by Bradley–Terry, run every method at every
/// value of its grid, measure E_x KL(π*‖π̂) against the TRUE π*, tune the parameter per (method, n) on that true
/// metric (as the paper does — an oracle choice no practitioner has), and fit the log–log slope.
/// </summary>
public static class TabularExperiment
{
    /// <summary>Suffix of the PPO rows run at the closed form's tuned β (<see cref="TabularExperimentOptions.PpoCheck"/>).</summary>
    public const string PpoCheckSuffix = "@tuned";

    /// <summary>The extra row derived from the PMLE runs at β = 0 (pure preference MLE, no tuning).</summary>
    public const string UntunedPmle = "PMLE β=0";

    public static TabularExperimentResult Run(TabularExperimentOptions options, Action<string>? progress = null)
    {
        options.Validate();
        var clock = Stopwatch.StartNew();
        var cpuAtStart = Process.GetCurrentProcess().TotalProcessorTime;
        var methods = options.Methods ?? TabularMethods.All();
        var ns = options.Ns.OrderBy(n => n).ToArray();
        int seeds = options.Seeds, maxN = ns[^1];
        var parallel = new ParallelOptions { MaxDegreeOfParallelism = options.Threads };

        var problems = new TabularProblem[seeds];
        var pairs = new TabularPair[seeds][];
        Parallel.For(0, seeds, parallel, s =>
        {
            problems[s] = TabularProblem.Create(options.FirstSeed + (ulong)s, options.Contexts, options.Responses, options.LogitStd, options.Gamma, options.Sampler);
            pairs[s] = problems[s].DrawPairs(maxN);
        });

        // Phase 1: the data (counts) and R̂ of every (seed, n); largest n first for load balance.
        int cells = seeds * ns.Length;
        var inputs = new TabularRunInput[cells];
        var rewardFits = new TabularRewardFitRecord[cells];
        Parallel.For(0, cells, parallel, k =>
        {
            int cell = cells - 1 - k, s = cell / ns.Length, j = cell % ns.Length;
            var problem = problems[s];
            var prefix = pairs[s].AsSpan(0, ns[j]);
            var data = new TabularPairCounts(problem.Contexts, problem.Responses, prefix);
            var reward = TabularReward.Fit(data, options.RewardSteps);
            inputs[cell] = new TabularRunInput(problem, data, reward, options.Schedule);
            rewardFits[cell] = new TabularRewardFitRecord(problem.Seed, ns[j], reward.Loss, reward.GradientNorm);
        });
        progress?.Invoke($"reward models fitted ({cells} of them) after {clock.Elapsed.TotalSeconds:F1} s");

        // Phase 2: every (seed, n, method, parameter); each task writes only its own slot.
        var tasks = new List<(int Cell, int Method, double Parameter)>();
        for (int j = ns.Length - 1; j >= 0; j--)
            for (int m = 0; m < methods.Count; m++)
                foreach (double parameter in methods[m].Grid)
                    for (int s = 0; s < seeds; s++) tasks.Add((s * ns.Length + j, m, parameter));
        var runs = new TabularRunRecord[tasks.Count];
        Parallel.For(0, tasks.Count, parallel, t =>
        {
            var (cell, m, parameter) = tasks[t];
            var input = inputs[cell];
            var method = methods[m];
            var fit = method.Fit(input, parameter);
            runs[t] = new TabularRunRecord(input.Problem.Seed, input.Data.Total, method.Name, method.ParameterName, parameter,
                                           input.Problem.ForwardKl(fit.Logits), fit.GradientNorm, fit.Steps);
        });
        progress?.Invoke($"{runs.Length} fits done after {clock.Elapsed.TotalSeconds:F1} s");

        var all = runs.ToList();
        if (options.PpoCheck)
        {
            var tunedSummary = Summarise([.. runs], methods, ns, seeds);
            var checks = new List<(int Cell, ITabularMethod Method, double Parameter)>();
            foreach (var (closedForm, objective) in new[] { ("RLHF", Training.PpoObjective.Rlhf), ("RKL", Training.PpoObjective.ReverseKl) })
            {
                if (!methods.Any(m => m.Name == closedForm)) continue;
                var ppo = new TabularPpo(objective, options.PpoIterations);
                for (int j = ns.Length - 1; j >= 0; j--)
                {
                    double beta = tunedSummary.First(r => r.Method == closedForm && r.N == ns[j]).Parameter;
                    for (int s = 0; s < seeds; s++) checks.Add((s * ns.Length + j, ppo, beta));
                }
            }
            var checkRuns = new TabularRunRecord[checks.Count];
            Parallel.For(0, checks.Count, parallel, t =>
            {
                var (cell, method, parameter) = checks[t];
                var input = inputs[cell];
                var fit = method.Fit(input, parameter);
                checkRuns[t] = new TabularRunRecord(input.Problem.Seed, input.Data.Total, method.Name + PpoCheckSuffix, method.ParameterName, parameter,
                                                    input.Problem.ForwardKl(fit.Logits), fit.GradientNorm, fit.Steps);
            });
            all.AddRange(checkRuns);
            progress?.Invoke($"{checkRuns.Length} PPO fits at the tuned β done after {clock.Elapsed.TotalSeconds:F1} s");
        }

        var names = methods.Select(m => m.Name).ToList();
        var ordered = all.OrderBy(r => names.IndexOf(r.Method) is int i && i >= 0 ? i : names.Count).ThenBy(r => r.Method).ThenBy(r => r.N)
                         .ThenBy(r => r.Parameter).ThenBy(r => r.Seed).ToList();
        var summary = Summarise(ordered, methods, ns, seeds);
        foreach (var method in ordered.Select(r => r.Method).Where(m => m.EndsWith(PpoCheckSuffix, StringComparison.Ordinal)).Distinct().ToList())
            foreach (int n in ns)
            {
                var run = ordered.First(r => r.Method == method && r.N == n);
                summary.Add(Row(ordered, method, run.ParameterName, n, run.Parameter, method));
            }
        var slopes = Slopes(summary, ns);
        double referenceKl = problems.Average(p => p.ForwardKl(p.ReferenceLogits));
        double rlhfFloor = problems.Average(RlhfFloor);
        return new TabularExperimentResult(options, [.. methods.Select(m => (m.Name, m.ParameterName, m.How, m.Grid))], ordered,
                                           [.. rewardFits.OrderBy(r => r.N).ThenBy(r => r.Seed)], summary, slopes, referenceKl, rlhfFloor,
                                           clock.Elapsed.TotalSeconds, (Process.GetCurrentProcess().TotalProcessorTime - cpuAtStart).TotalSeconds);
    }

    /// <summary>
    /// RLHF's infinite-data floor: with R̂ = γ ln π* exactly (the population Bradley–Terry optimum, up to a constant per x),
    /// min over β of E_x KL(π* ‖ π0·π*^(γ/β)), β on 400 log-spaced values in [10⁻³, 10⁴]. No amount of data takes RLHF below it
    /// (the minimum is not 0 unless π0 is uniform, since no β undoes the π0 factor).
    /// </summary>
    public static double RlhfFloor(TabularProblem problem)
    {
        var logits = new double[problem.Contexts * problem.Responses];
        double best = double.PositiveInfinity;
        for (int k = 0; k < 400; k++)
        {
            double beta = Math.Pow(10, -3 + 7.0 * k / 399);
            for (int i = 0; i < logits.Length; i++)
                logits[i] = problem.ReferenceLogits[i] + problem.Gamma * problem.TargetLogProb(i / problem.Responses, i % problem.Responses) / beta;
            best = Math.Min(best, problem.ForwardKl(logits));
        }
        return best;
    }

    /// <summary>Per (method, n): the grid value with the lowest seed-mean KL; plus the untuned PMLE β = 0 row.</summary>
    internal static List<TabularSummaryRow> Summarise(IReadOnlyList<TabularRunRecord> runs, IReadOnlyList<ITabularMethod> methods, int[] ns, int seeds)
    {
        var rows = new List<TabularSummaryRow>();
        foreach (var method in methods)
        {
            foreach (int n in ns)
            {
                TabularSummaryRow? best = null;
                foreach (double parameter in method.Grid)
                {
                    var row = Row(runs, method.Name, method.ParameterName, n, parameter, method.Name);
                    if (best is null || row.MeanKl < best.MeanKl) best = row;
                }
                rows.Add(best!);
            }
            if (method is PreferenceMle && method.Grid.Contains(0.0))
                foreach (int n in ns) rows.Add(Row(runs, method.Name, method.ParameterName, n, 0.0, UntunedPmle));
        }
        return rows;
    }

    private static TabularSummaryRow Row(IReadOnlyList<TabularRunRecord> runs, string method, string parameterName, int n, double parameter, string label)
    {
        var kls = runs.Where(r => r.Method == method && r.N == n && r.Parameter == parameter).ToList();
        var (mean, se) = MeanAndStandardError(kls.Select(r => r.ForwardKl).ToArray());
        return new TabularSummaryRow(label, parameterName, n, parameter, mean, se, kls.Count, kls.Max(r => r.GradientNorm));
    }

    /// <summary>Mean and standard error (sample standard deviation / √count; NaN for one value).</summary>
    public static (double Mean, double StandardError) MeanAndStandardError(IReadOnlyList<double> values)
    {
        if (values.Count == 0) return (double.NaN, double.NaN);
        double mean = values.Average();
        if (values.Count < 2) return (mean, double.NaN);
        double ss = values.Sum(v => (v - mean) * (v - mean));
        return (mean, Math.Sqrt(ss / (values.Count - 1) / values.Count));
    }

    /// <summary>Slope of ln(mean KL) on ln n per summary method, over the larger half of the n values.</summary>
    internal static List<TabularSlope> Slopes(IReadOnlyList<TabularSummaryRow> summary, int[] ns)
    {
        var large = ns.Skip(ns.Length / 2).ToHashSet();
        var result = new List<TabularSlope>();
        foreach (var method in summary.Select(r => r.Method).Distinct())
        {
            var points = summary.Where(r => r.Method == method && large.Contains(r.N) && r.MeanKl > 0).OrderBy(r => r.N).ToList();
            var (slope, se) = FitSlope(points.Select(r => Math.Log(r.N)).ToArray(), points.Select(r => Math.Log(r.MeanKl)).ToArray());
            result.Add(new TabularSlope(method, slope, se, points.Count > 0 ? points[0].N : 0, points.Count > 0 ? points[^1].N : 0, points.Count));
        }
        return result;
    }

    /// <summary>Ordinary least squares y = a + b·x: b and its standard error √(Σr²/(m−2) / Σ(x−x̄)²) (NaN below 3 points).</summary>
    public static (double Slope, double StandardError) FitSlope(IReadOnlyList<double> x, IReadOnlyList<double> y)
    {
        int m = x.Count;
        if (m != y.Count) throw new ArgumentException("x and y must have the same length");
        if (m < 2) return (double.NaN, double.NaN);
        double mx = x.Average(), my = y.Average(), sxx = 0, sxy = 0;
        for (int i = 0; i < m; i++) { sxx += (x[i] - mx) * (x[i] - mx); sxy += (x[i] - mx) * (y[i] - my); }
        double b = sxy / sxx, a = my - b * mx;
        if (m < 3) return (b, double.NaN);
        double rss = 0;
        for (int i = 0; i < m; i++) { double r = y[i] - a - b * x[i]; rss += r * r; }
        return (b, Math.Sqrt(rss / (m - 2) / sxx));
    }
}
