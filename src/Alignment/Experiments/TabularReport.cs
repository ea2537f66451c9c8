using System.Globalization;
using System.Text;
using ScottPlot;

namespace DistAlign.Alignment.Experiments;

/// <summary>
/// Writes a <see cref="TabularExperimentResult"/>: <c>runs.csv</c> (every fit), <c>summary.csv</c> (tuned mean ± SE per
/// method and n), <c>slopes.csv</c>, <c>reward_fits.csv</c>, <c>results.md</c> (the tables) and <c>kl_vs_n.png</c>
/// (log–log plot with ±1 SE bars).
/// </summary>
public static class TabularReport
{
    private static readonly CultureInfo Invariant = CultureInfo.InvariantCulture;

    /// <summary>File names written into the output folder, in order.</summary>
    public static readonly string[] Files = ["runs.csv", "summary.csv", "slopes.csv", "reward_fits.csv", "results.md", "kl_vs_n.png", "kl_vs_n_tuned.png"];

    /// <summary>Writes every file into <paramref name="directory"/> (created) and returns their paths.</summary>
    public static IReadOnlyList<string> WriteAll(TabularExperimentResult result, string directory)
    {
        Directory.CreateDirectory(directory);
        var paths = Files.Select(f => Path.Combine(directory, f)).ToArray();
        File.WriteAllText(paths[0], RunsCsv(result));
        File.WriteAllText(paths[1], SummaryCsv(result));
        File.WriteAllText(paths[2], SlopesCsv(result));
        File.WriteAllText(paths[3], RewardFitsCsv(result));
        File.WriteAllText(paths[4], Markdown(result));
        WritePlot(result, paths[5], zoomOnTuned: false);
        WritePlot(result, paths[6], zoomOnTuned: true);
        return paths;
    }

    private static string F(double v) => v.ToString("R", Invariant);

    public static string RunsCsv(TabularExperimentResult result)
    {
        var sb = new StringBuilder("seed,n,method,parameter_name,parameter,forward_kl,gradient_norm,steps\n");
        foreach (var r in result.Runs)
            sb.Append(Invariant, $"{r.Seed},{r.N},{r.Method},{r.ParameterName},{F(r.Parameter)},{F(r.ForwardKl)},{F(r.GradientNorm)},{r.Steps}\n");
        return sb.ToString();
    }

    public static string SummaryCsv(TabularExperimentResult result)
    {
        var sb = new StringBuilder("method,n,parameter_name,tuned_parameter,mean_forward_kl,standard_error,seeds,max_gradient_norm\n");
        foreach (var r in result.Summary)
            sb.Append(Invariant, $"{r.Method},{r.N},{r.ParameterName},{F(r.Parameter)},{F(r.MeanKl)},{F(r.StandardError)},{r.Seeds},{F(r.MaxGradientNorm)}\n");
        return sb.ToString();
    }

    public static string SlopesCsv(TabularExperimentResult result)
    {
        var sb = new StringBuilder("method,slope,standard_error,n_min,n_max,points\n");
        foreach (var s in result.Slopes) sb.Append(Invariant, $"{s.Method},{F(s.Slope)},{F(s.StandardError)},{s.NMin},{s.NMax},{s.Points}\n");
        return sb.ToString();
    }

    public static string RewardFitsCsv(TabularExperimentResult result)
    {
        var sb = new StringBuilder("seed,n,bt_loss,gradient_norm\n");
        foreach (var r in result.RewardFits) sb.Append(Invariant, $"{r.Seed},{r.N},{F(r.Loss)},{F(r.GradientNorm)}\n");
        return sb.ToString();
    }

    /// <summary>"1.23e-3 ± 4.5e-5" (three significant digits; "n/a" for a missing standard error).</summary>
    public static string MeanPlusMinus(double mean, double se) =>
        double.IsNaN(se) ? $"{mean.ToString("0.00e0", Invariant)} ± n/a" : $"{mean.ToString("0.00e0", Invariant)} ± {se.ToString("0.0e0", Invariant)}";

    private static string Parameter(double v) => v == 0 ? "0" : v.ToString("0.###e0", Invariant);

    /// <summary>The settings, the tuned table (mean ± SE, tuned parameter), the slopes and the convergence figures.</summary>
    public static string Markdown(TabularExperimentResult result)
    {
        var o = result.Options;
        var methods = result.Summary.Select(r => r.Method).Distinct().ToList();
        var ns = result.Summary.Select(r => r.N).Distinct().OrderBy(n => n).ToList();
        var sb = new StringBuilder();
        sb.AppendLine("# Tabular known-target experiment: E_x KL(π* ‖ π̂) against n");
        sb.AppendLine();
        sb.AppendLine(Invariant, $"{o.Contexts} contexts × {o.Responses} responses; α*, α0 ~ N(0, {o.LogitStd}²); γ = {o.Gamma}; μ = {(o.Sampler == TabularSampler.Pi0 ? "π0" : "uniform")}; " +
                                 $"{o.Seeds} seeds (first {o.FirstSeed}); n = {string.Join(", ", ns)}. " +
                                 $"Optimisation: full-batch AdamW, {o.Schedule.Steps} steps, lr {o.Schedule.LearningRate} → {o.Schedule.LearningRate * o.Schedule.FinalLearningRateFraction} (half cosine); " +
                                 $"R̂ by Bradley–Terry, {o.RewardSteps} Adam steps. Mean KL(π*‖π0) over the seeds: {result.ReferenceKl.ToString("0.000e0", Invariant)}; " +
                                 $"RLHF's infinite-data floor (R̂ = γ ln π*, best β): {result.RlhfFloorKl.ToString("0.000e0", Invariant)}. " +
                                 $"Wall time {result.WallSeconds.ToString("F1", Invariant)} s with {o.Threads} threads; CPU time {result.CpuSeconds.ToString("F1", Invariant)} s.");
        sb.AppendLine();
        sb.AppendLine("Each cell: mean ± standard error over seeds of the forward KL at the parameter (in brackets) that minimises the seed-mean KL " +
                      "for that method and n — tuned against the TRUE π*, as in the paper.");
        sb.AppendLine();
        sb.AppendLine("| n | " + string.Join(" | ", methods) + " |");
        sb.AppendLine("|---:|" + string.Concat(methods.Select(_ => "---|")));
        foreach (int n in ns)
        {
            sb.Append(Invariant, $"| {n} |");
            foreach (var m in methods)
            {
                var r = result.Summary.First(s => s.Method == m && s.N == n);
                sb.Append(Invariant, $" {MeanPlusMinus(r.MeanKl, r.StandardError)} ({r.ParameterName}={Parameter(r.Parameter)}) |");
            }
            sb.AppendLine();
        }
        sb.AppendLine();
        sb.AppendLine("## Log–log slopes");
        sb.AppendLine();
        sb.AppendLine("Least squares of ln(mean KL) on ln n over the larger half of the n values.");
        sb.AppendLine();
        sb.AppendLine("| method | slope | ± SE | n range | points |");
        sb.AppendLine("|---|---:|---:|---|---:|");
        foreach (var s in result.Slopes)
            sb.AppendLine(Invariant, $"| {s.Method} | {s.Slope.ToString("F3", Invariant)} | {(double.IsNaN(s.StandardError) ? "n/a" : s.StandardError.ToString("F3", Invariant))} | {s.NMin}–{s.NMax} | {s.Points} |");
        sb.AppendLine();
        sb.AppendLine("## Methods, grids, convergence");
        sb.AppendLine();
        sb.AppendLine("| method | solved by | grid | max ‖∇‖ at the tuned fits, smallest n | … largest n |");
        sb.AppendLine("|---|---|---|---:|---:|");
        foreach (var (name, parameterName, how, grid) in result.Methods)
        {
            var rows = result.Summary.Where(r => r.Method == name).OrderBy(r => r.N).ToList();
            sb.AppendLine(Invariant, $"| {name} | {how} | {parameterName} ∈ {{{string.Join(", ", grid.Select(Parameter))}}} | " +
                                     $"{rows[0].MaxGradientNorm.ToString("0.0e0", Invariant)} | {rows[^1].MaxGradientNorm.ToString("0.0e0", Invariant)} |");
        }
        if (o.PpoCheck)
        {
            var how = new TabularPpo(Training.PpoObjective.Rlhf, o.PpoIterations).How;
            sb.AppendLine();
            sb.AppendLine($"`{TabularExperiment.PpoCheckSuffix}` rows: RLHF and reverse KL trained by {how} at the β their closed form was tuned to " +
                          "(per n); ‖∇‖ there is PPO's mean pre-clip gradient norm in its last iteration (stochastic).");
        }
        var fits = result.RewardFits;
        sb.AppendLine();
        sb.AppendLine(Invariant, $"Reward fits: max ‖∇‖ {fits.Where(f => f.N == ns[0]).Max(f => f.GradientNorm).ToString("0.0e0", Invariant)} at n = {ns[0]}, " +
                                 $"{fits.Where(f => f.N == ns[^1]).Max(f => f.GradientNorm).ToString("0.0e0", Invariant)} at n = {ns[^1]} (closed forms have no optimisation error; 0 is printed for them).");
        return sb.ToString();
    }

    /// <summary>
    /// log10(KL) against log2(n), one line per method, ±1 SE bars; axes labelled in the original units. With
    /// <paramref name="zoomOnTuned"/>, the untuned PMLE β = 0 line is left out and the y range is clipped to
    /// [0.8 × the smallest mean, 2 × KL(π*‖π0)] so the tuned methods can be told apart.
    /// </summary>
    public static void WritePlot(TabularExperimentResult result, string path, bool zoomOnTuned)
    {
        var plot = new Plot();
        var palette = new ScottPlot.Palettes.Category10();
        int index = 0;
        foreach (var method in result.Summary.Select(r => r.Method).Distinct())
        {
            if (zoomOnTuned && method == TabularExperiment.UntunedPmle) { index++; continue; }
            var rows = result.Summary.Where(r => r.Method == method && r.MeanKl > 0).OrderBy(r => r.N).ToList();
            if (rows.Count == 0) continue;
            double[] xs = [.. rows.Select(r => Math.Log2(r.N))];
            double[] ys = [.. rows.Select(r => Math.Log10(r.MeanKl))];
            double[] up = [.. rows.Select(r => double.IsNaN(r.StandardError) ? 0 : Math.Log10(r.MeanKl + r.StandardError) - Math.Log10(r.MeanKl))];
            double[] down = [.. rows.Select(r => double.IsNaN(r.StandardError) || r.StandardError >= r.MeanKl ? 0 : Math.Log10(r.MeanKl) - Math.Log10(r.MeanKl - r.StandardError))];
            var color = palette.GetColor(index++);
            var line = plot.Add.Scatter(xs, ys, color);
            line.LegendText = method;
            line.LineWidth = 2;
            line.MarkerSize = 6;
            if (method == TabularExperiment.UntunedPmle) line.LinePattern = LinePattern.Dashed;
            var bars = new ScottPlot.Plottables.ErrorBar(xs, ys, null, null, up, down) { LineColor = color };
            plot.Add.Plottable(bars);
        }
        var reference = Math.Log10(result.ReferenceKl);
        var baseline = plot.Add.HorizontalLine(reference, 1, Colors.Gray, LinePattern.Dotted);
        baseline.LegendText = "KL(π*‖π0)";
        var floor = plot.Add.HorizontalLine(Math.Log10(result.RlhfFloorKl), 1, Colors.Black, LinePattern.Dotted);
        floor.LegendText = "RLHF floor (n = ∞, best β)";

        var yTicks = new ScottPlot.TickGenerators.NumericAutomatic
        {
            MinorTickGenerator = new ScottPlot.TickGenerators.LogMinorTickGenerator(),
            IntegerTicksOnly = true,
            LabelFormatter = v => $"1e{v.ToString("0", Invariant)}",
        };
        plot.Axes.Left.TickGenerator = yTicks;
        var xTicks = new ScottPlot.TickGenerators.NumericAutomatic
        {
            IntegerTicksOnly = true,
            LabelFormatter = v => $"2^{v.ToString("0", Invariant)}",
        };
        plot.Axes.Bottom.TickGenerator = xTicks;
        plot.Grid.MinorLineWidth = 1;
        plot.Grid.MinorLineColor = Colors.Black.WithOpacity(0.05);
        var o = result.Options;
        plot.Title($"Tabular {o.Contexts}×{o.Responses}, γ={o.Gamma}, σ={o.LogitStd}, μ={(o.Sampler == TabularSampler.Pi0 ? "π0" : "uniform")}, {o.Seeds} seeds");
        plot.XLabel("n (preference pairs)");
        plot.YLabel("E_x KL(π* ‖ π̂), β tuned per n");
        plot.ShowLegend(ScottPlot.Alignment.LowerLeft);
        if (zoomOnTuned)
        {
            double low = result.Summary.Where(r => r.Method != TabularExperiment.UntunedPmle && r.MeanKl > 0).Select(r => r.MeanKl).DefaultIfEmpty(result.ReferenceKl).Min();
            plot.Axes.SetLimitsY(Math.Log10(0.8 * Math.Min(Math.Min(low, result.ReferenceKl), result.RlhfFloorKl)), Math.Log10(2 * result.ReferenceKl));
            plot.Title($"{plot.Axes.Title.Label.Text} (tuned methods, y clipped)");
        }
        plot.SavePng(path, 1000, 650);
    }
}
