using System.CommandLine;
using System.Globalization;
using DistAlign.Alignment.Experiments;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign experiment</c>: the known-target experiments (OBJECTIVES.md, "Known-target evaluation"). This file owns the
/// command and its <c>tabular</c> subcommand; other subcommands are passed to <see cref="Create"/> from their own files.
/// </summary>
internal static class ExperimentCommand
{
    /// <summary>The <c>experiment</c> command with <c>tabular</c> and any <paramref name="extra"/> subcommands.</summary>
    public static Command Create(params Command[] extra)
    {
        var experiment = new Command("experiment", "Known-target experiments: align to preferences drawn from a chosen π*, measure KL(π*‖π̂).");
        experiment.Subcommands.Add(CreateTabular());
        foreach (var command in extra) experiment.Subcommands.Add(command);
        return experiment;
    }

    /// <summary>
    /// Reads --n-min/--n-max: a value up to 30 is an exponent (5 → 2^5 = 32), a larger one is n itself and must be a power of two.
    /// </summary>
    internal static int Exponent(int value, string flag)
    {
        if (value >= 0 && value <= 30) return value;
        if (value > 30 && (value & (value - 1)) == 0) return int.Log2(value);
        throw new CliUsageException($"{flag} must be an exponent in [0, 30] or a power of two (got {value})");
    }

    private static Command CreateTabular()
    {
        var output = new Option<DirectoryInfo>("--out") { Description = "Output folder (CSV, results.md, kl_vs_n.png).", DefaultValueFactory = _ => new DirectoryInfo(Path.Combine("runs", "tabular")) };
        var seeds = new Option<int>("--seeds") { Description = "Number of seeds; each draws its own α*, α0 and pairs.", DefaultValueFactory = _ => 5 };
        var firstSeed = new Option<ulong>("--first-seed") { Description = "Seed of the first repetition (then +1, +2, …).", DefaultValueFactory = _ => 1UL };
        var nMin = new Option<int>("--n-min") { Description = "Smallest n: an exponent (5 = 2^5) or a power of two.", DefaultValueFactory = _ => 5 };
        var nMax = new Option<int>("--n-max") { Description = "Largest n: an exponent (16 = 2^16) or a power of two.", DefaultValueFactory = _ => 16 };
        var sampler = new Option<string>("--sampler") { Description = "Pair sampler μ: pi0 or uniform.", DefaultValueFactory = _ => "pi0" };
        sampler.AcceptOnlyFromAmong("pi0", "uniform");
        var gamma = new Option<double>("--gamma") { Description = "Preference temperature γ.", DefaultValueFactory = _ => 0.5 };
        var logitStd = new Option<double>("--logit-std") { Description = "Standard deviation σ of the logits α*, α0 ~ N(0, σ²).", DefaultValueFactory = _ => 0.1 };
        var contexts = new Option<int>("--contexts") { Description = "Number of contexts X.", DefaultValueFactory = _ => 10 };
        var responses = new Option<int>("--responses") { Description = "Number of responses Y per context.", DefaultValueFactory = _ => 10 };
        var steps = new Option<int>("--steps") { Description = "Full-batch AdamW steps per fit.", DefaultValueFactory = _ => new TabularTrainingSchedule().Steps };
        var lr = new Option<float>("--lr") { Description = "Peak AdamW learning rate (half cosine down to 5% of it).", DefaultValueFactory = _ => new TabularTrainingSchedule().LearningRate };
        var methods = new Option<string>("--methods") { Description = "Comma-separated subset of " + string.Join(",", TabularMethods.All().Select(m => m.Name)) + " (default: all of them), or RLHF-PPO, RKL-PPO (PPO over the whole grid: slow)." };
        var ppoCheck = new Option<bool>("--ppo-check") { Description = "Also train RLHF and RKL with the PPO trainer at the β their closed forms were tuned to (--ppo-check false to skip).", DefaultValueFactory = _ => true };
        var ppoIterations = new Option<int>("--ppo-iterations") { Description = "PPO iterations per fit of --ppo-check.", DefaultValueFactory = _ => 200 };
        var threads = new Option<int>("--threads") { Description = "Fits run in parallel (results do not depend on it).", DefaultValueFactory = _ => Environment.ProcessorCount };
        var command = new Command("tabular", "The paper's Figure 1: 10×10 tabular policies, forward KL to π* against n for RLHF, RKL, PMLE, distillation, DPO, REBEL.")
        {
            output, seeds, firstSeed, nMin, nMax, sampler, gamma, logitStd, contexts, responses, steps, lr, methods, ppoCheck, ppoIterations, threads,
        };
        command.SetAction(parse =>
        {
            int from = Exponent(parse.GetValue(nMin), "--n-min"), to = Exponent(parse.GetValue(nMax), "--n-max");
            if (from > to) throw new CliUsageException($"--n-min (2^{from}) must not exceed --n-max (2^{to})");
            var all = TabularMethods.All().Concat([new TabularPpo(Alignment.Training.PpoObjective.Rlhf), new TabularPpo(Alignment.Training.PpoObjective.ReverseKl)]).ToList();
            IReadOnlyList<ITabularMethod> chosen = TabularMethods.All();
            if (parse.GetValue(methods) is { } list)
            {
                var names = list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
                var unknown = names.Where(n => !all.Any(m => m.Name.Equals(n, StringComparison.OrdinalIgnoreCase))).ToList();
                if (unknown.Count > 0 || names.Length == 0)
                    throw new CliUsageException($"--methods: unknown method(s) {string.Join(", ", unknown)}; choose from {string.Join(", ", all.Select(m => m.Name))}");
                chosen = [.. all.Where(m => names.Any(n => m.Name.Equals(n, StringComparison.OrdinalIgnoreCase)))];
            }
            var options = new TabularExperimentOptions
            {
                Contexts = parse.GetValue(contexts),
                Responses = parse.GetValue(responses),
                LogitStd = parse.GetValue(logitStd),
                Gamma = parse.GetValue(gamma),
                Sampler = parse.GetValue(sampler) == "uniform" ? TabularSampler.Uniform : TabularSampler.Pi0,
                Ns = [.. Enumerable.Range(from, to - from + 1).Select(e => 1 << e)],
                Seeds = CliErrors.Positive(parse.GetValue(seeds), "--seeds"),
                FirstSeed = parse.GetValue(firstSeed),
                Threads = CliErrors.Positive(parse.GetValue(threads), "--threads"),
                Schedule = new TabularTrainingSchedule(CliErrors.Positive(parse.GetValue(steps), "--steps"), parse.GetValue(lr)),
                Methods = chosen,
                PpoCheck = parse.GetValue(ppoCheck),
                PpoIterations = CliErrors.Positive(parse.GetValue(ppoIterations), "--ppo-iterations"),
            };
            try { options.Validate(); }
            catch (ArgumentException e) { throw new CliUsageException(e.Message); }
            return RunTabular(options, parse.GetValue(output)!.FullName);
        });
        return command;
    }

    private static int RunTabular(TabularExperimentOptions options, string outDir)
    {
        Console.WriteLine($"tabular experiment · {options.Contexts}×{options.Responses} · σ = {options.LogitStd} · γ = {options.Gamma} · μ = {options.Sampler} · " +
                          $"{options.Seeds} seeds · n = {options.Ns[0]}…{options.Ns[^1]} · {options.Threads} threads");
        var result = TabularExperiment.Run(options, message => Console.WriteLine($"  {message}"));
        var paths = TabularReport.WriteAll(result, outDir);
        Console.WriteLine(ConsoleTable(result));
        Console.WriteLine($"done in {result.WallSeconds.ToString("F1", CultureInfo.InvariantCulture)} s wall, {result.CpuSeconds.ToString("F1", CultureInfo.InvariantCulture)} s CPU; wrote:");
        foreach (var path in paths) Console.WriteLine($"  {path}");
        return 0;
    }

    /// <summary>Mean forward KL per n and method (tuned parameter), then the slopes.</summary>
    internal static string ConsoleTable(TabularExperimentResult result)
    {
        var inv = CultureInfo.InvariantCulture;
        var methods = result.Summary.Select(r => r.Method).Distinct().ToList();
        var ns = result.Summary.Select(r => r.N).Distinct().OrderBy(n => n).ToList();
        var lines = new List<string> { "", $"E_x KL(π*‖π̂), mean over seeds, parameter tuned per n (KL(π*‖π0) = {result.ReferenceKl.ToString("0.000e0", inv)}; RLHF floor at n = ∞ = {result.RlhfFloorKl.ToString("0.000e0", inv)})" };
        string Cell(string m, string text) => text.PadLeft(Math.Max(11, m.Length + 2));
        lines.Add($"{"n",7}" + string.Concat(methods.Select(m => Cell(m, m))));
        foreach (int n in ns)
            lines.Add($"{n,7}" + string.Concat(methods.Select(m => Cell(m, result.Summary.First(r => r.Method == m && r.N == n).MeanKl.ToString("0.000e0", inv)))));
        lines.Add($"{"slope",7}" + string.Concat(methods.Select(m => Cell(m, result.Slopes.First(s => s.Method == m).Slope.ToString("F2", inv)))));
        var slope = result.Slopes[0];
        lines.Add($"(slope: least squares of ln KL on ln n over n = {slope.NMin}…{slope.NMax})");
        return string.Join(Environment.NewLine, lines);
    }
}
