using System.Text.Json;
using DistAlign.Alignment.Experiments;
using DistAlign.Cli;

namespace DistAlign.Tests.Cli;

/// <summary>
/// <c>distalign demo --quick</c> end to end (the CI run): the report folder's structure and every number finite, a rerun
/// reproducing every number bit for bit, the baselines' KL to themselves being 0; and the experiment commands' input checks.
/// The quick run (about 5 s on 2 cores) is made once per fixture and shared by the tests that read its report.
/// </summary>
public class DemoCliTests : CliTestBase
{
    private static readonly string[] Methods = ["RLHF (PPO)", "Reverse KL (PPO)", "DPO", "PMLE", "Distillation", "REBEL"];
    private static readonly string[] QuickDemo = ["demo", "--quick", "--threads", "2", "--seed", "1", "--train", "full"];

    /// <summary>A finished <c>demo --quick</c>: its exit code, console output and report folder.</summary>
    private sealed record QuickRun(int ExitCode, string Output, string Error, string OutDir);

    private QuickRun? sharedRun;
    private string? sharedDirectory;

    /// <summary>The fixture's quick run, made on first use (its own console capture, its own folder).</summary>
    private QuickRun SharedQuickRun()
    {
        if (sharedRun is null)
        {
            sharedDirectory = Directory.CreateTempSubdirectory("distalign-demo-").FullName;
            sharedRun = RunQuickDemo(Path.Combine(sharedDirectory, "demo"));
        }
        return sharedRun;
    }

    [OneTimeTearDown]
    public void RemoveTheSharedRun()
    {
        if (sharedDirectory is not null) Directory.Delete(sharedDirectory, recursive: true);
    }

    private static QuickRun RunQuickDemo(string outDir)
    {
        var (savedOut, savedError) = (Console.Out, Console.Error);
        var output = new StringWriter();   // not disposed: Spectre.Console may keep the writer it first saw
        var error = new StringWriter();
        Console.SetOut(output);
        Console.SetError(error);
        var watch = System.Diagnostics.Stopwatch.StartNew();
        int code;
        try
        {
            code = Program.Main([.. QuickDemo, "--out", outDir]);
        }
        finally
        {
            Console.SetOut(savedOut);
            Console.SetError(savedError);
        }
        TestContext.Out.WriteLine($"demo --quick: {watch.Elapsed.TotalSeconds:F1} s");
        return new QuickRun(code, output.ToString(), error.ToString(), outDir);
    }

    [Test]
    public void QuickDemoWritesACompleteReport()
    {
        var run = SharedQuickRun();
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Error);
        string outDir = run.OutDir;
        Assert.That(run.Output, Does.Contain("KL(π*‖π0)").And.Contain("report:"));

        string md = File.ReadAllText(Path.Combine(outDir, DemoReport.MarkdownFileName));
        foreach (var section in new[] { "## Task", "## π0", "## Reward model", "## Results", "### n = 64", "## Plots" })
            Assert.That(md, Does.Contain(section), $"report.md section {section}");
        Assert.That(md, Does.Contain("KL(π*‖π0) per response").And.Contain("mean |P*(a ≻ b) − ½|"), "the task's difficulty is printed");
        foreach (var m in Methods) Assert.That(md, Does.Contain($"| {m} |"), m);

        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, DemoReport.JsonFileName)));
        var root = doc.RootElement;
        AssertEveryNumberFinite(root, "report.json");
        Assert.That(root.GetProperty("pi0").GetProperty("cached").GetBoolean(), Is.False);
        foreach (var key in new[] { "kl_target_pi0", "kl_target_pi0_se", "tau", "gamma", "response_tokens" })
            Assert.That(root.GetProperty("task").TryGetProperty(key, out _), Is.True, $"task.{key}");
        foreach (var baseline in new[] { "pi0", "pi_star" })
            AssertMetrics(root.GetProperty("baselines").GetProperty(baseline), baseline);
        var size = root.GetProperty("sizes")[0];
        Assert.That(size.GetProperty("n").GetInt32(), Is.EqualTo(64));
        var methods = size.GetProperty("methods");
        Assert.That(methods.EnumerateObject().Select(p => p.Name), Is.EqualTo(Methods));
        foreach (var m in methods.EnumerateObject())
        {
            AssertMetrics(m.Value.GetProperty("metrics"), m.Name);
            Assert.That(m.Value.GetProperty("loss_curve").GetArrayLength(), Is.EqualTo(DemoSettings.Quick.Steps), $"{m.Name} loss curve");
            Assert.That(m.Value.GetProperty("settings").GetString(), Is.Not.Empty, m.Name);
        }

        foreach (var png in new[] { "forward_kl.png", "reward_kl.png" }.Concat(Enum.GetValues<DemoMethod>().Select(DemoPlots.LossCurveFile)))
        {
            var bytes = File.ReadAllBytes(Path.Combine(outDir, png));
            Assert.That(bytes.Take(8), Is.EqualTo(new byte[] { 0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A }), $"{png} is a PNG");
            Assert.That(System.Text.Encoding.ASCII.GetString(bytes, 12, 4), Is.EqualTo("IHDR"), png);
            int width = (bytes[16] << 24) | (bytes[17] << 16) | (bytes[18] << 8) | bytes[19];
            Assert.That(width, Is.EqualTo(900), $"{png} width");
            Assert.That(md, Does.Contain($"]({png})"), $"report.md shows {png}");
        }
    }

    /// <summary>
    /// Determinism (same seed, same device, same thread count ⇒ the same numbers): a second quick run, in its own folder so
    /// π0 is pretrained again rather than read from the first run's cache, writes a report.json whose every number — π0's
    /// loss, the task, the reward model, each method's metrics and loss curve — is bit-identical to the first run's. Only
    /// the timings and π0's cache path may differ. (A second run costs ~5 s, so the whole run is repeated.)
    /// </summary>
    [Test]
    public void QuickDemoRerunReproducesEveryNumberBitForBit()
    {
        var first = SharedQuickRun();
        Assert.That(first.ExitCode, Is.EqualTo(0), first.Error);
        var second = RunQuickDemo(Path.Combine(TestDirectory, "rerun"));
        Assert.That(second.ExitCode, Is.EqualTo(0), second.Error);

        using var a = JsonDocument.Parse(File.ReadAllText(Path.Combine(first.OutDir, DemoReport.JsonFileName)));
        using var b = JsonDocument.Parse(File.ReadAllText(Path.Combine(second.OutDir, DemoReport.JsonFileName)));
        Assert.That(b.RootElement.GetProperty("pi0").GetProperty("cached").GetBoolean(), Is.False, "the rerun pretrained π0 itself");
        var numbers = AssertSameReport(a.RootElement, b.RootElement, "report.json");
        Assert.That(numbers, Is.GreaterThan(200), "numbers compared (266 today: settings, task, baselines, reward model, six methods with their loss curves)");
    }

    /// <summary>
    /// Each baseline row measured against itself: π*'s KL(π*‖π̂) and KL(π̂‖π*) with π̂ = π*, and π0's KL(π̂‖π0) with π̂ = π0.
    /// Each is a mean over the same responses of ln p(y) − ln p(y) for one model scored twice, so 0 but for rounding: the
    /// π* rows come out exactly 0; π0's two scorings (the policy's, and π0's log-probs beside π*'s in the task) differ by
    /// fp32 rounding of per-token log-probs of size ~6 (ulp 4.8e-7), summed over 8 tokens and averaged over 32 responses,
    /// observed −3.4e-7, −2.5e-7 and −1.1e-7 on the Vector512, AVX2 and Vector128 paths. A real KL here is ~0.5–1 nat.
    /// </summary>
    [Test]
    public void QuickDemoBaselinesHaveZeroKlToThemselves()
    {
        var run = SharedQuickRun();
        Assert.That(run.ExitCode, Is.EqualTo(0), run.Error);
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(run.OutDir, DemoReport.JsonFileName)));
        var baselines = doc.RootElement.GetProperty("baselines");
        double Metric(string row, string name) => baselines.GetProperty(row).GetProperty(name).GetDouble();
        Assert.That(Metric("pi_star", "forward_kl"), Is.EqualTo(0).Within(1e-6), "π* row: KL(π*‖π*)");
        Assert.That(Metric("pi_star", "reverse_kl"), Is.EqualTo(0).Within(1e-6), "π* row: KL(π*‖π*) on its own samples");
        Assert.That(Metric("pi0", "kl_to_pi0"), Is.EqualTo(0).Within(1e-6), "π0 row: KL(π0‖π0)");
        // The same quantities between different models are not 0, so the checks above are not vacuous.
        Assert.That(Metric("pi0", "forward_kl"), Is.GreaterThan(1e-2), "π0 row: KL(π*‖π0)");
        Assert.That(Metric("pi_star", "kl_to_pi0"), Is.GreaterThan(1e-2), "π* row: KL(π*‖π0)");
    }

    /// <summary>
    /// With a GPU (pretended), demo and experiment lm choose CUDA under auto; flash attention is refused for the quick π0's head size
    /// before any device is opened. (The experiment itself on a device: <see cref="Cuda.DemoOnDeviceTests"/>.)
    /// </summary>
    [Test]
    public void DemoAndExperimentLmChooseCudaWithAGpuAndRefuseFlashAttentionForAHeadSizeOtherThan64()
    {
        PretendAnH200();
        foreach (string[] command in new[] { new[] { "demo" }, ["experiment", "lm"] })
        {
            Output.GetStringBuilder().Clear();
            Error.GetStringBuilder().Clear();
            Assert.That(Program.Main([.. command, "--quick", "--gpu-attention", "flash", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
            Assert.That(Output.ToString(), Does.StartWith("device: cuda (NVIDIA H200"), string.Join(' ', command));
            Assert.That(Error.ToString(), Does.Contain("--gpu-attention flash needs head size 64; the model has 64 channels over 2 heads (head size 32); use --gpu-attention materialized"));
        }
    }

    [Test]
    public void BadSizesAndSettingsExitWithUsageErrors()
    {
        Assert.That(Program.Main(["experiment", "lm", "--n", "64,x", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("'x' is not a number of pairs"));
        Assert.That(Program.Main(["demo", "--quick", "--n", "0", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(Program.Main(["demo", "--quick", "--tau", "-1", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(ExperimentLmCommand.ParseSizes("1024, 64,256,64"), Is.EqualTo(new[] { 64, 256, 1024 }));
        Assert.That(Program.Main(["demo", "--quick", "--train", "lora2", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--train must be full, tilt or head-lora (got 'lora2')"));
        Assert.That(Program.Main(["demo", "--quick", "--adapter-rank", "2", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("--adapter-rank goes with --train head-lora"));
        Assert.That(Program.Main(["demo", "--quick", "--methods", "pmle,ppo", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("'ppo' is not a method"));
        Assert.That(DemoOptions.ParseMethods("pmle, reverse-kl,dpo"), Is.EqualTo(new[] { DemoMethod.ReverseKl, DemoMethod.Dpo, DemoMethod.Pmle }));
        Assert.That(DemoOptions.ParseGrid("0.25, 1,4"), Is.EqualTo(new[] { 0.25, 1, 4 }));
        Assert.That(DemoOptions.ParseGrid("none"), Is.Empty);
        Assert.That(Program.Main(["demo", "--quick", "--grid", "1,-2", "--out", TestDirectory]), Is.EqualTo(Program.UsageError));
        Assert.That(Error.ToString(), Does.Contain("'-2' is not a positive multiplier"));
    }

    /// <summary>
    /// <c>demo --quick</c> (the tilt class is the default): every method trains a logit offset over the frozen π0, once per value of its key
    /// parameter; the report names the class, and per method exactly one run is the honest pick (lowest held-out preference
    /// loss, which the report shows) and one the oracle's (lowest KL(π*‖π̂)).
    /// </summary>
    [Test]
    public void QuickDemoInTheTiltClassTunesEveryMethodAndReportsBothPicks()
    {
        string outDir = Path.Combine(TestDirectory, "tilt");
        Assert.That(Program.Main(["demo", "--quick", "--threads", "2", "--seed", "1", "--out", outDir]), Is.EqualTo(0), Error.ToString());   // tilt is the default
        string md = File.ReadAllText(Path.Combine(outDir, DemoReport.MarkdownFileName));
        Assert.That(md, Does.Contain("What trains: the tilt class").And.Contain("| method | parameter | value | held-out loss |"));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, DemoReport.JsonFileName)));
        var root = doc.RootElement;
        AssertEveryNumberFinite(root, "report.json");
        Assert.That(root.GetProperty("settings").GetProperty("train").GetString(), Is.EqualTo("tilt"));
        var methods = root.GetProperty("sizes")[0].GetProperty("methods");
        Assert.That(methods.EnumerateObject().Select(p => p.Name), Is.EqualTo(Methods));
        foreach (var m in methods.EnumerateObject())
        {
            var tuning = m.Value.GetProperty("tuning").EnumerateArray().ToList();
            Assert.That(tuning, Has.Count.EqualTo(3), m.Name);
            Assert.That(tuning.Count(c => c.GetProperty("honest_pick").GetBoolean()), Is.EqualTo(1), $"{m.Name}: one honest pick");
            Assert.That(tuning.Count(c => c.GetProperty("oracle_pick").GetBoolean()), Is.EqualTo(1), $"{m.Name}: one oracle pick");
            var honest = tuning.Single(c => c.GetProperty("honest_pick").GetBoolean());
            Assert.That(honest.GetProperty("validation_loss").GetDouble(), Is.EqualTo(tuning.Min(c => c.GetProperty("validation_loss").GetDouble())), m.Name);
            Assert.That(m.Value.GetProperty("validation_loss").GetDouble(), Is.EqualTo(honest.GetProperty("validation_loss").GetDouble()), m.Name);
            var oracle = tuning.Single(c => c.GetProperty("oracle_pick").GetBoolean());
            Assert.That(oracle.GetProperty("metrics").GetProperty("forward_kl").GetDouble(),
                Is.EqualTo(tuning.Min(c => c.GetProperty("metrics").GetProperty("forward_kl").GetDouble())), m.Name);
        }
    }

    /// <summary>
    /// <c>demo --quick --train head-lora</c>: the methods train the offset and a rank-r head adapter over the frozen π0; the report
    /// names the class and its rank, and every number is finite.
    /// </summary>
    [Test]
    public void QuickDemoInTheHeadLoraClassRunsAndSaysSo()
    {
        string outDir = Path.Combine(TestDirectory, "lora");
        Assert.That(Program.Main(["demo", "--quick", "--threads", "2", "--train", "head-lora", "--adapter-rank", "2", "--methods", "pmle,reverse-kl,dpo",
                                  "--grid", "1", "--out", outDir]), Is.EqualTo(0), Error.ToString());
        string md = File.ReadAllText(Path.Combine(outDir, DemoReport.MarkdownFileName));
        Assert.That(md, Does.Contain("What trains: the head-LoRA class").And.Contain("rank-2"));
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, DemoReport.JsonFileName)));
        AssertEveryNumberFinite(doc.RootElement, "report.json");
        var settings = doc.RootElement.GetProperty("settings");
        Assert.That(settings.GetProperty("train").GetString(), Is.EqualTo("head-lora"));
        Assert.That(settings.GetProperty("adapter_rank").GetInt32(), Is.EqualTo(2));
    }

    /// <summary>
    /// Several seeds: each seed's pairs and training are their own (different numbers), and the report's across-seeds
    /// figure of a method is the mean and standard error of the per-seed values it lists.
    /// </summary>
    [Test]
    public void SeedsAreSummarisedAsMeanAndStandardError()
    {
        string outDir = Path.Combine(TestDirectory, "seeds");
        Assert.That(Program.Main(["demo", "--quick", "--threads", "2", "--seeds", "2", "--methods", "pmle,dpo", "--grid", "1", "--out", outDir]),
            Is.EqualTo(0), Error.ToString());
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, DemoReport.JsonFileName)));
        var size = doc.RootElement.GetProperty("sizes")[0];
        var seeds = size.GetProperty("seeds").EnumerateArray().ToList();
        Assert.That(seeds.Select(s => s.GetProperty("seed").GetInt32()), Is.EqualTo(new[] { 1, 2 }));
        foreach (var method in new[] { "PMLE", "DPO" })
        {
            var perSeed = seeds.Select(s => s.GetProperty("methods").GetProperty(method).GetProperty("forward_kl").GetDouble()).ToArray();
            Assert.That(perSeed[0], Is.Not.EqualTo(perSeed[1]), $"{method}: the seeds drew different pairs");
            var across = size.GetProperty("across_seeds").GetProperty(method);
            double mean = perSeed.Average(), se = Math.Abs(perSeed[0] - perSeed[1]) / 2;   // n = 2: sd/√2 = |a − b|/2
            Assert.That(across.GetProperty("forward_kl").GetDouble(), Is.EqualTo(mean).Within(1e-12), method);
            Assert.That(across.GetProperty("forward_kl_se").GetDouble(), Is.EqualTo(se).Within(1e-12), method);
            Assert.That(across.GetProperty("seeds").GetInt32(), Is.EqualTo(2));
        }
        Assert.That(File.ReadAllText(Path.Combine(outDir, DemoReport.MarkdownFileName)), Does.Contain("## Across 2 seeds of pairs and training"));
    }

    /// <summary>
    /// <c>experiment lm</c> across sizes with seeds: one block per n, the across-seeds table, a slope per method fitted over the
    /// larger half of the sizes (here 2 points: a slope without a standard error), and the forward-KL-against-n plot.
    /// </summary>
    [Test]
    public void ExperimentLmFitsSlopesOverTheLargerSizes()
    {
        string outDir = Path.Combine(TestDirectory, "lm");
        Assert.That(Program.Main(["experiment", "lm", "--quick", "--threads", "2", "--n", "16,32,48,64", "--seeds", "2", "--methods", "pmle,dpo",
            "--grid", "1", "--out", outDir]), Is.EqualTo(0), Error.ToString());
        using var doc = JsonDocument.Parse(File.ReadAllText(Path.Combine(outDir, DemoReport.JsonFileName)));
        var root = doc.RootElement;
        Assert.That(root.GetProperty("sizes").EnumerateArray().Select(s => s.GetProperty("n").GetInt32()), Is.EqualTo(new[] { 16, 32, 48, 64 }));
        Assert.That(root.GetProperty("title").GetString(), Does.Not.Contain("partial"), "the last write is the whole run's");
        foreach (var method in new[] { "PMLE", "DPO" })
        {
            var slope = root.GetProperty("slopes").GetProperty(method);
            Assert.That(slope.GetProperty("points").GetInt32(), Is.EqualTo(2), method);
            Assert.That((slope.GetProperty("n_min").GetInt32(), slope.GetProperty("n_max").GetInt32()), Is.EqualTo((48, 64)), method);
            // two points: the slope is the line through them
            double kl48 = root.GetProperty("sizes")[2].GetProperty("across_seeds").GetProperty(method).GetProperty("forward_kl").GetDouble();
            double kl64 = root.GetProperty("sizes")[3].GetProperty("across_seeds").GetProperty(method).GetProperty("forward_kl").GetDouble();
            Assert.That(slope.GetProperty("slope").GetDouble(), Is.EqualTo(Math.Log(kl64 / kl48) / Math.Log(64.0 / 48)).Within(1e-9), method);
        }
        Assert.That(File.Exists(Path.Combine(outDir, "forward_kl_vs_n.png")), Is.True);
        Assert.That(File.ReadAllText(Path.Combine(outDir, DemoReport.MarkdownFileName)), Does.Contain("| method | slope ± SE | n range | points |"));
    }

    /// <summary>Keys of report.json that are wall-clock timings, or where π0 was cached: allowed to differ between runs.</summary>
    private static readonly HashSet<string> RunSpecific = ["wall_seconds", "pretraining_seconds", "seconds", "path"];

    /// <summary>
    /// Asserts <paramref name="b"/> has the structure and values of <paramref name="a"/>, numbers bit for bit, apart from
    /// <see cref="RunSpecific"/> keys; returns how many numbers were compared.
    /// </summary>
    private static int AssertSameReport(JsonElement a, JsonElement b, string path)
    {
        Assert.That(b.ValueKind, Is.EqualTo(a.ValueKind), path);
        switch (a.ValueKind)
        {
            case JsonValueKind.Object:
            {
                Assert.That(b.EnumerateObject().Select(p => p.Name), Is.EqualTo(a.EnumerateObject().Select(p => p.Name)), $"{path}: keys");
                int count = 0;
                foreach (var p in a.EnumerateObject())
                    if (!RunSpecific.Contains(p.Name)) count += AssertSameReport(p.Value, b.GetProperty(p.Name), path + "." + p.Name);
                return count;
            }
            case JsonValueKind.Array:
            {
                Assert.That(b.GetArrayLength(), Is.EqualTo(a.GetArrayLength()), $"{path}: length");
                int count = 0;
                for (int i = 0; i < a.GetArrayLength(); i++) count += AssertSameReport(a[i], b[i], $"{path}[{i}]");
                return count;
            }
            case JsonValueKind.Number:
                double x = a.GetDouble(), y = b.GetDouble();
                if (BitConverter.DoubleToInt64Bits(x) != BitConverter.DoubleToInt64Bits(y))
                    Assert.Fail($"{path}: {x:R} on the first run, {y:R} on the rerun");
                return 1;
            default:
                Assert.That(b.GetRawText(), Is.EqualTo(a.GetRawText()), path);
                return 0;
        }
    }

    private static void AssertMetrics(JsonElement metrics, string what)
    {
        foreach (var name in DemoReport.MetricNames)
            Assert.That(metrics.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && double.IsFinite(v.GetDouble()), Is.True, $"{what}: {name}");
    }

    private static void AssertEveryNumberFinite(JsonElement e, string path)
    {
        switch (e.ValueKind)
        {
            case JsonValueKind.Object:
                foreach (var p in e.EnumerateObject()) AssertEveryNumberFinite(p.Value, path + "." + p.Name);
                break;
            case JsonValueKind.Array:
                int i = 0;
                foreach (var x in e.EnumerateArray()) AssertEveryNumberFinite(x, $"{path}[{i++}]");
                break;
            case JsonValueKind.Null:
                Assert.Fail($"{path} is null (a non-finite number)");
                break;
            case JsonValueKind.Number:
                Assert.That(double.IsFinite(e.GetDouble()), Is.True, path);
                break;
        }
    }
}
