using System.Diagnostics;
using System.Globalization;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Engine.Cuda;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Model;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// <c>gpu-check [--out DIR] [--quick] [--skip-bench] [--skip-tests] [--budget SECONDS]</c>: on a machine with an NVIDIA GPU, checks
/// the GPU kernels (ILGPU on the CUDA accelerator, cuBLAS/cuBLASLt GEMMs, the NVRTC kernels) against the CPU kernels, then
/// checks the whole GPT (GpuGpt) against the CPU Gpt, DPO steps and a PPO iteration on GPU policies against CPU ones, the demo
/// experiment and KV-cache decoding against the CPU's, runs every <c>[TestFixture("cuda")]</c> case of tests/ (in a child
/// <c>gpu-check --tests</c> process), times the GEMMs at GPT-2 124M shapes, the fused log-prob and flash-attention kernels and
/// whole GPT-2 124M training steps (bf16 and fp32 GEMMs; tokens/s, MFU), writing summary.md, checks.tsv, benchmarks.tsv,
/// tests.tsv and sections.tsv into DIR after every section. The sections are planned into the budget (default
/// <see cref="DefaultBudgetSeconds"/>, counted from the start of the process), the slowest left out first (<see cref="SectionPlan"/>).
/// Exit codes: 0 all checks and tests passed, 1 a check or test failed, 2 bad arguments, 3 no usable CUDA device (nothing was
/// run; the reason is printed and written to DIR/summary.md).
/// <para>
/// <c>--simulator</c> runs the ILGPU checks on ILGPU's CPU accelerator instead (no GPU). <c>--tests [--backend cuda|simulator]
/// [--fixture TEXT]</c> runs only the test fixtures of that backend (the published bundle carries the test assembly; without a
/// CUDA device the cuda cases are skipped with the reason and the exit code is 3).
/// </para>
/// </summary>
public static class Program
{
    public const int NoDevice = 3;

    /// <summary>The budget when none is given: the whole default run, the test fixtures included, is planned into 7 minutes.</summary>
    public const double DefaultBudgetSeconds = 420;

    private const string Usage = "usage: gpu-check [--out DIR] [--quick] [--skip-bench] [--skip-tests] [--budget SECONDS] [--simulator] " +
                                 "[--tests [--backend cuda|simulator] [--fixture TEXT]] [--flash-benchmark-only]";

    private sealed record Options(string OutDir, bool Quick, bool Bench, bool Tests, bool Simulator, bool FlashBenchmarkOnly, bool TestsOnly,
                                  string Backend, string? Fixture, double BudgetSeconds);

    public static int Main(string[] args) => Run(args, Console.Out, Process.GetCurrentProcess().StartTime);

    /// <summary>Runs gpu-check in this process; the budget counts from this call.</summary>
    public static int Run(string[] args, TextWriter log) => Run(args, log, DateTime.Now);

    private static Options? Parse(string[] args)
    {
        var o = new Options("gpu-check-out", Quick: false, Bench: true, Tests: true, Simulator: false, FlashBenchmarkOnly: false, TestsOnly: false,
                            Backend: "cuda", Fixture: null, DefaultBudgetSeconds);
        for (int i = 0; i < args.Length; i++)
        {
            bool hasValue = i + 1 < args.Length;
            switch (args[i])
            {
                case "--out" when hasValue: o = o with { OutDir = args[++i] }; break;
                case "--quick": o = o with { Quick = true }; break;
                case "--skip-bench": o = o with { Bench = false }; break;
                case "--skip-tests": o = o with { Tests = false }; break;
                case "--simulator": o = o with { Simulator = true }; break;
                case "--flash-benchmark-only": o = o with { FlashBenchmarkOnly = true }; break;   // one short run for a profiler (ncu)
                case "--tests": o = o with { TestsOnly = true }; break;
                case "--backend" when hasValue && args[i + 1] is "cuda" or "simulator": o = o with { Backend = args[++i] }; break;
                case "--fixture" when hasValue: o = o with { Fixture = args[++i] }; break;
                case "--budget" when hasValue && double.TryParse(args[i + 1], NumberStyles.Float, CultureInfo.InvariantCulture, out double seconds) && seconds > 0:
                    o = o with { BudgetSeconds = seconds };
                    i++;
                    break;
                default:
                    Console.Error.WriteLine($"gpu-check: unknown or incomplete argument '{args[i]}' ({Usage})");
                    return null;
            }
        }
        if (!o.TestsOnly && (o.Backend != "cuda" || o.Fixture is not null))
        {
            Console.Error.WriteLine($"gpu-check: --backend and --fixture go with --tests ({Usage})");
            return null;
        }
        return o;
    }

    private static int Run(string[] args, TextWriter log, DateTime started)
    {
        if (Parse(args) is not { } o) return 2;
        var report = new Report(log);
        foreach (var library in CudaLibraries.All.Append(CudaLibraries.Nccl))
            report.Note($"{library.Description}: {(library.IsAvailable ? "loaded " + library.LoadedFrom : library.UnavailableReason)}");
        if (o.TestsOnly) return RunTestFixtures(report, o, started);
        if (o.Simulator) return RunOnSimulator(report, o, started);
        var probe = CudaDriver.Probe();
        if (!probe.IsUsable)
        {
            report.Note($"no CUDA device: {probe.Reason}");
            report.Write(o.OutDir, "Nothing was run on a GPU.");
            return NoDevice;
        }
        string header = $"Device: {probe.Devices[0]}; driver {probe.DriverVersionText}; cuBLAS {(CudaLibraries.Cublas.IsAvailable ? Cublas.Version().ToString() : "missing")}; " +
                        $"NVRTC {(CudaLibraries.Nvrtc.IsAvailable ? NvrtcVersionText() : "missing")}; {(o.Quick ? "quick shapes" : "full shapes")}; {DateTime.UtcNow:u}.";
        report.Note(header);
        var total = Stopwatch.StartNew();
        using var context = GpuContext.TryCreateCuda();
        if (context is null)
        {
            report.Add(new CheckResult("ILGPU CUDA accelerator", 0, double.NaN, double.NaN, "", "ILGPU found no CUDA device although the driver reports one"));
            report.Write(o.OutDir, header);
            log.WriteLine($"{report.Checks.Count(c => c.Passed)} passed, {report.Checks.Count(c => !c.Passed)} failed");
            return 1;
        }
        var accelerator = (CudaAccelerator)context.Accelerator;
        NoteFreeMemory(report, accelerator);
        if (o.FlashBenchmarkOnly)
        {
            try { new FlashAttentionChecks(accelerator, report, o.Quick).RunOnceForProfiler(); }
            catch (Exception e) { report.Add(new CheckResult("flash attention for a profiler", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
            report.Write(o.OutDir, header);
            return report.Checks.Any(c => !c.Passed) ? 1 : 0;
        }
        new SectionPlan(report, o.BudgetSeconds, started, () => report.Write(o.OutDir, header)).Run(CudaSections(accelerator, report, o));
        if (NvrtcTargetLogProbs.LastUnavailableReason is { } reason) report.Note($"GpuGpt's LM head ran the ILGPU log-prob kernels: {reason}");
        report.Note($"total {total.Elapsed.TotalSeconds:F1} s");
        report.Write(o.OutDir, header);
        return Finish(report);
    }

    /// <summary>
    /// The CUDA run's sections in order: the checks against the CPU, the test fixtures, then the benchmarks. Estimates are
    /// seconds on an H100/H200 with full shapes: run 6 (H200) took 48.6 s for every check and benchmark it had then; the
    /// sections added since have not run on a GPU, so theirs are guesses from their CPU side, kept on the generous side.
    /// Every run's sections table gives the measured seconds to correct them with.
    /// </summary>
    private static List<Section> CudaSections(CudaAccelerator accelerator, Report report, Options o)
    {
        bool quick = o.Quick;
        var gpt = new GptChecks(accelerator, report);
        var alignment = new AlignmentChecks(accelerator, report);
        var demo = new DemoChecks(accelerator, report);
        var decoder = new DecoderChecks(accelerator, report);
        var gpt2 = new GptConfig(Layers: 12, Heads: 12, Channels: 768, VocabSize: 50257, MaxSequenceLength: 1024);
        List<Section> sections =
        [
            new("ILGPU, cuBLAS and NVRTC kernels vs CPU", quick ? 10 : 20, _ => new KernelChecks(accelerator, report, quick).RunAll()),
            new("NCCL one-rank collectives", 5, _ => new NcclChecks(accelerator, report).Run()),   // data-parallel training's device collectives
            new("flash-attention kernels vs CPU", 10, _ => new FlashAttentionChecks(accelerator, report, quick).RunChecks()),
            new("GpuGpt vs CPU Gpt (fp32, flash attention, bf16 GEMMs, features)", 15, _ =>
            {
                gpt.CompareWithTheCpuModel();
                gpt.CompareFlashWithTheCpuModel();
                gpt.CompareFeaturesWithTheCpuModel(cuda: true);
            }),
            new("DPO steps and a PPO iteration on GPU policies vs CPU (fp32, bf16 GEMMs)", 15, _ =>
            {
                alignment.CompareDpoStepsWithTheCpuPolicy(GemmPrecision.Float32);
                alignment.CompareDpoStepsWithTheCpuPolicy(GemmPrecision.BFloat16);
                alignment.ComparePpoIterationWithTheCpuPolicy(GemmPrecision.Float32);
                alignment.ComparePpoIterationWithTheCpuPolicy(GemmPrecision.BFloat16);
            }),
            // demo --device cuda: the whole known-target experiment on the device vs on the CPU
            new("demo (DemoSettings.Smoke) on the device vs the CPU", 45, _ => demo.CompareWithTheCpuRun()),
            // KV-cache decoding (sample --device cuda): logits of every step vs the CPU decoder, and ms per cached step next to the CPU's
            new("KV-cache decoder vs CPU (W2)", 10, _ => decoder.Run("W2", StepWorkload.W2.Config, rows: 8, length: 128, time: o.Bench)),
        ];
        if (o.Tests)
            // On the simulator (2 cores) the cases took 185 and 287 s in two runs, half of it the demo's; with a GPU and 16 cores, far less
            sections.Add(new("[TestFixture(\"cuda\")] cases of tests/ (a gpu-check --tests process)", 120,
                             timeLimit => RunTestFixturesInAChildProcess(report, o.OutDir, timeLimit, "cuda", fixture: null), StopsAtItsTimeLimit: true));
        if (o.Bench)
        {
            sections.AddRange(
            [
                new("KV-cache decoder vs CPU, timed (GPT-2 124M)", 20, _ =>
                    decoder.Run("GPT-2 124M", gpt2, rows: 8, length: quick ? 16 : 64, time: true)),
                new("flash-attention benchmark (GPT-2 124M attention)", 5, _ => new FlashAttentionChecks(accelerator, report, quick).RunBenchmark()),
                new("GEMM and log-prob kernel benchmarks (GPT-2 124M shapes)", 30, _ => new KernelBenchmarks(accelerator, report, quick).RunAll()),
                // GPT-2 124M, B × 1024 tokens: bf16 GEMMs (cuBLAS, fp32 accumulation) with flash and materialised attention, then fp32 GEMMs
                new("GPT-2 124M training steps (bf16 GEMMs with flash and materialised attention, fp32 GEMMs)", quick ? 15 : 40, _ =>
                {
                    int rows = quick ? 2 : 16;
                    gpt.StepBenchmark("GPT-2 124M", gpt2, rows, 1024, GemmPrecision.BFloat16, warmup: 3, steps: quick ? 3 : 20, KernelBenchmarks.PeakBf16Flops, profile: true, flash: true);
                    gpt.StepBenchmark("GPT-2 124M", gpt2, rows, 1024, GemmPrecision.BFloat16, warmup: 2, steps: quick ? 3 : 5, KernelBenchmarks.PeakBf16Flops, profile: true);
                    gpt.StepBenchmark("GPT-2 124M", gpt2, rows, 1024, GemmPrecision.Float32, warmup: 1, steps: 3, KernelBenchmarks.PeakBf16Flops, profile: true);
                }),
                new("PPO iteration phases (bench ppo --device cuda)", 20, _ => demo.TimeThePpoIteration()),
            ]);
            if (!quick) sections.Add(new("demo --quick end to end (device fp32 and bf16 GEMMs, and the CPU)", 180, _ => demo.TimeTheQuickDemo()));
        }
        else report.Note("benchmarks skipped (--skip-bench)");
        if (!o.Tests) report.Note("test fixtures skipped (--skip-tests)");
        return sections;
    }

    /// <summary>
    /// <c>--simulator</c>: the ILGPU kernel checks (quick shapes), the GPT, the alignment steps, the demo and the decoder on ILGPU's
    /// CPU accelerator, no GPU needed: a smoke test that a published build loads ILGPU, compiles kernels and compares them with the
    /// CPU kernels; then the simulator cases of tests/Kernels/Gpu through the same child <c>gpu-check --tests</c> process as the
    /// CUDA run's test section (every simulator case: <c>--tests --backend simulator</c>, 3 to 5 minutes on 2 cores).
    /// Estimates: seconds measured on this repository's 2-core CI machine, rounded up.
    /// </summary>
    private static int RunOnSimulator(Report report, Options o, DateTime started)
    {
        using var context = GpuContext.CreateCpuSimulator();
        var accelerator = context.Accelerator;
        const string header = "ILGPU CPU simulator (no GPU): ILGPU kernels and the GPT (tiny shapes); timings mean nothing here.";
        var gpt = new GptChecks(accelerator, report);
        var alignment = new AlignmentChecks(accelerator, report);
        List<Section> sections =
        [
            new("ILGPU kernels vs CPU (quick shapes)", 40, _ => new KernelChecks(accelerator, report, quick: true).RunAll()),
            new("GpuGpt vs CPU Gpt (fp32, features)", 10, _ =>
            {
                gpt.CompareWithTheCpuModel();
                gpt.CompareFeaturesWithTheCpuModel(cuda: false);
            }),
            new("DPO steps and a PPO iteration on simulator policies vs CPU (fp32)", 35, _ =>
            {
                alignment.CompareDpoStepsWithTheCpuPolicy(GemmPrecision.Float32);   // tiled fp32 GEMMs here
                alignment.ComparePpoIterationWithTheCpuPolicy(GemmPrecision.Float32);
            }),
            new("demo (DemoSettings.Smoke) on the simulator vs the CPU", 90, _ => new DemoChecks(accelerator, report).CompareWithTheCpuRun()),
            new("KV-cache decoder vs CPU (tiny)", 5, _ =>
                new DecoderChecks(accelerator, report).Run("tiny (simulator smoke)", new(Layers: 2, Heads: 3, Channels: 24, VocabSize: 37, MaxSequenceLength: 16),
                                                           rows: 3, length: 12, time: false)),
            new("tiny GPT training step (the step benchmark's smoke)", 10, _ =>
                gpt.StepBenchmark("tiny GPT (simulator smoke)", new(Layers: 2, Heads: 2, Channels: 16, VocabSize: 64, MaxSequenceLength: 16),
                                  rows: 2, length: 16, GemmPrecision.Float32, warmup: 1, steps: 1, KernelBenchmarks.PeakBf16Flops, profile: true)),
        ];
        if (o.Tests)
            sections.Add(new("[TestFixture(\"simulator\")] cases of tests/Kernels/Gpu (a gpu-check --tests process)", 30,
                             timeLimit => RunTestFixturesInAChildProcess(report, o.OutDir, timeLimit, "simulator", fixture: "Kernels.Gpu."), StopsAtItsTimeLimit: true));
        new SectionPlan(report, o.BudgetSeconds, started, () => report.Write(o.OutDir, header)).Run(sections);
        report.Write(o.OutDir, header);
        return Finish(report);
    }

    /// <summary>
    /// <c>--tests</c>: every case of the <c>[TestFixture("<paramref name="o"/>.Backend")]</c> fixtures (whose full name contains
    /// --fixture, if given), run by NUnit in this process until the budget is spent; tests.tsv and summary.md rewritten after
    /// each case. Exit 3 for the cuda backend without a usable device (the cases are then skipped with the reason).
    /// </summary>
    private static int RunTestFixtures(Report report, Options o, DateTime started)
    {
        var tests = BackendFixtureRunner.LoadEmbeddedTestAssembly(out string missing);
        if (tests is null)
        {
            report.Note($"gpu-check --tests: {missing}");
            report.Write(o.OutDir, "No test was run.");
            return 2;
        }
        string device = "ILGPU's CPU simulator (no GPU)";
        bool noDevice = false;
        if (o.Backend == "cuda")
        {
            var probe = CudaDriver.Probe();
            noDevice = !probe.IsUsable;
            device = noDevice ? $"no CUDA device ({probe.Reason})" : $"{probe.Devices[0]}, driver {probe.DriverVersionText}";
        }
        string header = $"Test fixtures [TestFixture(\"{o.Backend}\")] of tests/ on {device}; {DateTime.UtcNow:u}.";
        report.TestRun = $"every case of the [TestFixture(\"{o.Backend}\")] fixtures of tests/{(o.Fixture is null ? "" : $" whose name contains '{o.Fixture}'")}, " +
                         "run by `gpu-check --tests` through NUnit's framework API; tests.tsv lists each";
        report.Write(o.OutDir, header);
        double left = o.BudgetSeconds - (DateTime.Now - started).TotalSeconds;
        var total = Stopwatch.StartNew();
        try
        {
            new BackendFixtureRunner(tests, report).Run(o.Backend, o.Fixture, TimeSpan.FromSeconds(Math.Max(left, 0)), () => report.Write(o.OutDir, header));
        }
        catch (Exception e)
        {
            report.Add(new CheckResult("NUnit run of the test fixtures", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
            report.Log.WriteLine(e);
        }
        report.Note($"tests: {Report.TestCounts(report.Tests)} in {total.Elapsed.TotalSeconds:F1} s");
        report.Write(o.OutDir, header);
        int failures = report.Failures;
        return failures > 0 ? 1 : noDevice ? NoDevice : 0;
    }

    /// <summary>
    /// The <c>[TestFixture("<paramref name="backend"/>")]</c> cases in a child process, this same bundle run with <c>--tests</c>
    /// into DIR/tests: a test that crashes the process, hangs, or leaves the CUDA context broken (a sticky error) cannot take the
    /// rest of this run with it. The child keeps to <paramref name="timeLimit"/> less a margin; past it and a grace period it is
    /// killed, and the cases it finished (its tests.tsv, rewritten after each case) still count.
    /// </summary>
    private static void RunTestFixturesInAChildProcess(Report report, string outDir, TimeSpan timeLimit, string backend, string? fixture)
    {
        string childOut = Path.Combine(outDir, "tests");
        string fixtures = $"[TestFixture(\"{backend}\")] fixtures of tests/{(fixture is null ? "" : $" whose name contains '{fixture}'")}";
        report.TestRun = $"every case of the {fixtures}, run by a `gpu-check --tests` process through NUnit's framework API; tests.tsv lists each, " +
                         "tests/ holds that process's own summary";
        if (typeof(Program).Assembly.GetManifestResourceInfo(BackendFixtureRunner.EmbeddedTestAssembly) is null || Environment.ProcessPath is not { } self)
        {
            BackendFixtureRunner.LoadEmbeddedTestAssembly(out string missing);
            report.Add(new CheckResult($"[TestFixture(\"{backend}\")] cases", 0, double.NaN, double.NaN, "", missing));
            return;
        }
        const double MarginSeconds = 10, GraceSeconds = 20;
        string budget = Math.Max(timeLimit.TotalSeconds - MarginSeconds, 1).ToString("F0", CultureInfo.InvariantCulture);
        List<string> arguments = ["--tests", "--backend", backend, "--out", childOut, "--budget", budget];
        if (fixture is not null) arguments.AddRange(["--fixture", fixture]);
        var info = new ProcessStartInfo(self, arguments)
        {
            RedirectStandardOutput = true, RedirectStandardError = true,
        };
        using var child = Process.Start(info) ?? throw new InvalidOperationException($"could not start {self}");
        child.OutputDataReceived += (_, e) => { if (e.Data is not null) report.Log.WriteLine(e.Data); };
        child.ErrorDataReceived += (_, e) => { if (e.Data is not null) report.Log.WriteLine(e.Data); };
        child.BeginOutputReadLine();
        child.BeginErrorReadLine();
        string? killed = null;
        if (!child.WaitForExit(timeLimit + TimeSpan.FromSeconds(GraceSeconds)))
        {
            child.Kill(entireProcessTree: true);
            killed = $"killed {timeLimit.TotalSeconds + GraceSeconds:F0} s after it started (a case did not finish)";
        }
        child.WaitForExit();   // also drains the redirected output
        string table = Path.Combine(childOut, "tests.tsv");
        var cases = File.Exists(table) ? File.ReadLines(table).Skip(1).Select(TestCaseResult.FromTableRow).OfType<TestCaseResult>().ToList() : [];
        report.AddWithoutLogging(cases);
        string how = killed ?? $"exit code {child.ExitCode}";
        report.Note($"test fixtures: {Report.TestCounts(cases)} ({how}; {childOut})");
        // 0: all passed, 1: a case failed (in the table), 3: no CUDA device (every case skipped with the reason)
        if (killed is not null || child.ExitCode is not (0 or 1 or NoDevice))
            report.Add(new CheckResult($"[TestFixture(\"{backend}\")] test process", cases.Count, double.NaN, double.NaN, "",
                                       $"the gpu-check --tests process {how} after {cases.Count} cases; the log above has its output"));
    }

    private static int Finish(Report report)
    {
        int failedChecks = report.Checks.Count(c => !c.Passed);
        report.Log.WriteLine($"{report.Checks.Count - failedChecks} passed, {failedChecks} failed" +
                             (report.TestRun is null ? "" : $"; tests: {Report.TestCounts(report.Tests)}"));
        return report.Failures == 0 ? 0 : 1;
    }

    /// <summary>Free and total device memory as the driver sees it, in the context ILGPU made current on this thread.</summary>
    private static void NoteFreeMemory(Report report, CudaAccelerator accelerator)
    {
        try
        {
            var (free, total) = CudaDriver.MemoryInfo();
            report.Note($"{accelerator.Name}: {free / (1024.0 * 1024 * 1024):F1} of {total / (1024.0 * 1024 * 1024):F1} GiB free");
        }
        catch (Engine.Cuda.CudaException e)
        {
            report.Note($"free device memory unknown: {e.Message}");
        }
    }

    private static string NvrtcVersionText()
    {
        var (major, minor) = Nvrtc.Version();
        return $"{major}.{minor}";
    }
}
