using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using Spectre.Console;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign demo</c>: the language-model known-target experiment end to end with no arguments — π0 (pretrained
/// once, then cached), π*, n preference pairs, a reward model, the six methods, their evaluation against π*, a console
/// table and a report folder (report.md, report.json, PNG plots).
/// </summary>
internal static class DemoCommand
{
    public static Command Create()
    {
        var output = new Option<DirectoryInfo>("--out") { Description = "Report folder (π0 is cached in OUT/pi0).", DefaultValueFactory = _ => new DirectoryInfo(Path.Combine("runs", "demo")) };
        var quick = new Option<bool>("--quick") { Description = "The CI-sized run (a smaller π0, fewer prompts, pairs and steps; under 90 s on 2 cores)." };
        var pairs = new Option<int?>("--n") { Description = "Preference pairs (default 16384, with --train full 1024; 64 with --quick)." };
        var common = new DemoOptions();
        var command = new Command("demo", "Align π0 toward a known target π* with six methods and measure how close each gets (the README's first command).")
        {
            output, quick, pairs,
        };
        common.AddTo(command);
        command.SetAction(parse =>
        {
            using var device = common.OpenDevice(parse, parse.GetValue(quick));
            var settings = common.Read(parse, parse.GetValue(quick), onDevice: device is not null);
            if (parse.GetValue(pairs) is int n) settings = settings with { Pairs = CliErrors.Positive(n, "--n") };
            string outDir = parse.GetValue(output)!.FullName;
            string line = "distalign demo" + string.Concat(Environment.GetCommandLineArgs().Skip(1).SkipWhile(a => a != "demo").Skip(1).Select(a => " " + a));
            return DemoRunner.Run("DistAlign demo: aligning a small GPT toward a known target", line, settings, [settings.Pairs], outDir,
                Path.Combine(outDir, "pi0"), device?.Models ?? GptDevice.Cpu);
        });
        return command;
    }
}

/// <summary>The options <c>demo</c> and <c>experiment lm</c> share (with <c>--gpu-precision</c> and <c>--gpu-attention</c> for <c>--device cuda</c>).</summary>
internal sealed class DemoOptions
{
    private readonly GpuTrainingOptions gpu = GpuTrainingOptions.Create();

    public readonly Option<int> Threads = new("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads (results are bit-identical for a given count)." };
    public readonly Option<ulong> Seed = new("--seed") { DefaultValueFactory = _ => 1UL, Description = "Seed for prompts, pairs, training and evaluation (π0's pretraining keeps seed 1)." };
    public readonly Option<int?> Steps = new("--steps") { Description = "Steps (PPO: iterations) per method (default 100; 10 with --quick)." };
    public readonly Option<double?> Tau = new("--tau") { Description = "τ of the tilt π* ∝ π0·exp(w/τ)." };
    public readonly Option<double?> Gamma = new("--gamma") { Description = "γ of the preference model σ(γ Δ ln π*)." };
    public readonly Option<string?> Train = new("--train") { Description = "What the methods train: tilt (default: a per-token logit offset over the frozen π0, the class that contains π*, with n = 16384 and every method tuned), head-lora (tilt plus a rank-r update of π0's LM head over its frozen features; same budget) or full (every weight of π0's copy, n = 1024, untuned)." };
    public readonly Option<int?> AdapterRank = new("--adapter-rank") { Description = "r of --train head-lora's adapter (default 4)." };
    public readonly Option<string?> Methods = new("--methods") { Description = "Comma-separated subset of rlhf,reverse-kl,dpo,pmle,distillation,rebel (default: all six)." };
    public readonly Option<int?> Batch = new("--batch") { Description = "Pairs (offline) or prompts (online) per step." };
    public readonly Option<float?> LearningRate = new("--lr") { Description = "Learning rate of the offline methods and the reward model's head." };
    public readonly Option<float?> PpoLearningRate = new("--ppo-lr") { Description = "Learning rate of the PPO methods (RLHF, reverse KL)." };
    public readonly Option<float?> WeightDecay = new("--weight-decay") { Description = "AdamW weight decay of the trained weights (tilt: an L2 pull toward π0)." };
    public readonly Option<int?> RewardSteps = new("--reward-steps") { Description = "Reward-model training steps." };
    public readonly Option<string?> Grid = new("--grid") { Description = "Tuning: comma-separated multipliers of each method's key parameter (learning rate, or β for DPO and RLHF), e.g. 0.25,1,4 (the tilt class's default), or none (full's default)." };
    public readonly Option<int?> Seeds = new("--seeds") { Description = "Seeds of pairs and training per n (π0 shared); the report gives mean ± SE over them." };

    public void AddTo(Command command)
    {
        command.Options.Add(Threads);
        command.Options.Add(Seed);
        command.Options.Add(Steps);
        command.Options.Add(Tau);
        command.Options.Add(Gamma);
        foreach (var option in new Option[] { Train, AdapterRank, Methods, Batch, LearningRate, PpoLearningRate, WeightDecay, RewardSteps, Seeds, Grid }) command.Options.Add(option);
        gpu.AddTo(command);
    }

    /// <summary>
    /// With <c>--device cuda</c> (or auto with a usable GPU): the device π0's pretraining, the reward model and every method train on
    /// (<c>--gpu-attention flash</c> needs π0's head size to be 64: the same for both classes); null on the CPU.
    /// </summary>
    public GpuTrainingDevice? OpenDevice(ParseResult parse, bool quick) =>
        GpuTrainingOptions.OpenIfChosen(gpu.Read(parse), (quick ? DemoSettings.Quick : new DemoSettings()).Model);

    /// <param name="onDevice">a GPU was opened: the default is then full fine-tuning (the tilt class trains on the CPU)</param>
    public DemoSettings Read(ParseResult parse, bool quick, bool onDevice = false)
    {
        CpuParallel.Threads = CliErrors.Positive(parse.GetValue(Threads), "--threads");
        var settings = quick ? DemoSettings.Quick : new DemoSettings();
        string train = parse.GetValue(Train) ?? (onDevice ? "full" : "tilt");
        if (onDevice && train is "tilt" or "head-lora")
            throw new CliUsageException($"--train {train} runs on the CPU (a step is one GEMM over cached features): use --device cpu, or --train full on the GPU");
        settings = train switch
        {
            "full" => settings,
            "tilt" => DemoSettings.InTiltClass(settings, quick),
            "head-lora" => DemoSettings.InTiltClass(settings, quick, headLora: true),
            _ => throw new CliUsageException($"--train must be full, tilt or head-lora (got '{train}')"),
        };
        if (parse.GetValue(AdapterRank) is int rank)
        {
            if (train != "head-lora") throw new CliUsageException("--adapter-rank goes with --train head-lora");
            settings = settings with { AdapterRank = CliErrors.Positive(rank, "--adapter-rank") };
        }
        settings = settings with { Seed = parse.GetValue(Seed) };
        if (parse.GetValue(Methods) is string methods) settings = settings with { Methods = ParseMethods(methods) };
        if (parse.GetValue(Batch) is int batch) settings = settings with { BatchPairs = CliErrors.Positive(batch, "--batch") };
        if (parse.GetValue(LearningRate) is float lr) settings = settings with { LearningRate = PositiveRate(lr, "--lr") };
        if (parse.GetValue(PpoLearningRate) is float ppoLr) settings = settings with { PpoLearningRate = PositiveRate(ppoLr, "--ppo-lr") };
        if (parse.GetValue(WeightDecay) is float wd)
        {
            if (!(wd >= 0) || float.IsInfinity(wd)) throw new CliUsageException($"--weight-decay must be ≥ 0 (got {wd})");
            settings = settings with { WeightDecay = wd };
        }
        if (parse.GetValue(Grid) is string grid) settings = settings with { TuningGrid = ParseGrid(grid) };
        if (parse.GetValue(Seeds) is int seeds) settings = settings with { Seeds = CliErrors.Positive(seeds, "--seeds") };
        if (parse.GetValue(RewardSteps) is int rewardSteps) settings = settings with { RewardSteps = CliErrors.Positive(rewardSteps, "--reward-steps") };
        if (parse.GetValue(Steps) is int steps) settings = settings with { Steps = CliErrors.Positive(steps, "--steps") };
        if (parse.GetValue(Tau) is double tau)
        {
            if (!(tau > 0)) throw new CliUsageException($"--tau must be > 0 (got {tau})");
            settings = settings with { Task = settings.Task with { Temperature = tau } };
        }
        if (parse.GetValue(Gamma) is double gamma)
        {
            if (!(gamma > 0) || double.IsInfinity(gamma)) throw new CliUsageException($"--gamma must be a positive number (got {gamma})");
            settings = settings with { Task = settings.Task with { Gamma = gamma } };
        }
        return settings.Validate();
    }

    /// <summary>"0.25,1,4" → [0.25, 1, 4]; "none" → [] (no tuning).</summary>
    public static double[] ParseGrid(string text)
    {
        if (text.Trim() == "none") return [];
        var values = new List<double>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            if (!double.TryParse(part, NumberStyles.Float, CultureInfo.InvariantCulture, out double x) || !(x > 0) || double.IsInfinity(x))
                throw new CliUsageException($"--grid: '{part}' is not a positive multiplier (expected e.g. --grid 0.25,1,4 or --grid none)");
            values.Add(x);
        }
        if (values.Count == 0) throw new CliUsageException("--grid needs at least one multiplier, or none");
        return [.. values.Distinct()];
    }

    private static float PositiveRate(float value, string option) =>
        value > 0 && float.IsFinite(value) ? value : throw new CliUsageException($"{option} must be a positive number (got {value})");

    /// <summary>"pmle,dpo" → [Dpo, Pmle] in report order; names as the report's kebab-case ("reverse-kl").</summary>
    public static DemoMethod[] ParseMethods(string text)
    {
        var names = Enum.GetValues<DemoMethod>().ToDictionary(m => DemoExperiment.KeyOf(m), m => m);
        var chosen = new HashSet<DemoMethod>();
        foreach (var part in text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
            chosen.Add(names.TryGetValue(part, out var m) ? m
                : throw new CliUsageException($"--methods: '{part}' is not a method (expected some of {string.Join(",", names.Keys)})"));
        if (chosen.Count == 0) throw new CliUsageException("--methods needs at least one method");
        return [.. Enum.GetValues<DemoMethod>().Where(chosen.Contains)];
    }
}

/// <summary>Runs a <see cref="DemoExperiment"/> at one or several n with progress bars, prints the table, writes the report folder.</summary>
internal static class DemoRunner
{
    public static int Run(string title, string commandLine, DemoSettings settings, IReadOnlyList<int> sizes, string outDir, string cacheDir, GptDevice device)
    {
        var watch = Stopwatch.StartNew();
        if (Ranks.IsRoot) Directory.CreateDirectory(outDir);   // under mpirun rank 0 alone writes the report
        // Redirected output gets 80 columns by default, which wraps the results table beyond reading.
        if (Console.IsOutputRedirected && AnsiConsole.Profile.Width < 160) AnsiConsole.Profile.Width = 160;
        AnsiConsole.MarkupLine($"[bold]{Markup.Escape(title)}[/]");
        AnsiConsole.MarkupLine($"π0 cache: {Markup.Escape(cacheDir)} · report: {Markup.Escape(outDir)} · threads {CpuParallel.Threads}");
        if (!device.IsCpu)
            AnsiConsole.MarkupLine($"training on {Markup.Escape(device.Description)}: π0's pretraining, the reward model's backbone and every policy " +
                                   "(GPU engines; decoding on the device); π*, the pairs' labels and the estimates on the host");
        DemoExperiment? experiment = null;
        var results = new List<DemoSizeResult>();
        try
        {
            AnsiConsole.Progress()
                .AutoClear(false)
                .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn(), new PercentageColumn(), new ElapsedTimeColumn())
                .Start(ctx =>
                {
                    var tasks = new Dictionary<string, ProgressTask>();
                    void OnProgress(DemoProgress p)
                    {
                        if (!tasks.TryGetValue(p.Stage, out var task))
                        {
                            foreach (var t in tasks.Values) if (!t.IsFinished) t.StopTask();
                            tasks[p.Stage] = task = ctx.AddTask(Markup.Escape(p.Stage), maxValue: Math.Max(1, p.Total));
                        }
                        task.MaxValue = Math.Max(1, p.Total);
                        task.Value = p.Done;
                        task.Description = Markup.Escape($"{p.Stage}: {p.Detail}");
                    }
                    experiment = DemoExperiment.Prepare(settings, cacheDir, OnProgress, device, Ranks.Settings);
                    foreach (int n in sizes)
                    {
                        results.Add(experiment.RunAtSize(n));
                        // a sweep writes its report after every size, so a run that is cut short keeps what it measured
                        if (results.Count < sizes.Count) WriteReport(Outcome(experiment, $" (partial: {results.Count} of {sizes.Count} sizes)"));
                    }
                    foreach (var t in tasks.Values) if (!t.IsFinished) t.StopTask();
                });
            var outcome = Outcome(experiment!, "");
            PrintSummary(outcome);
            var plots = WriteReport(outcome);
            Console.WriteLine($"report: {Path.Combine(outDir, DemoReport.MarkdownFileName)} (+ {DemoReport.JsonFileName}, {string.Join(", ", plots.Select(p => p.File))}); wall time {watch.Elapsed.TotalSeconds:F0} s");
            return 0;

            DemoOutcome Outcome(DemoExperiment e, string partial) =>
                new(title + partial, commandLine, Machine(device), watch.Elapsed.TotalSeconds, settings, e.Pi0, e.Summary, e.ReferenceEvaluation, e.TargetEvaluation, [.. results]);

            List<(string File, string Caption)> WriteReport(DemoOutcome o)
            {
                if (!Ranks.IsRoot) return [];
                var plots = DemoPlots.Write(outDir, o);
                DemoReport.WriteJson(Path.Combine(outDir, DemoReport.JsonFileName), o);
                DemoReport.WriteMarkdown(Path.Combine(outDir, DemoReport.MarkdownFileName), o, plots);
                return plots;
            }
        }
        finally
        {
            experiment?.Dispose();
        }
    }

    private static void PrintSummary(DemoOutcome o)
    {
        var inv = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(inv, $"task: KL(π*‖π0) = {o.Task.TargetKl.Mean:F3} ± {o.Task.TargetKl.StandardError:F3} nats per response; τ = {o.Task.Temperature}, γ = {o.Task.Gamma}, L = {o.Task.ResponseTokens}; {o.Task.LexiconTokens} lexicon tokens"));
        Console.WriteLine(string.Create(inv, $"π0: held-out loss {o.Pi0.ValidationLoss:F3} nats/token ({(o.Pi0.Cached ? "cached" : $"pretrained in {o.Pi0.Seconds:F0} s")})"));
        foreach (var size in o.Sizes)
        {
            Console.WriteLine(string.Create(inv, $"n = {size.Pairs}: mean |P* − ½| = {size.MeanLabelMargin:F3}, labels agree with ln π* in {size.AgreementWithTarget:P1}, go against ln π0 in {size.AgainstReference:P1}; reward model orders fresh pairs right in {size.Reward.TrueOrderAccuracy:P1}"));
            var table = new Table().Title($"n = {size.Pairs}");
            foreach (var c in new[] { "model", "KL(π*‖π̂)", "KL(π̂‖π*)", "KL(π̂‖π0)", "win vs π0", "lexicon reward", "entropy/token", "distinct-1", "distinct-2", "s" })
                table.AddColumn(new TableColumn(Markup.Escape(c)) { Alignment = c == "model" ? Justify.Left : Justify.Right });
            void Add(string name, KnownTargetEvaluation e, double? seconds)
            {
                string E(Estimate x) => string.Create(inv, $"{x.Mean:F3} ± {x.StandardError:F3}");
                table.AddRow([Markup.Escape(name), E(e.ForwardKl), E(e.ReverseKl), E(e.KlToReference), E(e.WinRate), E(e.LexiconReward),
                    e.TokenEntropy.ToString("F3", inv), e.Distinct1.ToString("F3", inv), e.Distinct2.ToString("F3", inv), seconds?.ToString("F0", inv) ?? ""]);
            }
            Add("π0 (start)", o.Pi0Evaluation, null);
            foreach (var m in size.Methods) Add(m.Name, m.Evaluation, m.Seconds);
            Add("π* (target)", o.TargetEvaluation, null);
            AnsiConsole.Write(table);
        }
    }

    private static string Machine(GptDevice device)
    {
        string cpu = "";
        try
        {
            if (File.Exists("/proc/cpuinfo"))
                cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "";
        }
        catch (IOException) { }
        return $"{(cpu.Length > 0 ? cpu + ", " : "")}{Environment.ProcessorCount} cores, {CpuParallel.Threads} threads, {RuntimeInformation.OSDescription}, .NET {Environment.Version}" +
               (device.IsCpu ? "" : $"; models trained on {device.Description}") +
               (Ranks.Group.Size > 1 ? $"; data-parallel over {Ranks.Group.Description}" : "");
    }
}

/// <summary>The report's PNGs (ScottPlot): loss curves, forward-KL bars with standard errors, reward–KL scatter, and forward KL against n.</summary>
internal static class DemoPlots
{
    public static List<(string File, string Caption)> Write(string outDir, DemoOutcome o)
    {
        var plots = new List<(string, string)>();
        var last = o.Sizes[^1];
        var done = last.Methods;

        foreach (var m in done)
        {
            var loss = new ScottPlot.Plot();
            var line = loss.Add.Scatter(m.LossCurve.Select(p => (double)p.Step).ToArray(), m.LossCurve.Select(p => p.Loss).ToArray());
            line.MarkerSize = 0;
            loss.Title($"{m.Name}: training loss (n = {last.Pairs})");
            loss.XLabel(m.Method is DemoMethod.Rlhf or DemoMethod.ReverseKl ? "PPO iteration" : "step");
            loss.YLabel("loss (the method's own objective)");
            Save(loss, outDir, LossCurveFile(m.Method), $"{m.Name} training loss", plots);
        }

        var bars = new ScottPlot.Plot();
        var rows = new List<(string Name, Estimate Kl)> { ("π0", o.Pi0Evaluation.ForwardKl) };
        rows.AddRange(done.Select(m => (m.Name, m.Evaluation.ForwardKl)));
        rows.Add(("π*", o.TargetEvaluation.ForwardKl));
        var barList = rows.Select((r, i) => new ScottPlot.Bar { Position = i, Value = r.Kl.Mean, Error = r.Kl.StandardError }).ToArray();
        bars.Add.Bars(barList);
        bars.Axes.Bottom.SetTicks([.. rows.Select((_, i) => (double)i)], [.. rows.Select(r => r.Name)]);
        bars.Axes.Margins(bottom: 0);
        bars.Title($"Forward KL(π* ‖ π̂) per response, ± 1 SE (n = {last.Pairs})");
        bars.YLabel("nats");
        Save(bars, outDir, "forward_kl.png", "forward KL to the target with standard errors", plots);

        var scatter = new ScottPlot.Plot();
        var points = new List<(string Name, KnownTargetEvaluation E)> { ("π0", o.Pi0Evaluation) };
        points.AddRange(done.Select(m => (m.Name, m.Evaluation)));
        points.Add(("π*", o.TargetEvaluation));
        foreach (var (name, e) in points)
        {
            var p = scatter.Add.Scatter(new[] { e.KlToReference.Mean }, new[] { e.LexiconReward.Mean });
            p.MarkerSize = 10;
            p.LegendText = name;
        }
        scatter.Title($"Lexicon reward against KL(π̂ ‖ π0) (n = {last.Pairs})");
        scatter.XLabel("KL(π̂ ‖ π0), nats per response");
        scatter.YLabel("mean lexicon reward Σ w(y_t)");
        scatter.ShowLegend(ScottPlot.Alignment.UpperRight);
        Save(scatter, outDir, "reward_kl.png", "lexicon reward against KL to π0", plots);

        if (o.Sizes.Count > 1)
        {
            var sweep = new ScottPlot.Plot();
            var xs = o.Sizes.Select(s => Math.Log2(s.Pairs)).ToArray();
            var palette = new ScottPlot.Palettes.Category10();   // one colour per method (error bars would otherwise take palette slots)
            foreach (var (method, index) in last.Methods.Select((m, i) => (m.Method, i)))
            {
                // mean ± SE over seeds of the kept runs; with one seed, the Monte Carlo SE of its estimate
                var estimates = o.Sizes.Select(s => o.Settings.Seeds > 1 ? s.ForwardKlOverSeeds(method).Honest : s.Methods.First(m => m.Method == method).Evaluation.ForwardKl).ToArray();
                var ys = estimates.Select(p => p.Mean).ToArray();
                var line = sweep.Add.Scatter(xs, ys);
                line.Color = palette.GetColor(index);
                line.LegendText = DemoExperiment.NameOf(method);
                var errors = sweep.Add.ErrorBar(xs, ys, [.. estimates.Select(p => p.StandardError)]);
                errors.Color = line.Color;
            }
            var reference = sweep.Add.HorizontalLine(o.Pi0Evaluation.ForwardKl.Mean);
            reference.LegendText = "π0";
            reference.LinePattern = ScottPlot.LinePattern.Dashed;
            sweep.Axes.Bottom.SetTicks(xs, [.. o.Sizes.Select(s => s.Pairs.ToString(CultureInfo.InvariantCulture))]);
            sweep.Title("Forward KL(π* ‖ π̂) against the number of pairs n");
            sweep.XLabel("n (log scale)");
            sweep.YLabel("nats per response");
            sweep.ShowLegend(ScottPlot.Alignment.LowerLeft);   // the learners fall toward the lower right; small n sits near π0
            Save(sweep, outDir, "forward_kl_vs_n.png", "forward KL against n", plots);
        }
        return plots;
    }

    /// <summary>The loss-curve PNG of a method: <c>loss_&lt;method&gt;.png</c>.</summary>
    public static string LossCurveFile(DemoMethod method) => $"loss_{method.ToString().ToLowerInvariant()}.png";

    private static void Save(ScottPlot.Plot plot, string outDir, string file, string caption, List<(string, string)> plots)
    {
        plot.SavePng(Path.Combine(outDir, file), 900, 540);
        plots.Add((file, caption));
    }
}
