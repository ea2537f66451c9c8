using System.CommandLine;
using System.Globalization;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Policies;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign experiment lm --n 64,256,1024</c>: the demo's language-model known-target experiment at several
/// dataset sizes (one π0, one π*, one evaluator; pairs, reward model and the six methods per n), to show the trend in n.
/// </summary>
internal static class ExperimentLmCommand
{
    public static Command Create()
    {
        var output = new Option<DirectoryInfo>("--out") { Description = "Report folder.", DefaultValueFactory = _ => new DirectoryInfo(Path.Combine("runs", "experiment-lm")) };
        var cache = new Option<DirectoryInfo>("--pi0-cache") { Description = "Where π0 is cached (shared with the demo by default).", DefaultValueFactory = _ => new DirectoryInfo(Path.Combine("runs", "demo", "pi0")) };
        var sizes = new Option<string?>("--n") { Description = "Comma-separated numbers of preference pairs (default 64,256,1024; with --train tilt 256,1024,4096,16384,65536)." };
        var quick = new Option<bool>("--quick") { Description = "The CI-sized π0, prompts and steps." };
        var common = new DemoOptions();
        var command = new Command("lm", "The language-model known-target experiment at several n (trend of every method's KL to π* in n).")
        {
            output, cache, sizes, quick,
        };
        common.AddTo(command);
        command.SetAction(parse =>
        {
            using var device = common.OpenDevice(parse, parse.GetValue(quick));
            var settings = common.Read(parse, parse.GetValue(quick), onDevice: device is not null);
            bool tilt = settings.FrozenBackbone;
            var ns = ParseSizes(parse.GetValue(sizes) ?? (tilt && !parse.GetValue(quick) ? "256,1024,4096,16384,65536" : "64,256,1024"));
            // the sweep's default: three seeds of pairs and training in the tilt class (the slopes need the spread)
            if (tilt && parse.GetValue(common.Seeds) is null) settings = settings with { Seeds = 3 };
            string outDir = parse.GetValue(output)!.FullName;
            string line = "distalign experiment lm" + string.Concat(Environment.GetCommandLineArgs().Skip(1).SkipWhile(a => a != "lm").Skip(1).Select(a => " " + a));
            return DemoRunner.Run("DistAlign: known-target LM experiment across n", line, settings with { Pairs = ns[^1] }, ns, outDir,
                parse.GetValue(cache)!.FullName, device?.Models ?? GptDevice.Cpu);
        });
        return command;
    }

    /// <summary>"64,256,1024" → [64, 256, 1024] (sorted, distinct, each ≥ 2).</summary>
    public static int[] ParseSizes(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        if (parts.Length == 0) throw new CliUsageException("--n needs at least one size, e.g. --n 64,256,1024");
        var sizes = new List<int>();
        foreach (var p in parts)
        {
            if (!int.TryParse(p, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 2)
                throw new CliUsageException($"--n: '{p}' is not a number of pairs ≥ 2 (expected e.g. --n 64,256,1024)");
            sizes.Add(n);
        }
        return [.. sizes.Distinct().Order()];
    }
}
