using System.Text.Json;
using DistAlign.Alignment.Experiments;
using DistAlign.Cli;

namespace DistAlign.Tests.Cli;

/// <summary>
/// <c>distalign demo --quick</c> end to end (the CI run): the report folder's structure and every number finite; and the
/// experiment commands' input checks.
/// </summary>
public class DemoCliTests : CliTestBase
{
    private static readonly string[] Methods = ["RLHF (PPO)", "Reverse KL (PPO)", "DPO", "PMLE", "Distillation", "REBEL"];

    [Test]
    public void QuickDemoWritesACompleteReport()
    {
        string outDir = Path.Combine(TestDirectory, "demo");
        var watch = System.Diagnostics.Stopwatch.StartNew();
        Assert.That(Program.Main(["demo", "--quick", "--out", outDir, "--threads", "2"]), Is.EqualTo(0), Error.ToString());
        TestContext.Out.WriteLine($"demo --quick: {watch.Elapsed.TotalSeconds:F1} s");
        string console = Output.ToString();
        Assert.That(console, Does.Contain("KL(π*‖π0)").And.Contain("report:"));

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
