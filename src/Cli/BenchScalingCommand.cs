using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Spectre.Console;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign bench scaling</c>: data-parallel strong scaling on this machine. The same global batch is stepped by one
/// process with N threads, one process with 1 thread, N ranks × 1 thread (Open MPI on loopback) and N ranks × 1 thread
/// with the AdamW state sharded (ZeRO-1); each configuration runs as its own <c>distalign bench step</c> process.
/// </summary>
internal static class BenchScalingCommand
{
    public static Command Create()
    {
        var workload = new Option<string>("--workload") { DefaultValueFactory = _ => "w2", Description = "w1 or w2." };
        var ranks = new Option<int>("--ranks") { DefaultValueFactory = _ => 2, Description = "N: ranks of the data-parallel runs, threads of the one-process run." };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 3, Description = "Untimed steps first." };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 10, Description = "Timed steps per run (its median is the run's time)." };
        var rounds = new Option<int>("--rounds") { DefaultValueFactory = _ => 3, Description = "Rounds over the four configurations, alternating (the median of a configuration's runs is reported, with their range)." };
        var command = new Command("scaling", "Strong scaling of a training step: 1 process × N threads, 1 × 1, N ranks × 1 thread, and N × 1 with ZeRO-1.")
        {
            workload, ranks, warmup, steps, rounds,
        };
        command.SetAction(parse =>
        {
            int n = parse.GetValue(ranks);
            if (n < 2) throw new CliUsageException($"--ranks must be at least 2 (got {n})");
            string name = parse.GetValue(workload)!;
            string[] common = ["bench", "step", "--workload", name, "--warmup", CliErrors.NonNegative(parse.GetValue(warmup), "--warmup").ToString(CultureInfo.InvariantCulture),
                               "--steps", CliErrors.Positive(parse.GetValue(steps), "--steps").ToString(CultureInfo.InvariantCulture), "--device", "cpu"];
            var runs = new (string Label, int Ranks, int Threads, bool Zero1)[]
            {
                ($"1 process × {n} threads", 1, n, false), ("1 process × 1 thread", 1, 1, false),
                ($"{n} ranks × 1 thread", n, 1, false), ($"{n} ranks × 1 thread, ZeRO-1", n, 1, true),
            };
            int roundCount = CliErrors.Positive(parse.GetValue(rounds), "--rounds");
            // Rounds alternate the configurations, so that a slow spell of a shared machine does not fall on one of them only.
            var results = runs.Select(_ => new List<JsonElement>()).ToArray();
            string folder = Directory.CreateTempSubdirectory("distalign-scaling-").FullName;
            bool complete = false;
            try
            {
                for (int round = 1; round <= roundCount; round++)
                    for (int c = 0; c < runs.Length; c++)
                    {
                        var (label, r, t, zero1) = runs[c];
                        string json = Path.Combine(folder, $"round-{round}-run-{c}.json"), log = Path.ChangeExtension(json, ".log");
                        string[] args = [.. common, "--threads", t.ToString(CultureInfo.InvariantCulture), "--json", json, .. zero1 ? ["--zero1"] : Array.Empty<string>()];
                        Console.WriteLine($"round {round}/{roundCount}: {label} …");
                        int exit = MpiLauncher.Run(r, args, log);
                        if (exit != 0 || !File.Exists(json))
                            throw new InvalidOperationException($"{label}: bench step exited with {exit}; its output: {log}");
                        using var doc = JsonDocument.Parse(File.ReadAllText(json));
                        results[c].Add(doc.RootElement[0].Clone());
                    }
                complete = true;
            }
            finally
            {
                if (complete) Directory.Delete(folder, recursive: true);
            }
            Print(name, n, runs.Select(x => x.Label).ToArray(), results);
            return 0;
        });
        return command;
    }

    private static void Print(string workload, int n, string[] labels, List<JsonElement>[] runs)
    {
        static double Median(IEnumerable<double> values)
        {
            var v = values.Order().ToArray();
            return v.Length % 2 == 1 ? v[v.Length / 2] : 0.5 * (v[v.Length / 2 - 1] + v[v.Length / 2]);
        }
        double Time(int c) => Median(runs[c].Select(r => r.GetProperty("median_ms").GetDouble()));
        string Range(int c) => $"{runs[c].Min(r => r.GetProperty("median_ms").GetDouble()):F1}–{runs[c].Max(r => r.GetProperty("median_ms").GetDouble()):F1}";
        double Op(int c, string op) => Median(runs[c].Select(r => r.GetProperty("ops_ms").TryGetProperty(op, out var v) ? v.GetDouble() : 0));
        double Planned(int c) => runs[c][0].GetProperty("planned_bytes").GetInt64() / 1048576.0;
        double Rss(int c) => runs[c].Max(r => r.GetProperty("peak_rss_bytes").GetInt64()) / 1048576.0;
        var table = new Table().AddColumn("configuration").AddColumn(new TableColumn("ms/step").RightAligned()).AddColumn(new TableColumn("runs' range").RightAligned())
            .AddColumn(new TableColumn("all-reduce ms").RightAligned()).AddColumn(new TableColumn("all-gather ms").RightAligned())
            .AddColumn(new TableColumn("planned MiB/rank").RightAligned()).AddColumn(new TableColumn("peak RSS MiB/rank").RightAligned());
        for (int c = 0; c < runs.Length; c++)
            table.AddRow(labels[c], Time(c).ToString("F1", CultureInfo.InvariantCulture), Range(c), Op(c, "all-reduce").ToString("F1", CultureInfo.InvariantCulture),
                Op(c, "all-gather").ToString("F1", CultureInfo.InvariantCulture), Planned(c).ToString("F1", CultureInfo.InvariantCulture), Rss(c).ToString("F0", CultureInfo.InvariantCulture));
        Console.WriteLine($"{workload.ToUpperInvariant()}, the same global batch in every configuration; per configuration the median of {runs[0].Count} runs' median step times:");
        AnsiConsole.Write(table);
        // Strong scaling: N ranks should take 1/N of one rank's time; against threads, the same cores used the other way.
        Console.WriteLine($"scaling efficiency 1 → {n} ranks (1 thread each): T(1×1) / ({n} · T({n}×1)) = {Time(1):F1} / ({n} · {Time(2):F1}) = {Time(1) / (n * Time(2)):F2}");
        Console.WriteLine($"{n} ranks × 1 thread against 1 process × {n} threads: T(1×{n}) / T({n}×1) = {Time(0) / Time(2):F2} (above 1: the ranks are faster)");
        Console.WriteLine($"ZeRO-1: planned {Planned(3):F1} MiB per rank against {Planned(2):F1} MiB with replicated moments; step {Time(3):F1} ms against {Time(2):F1} ms");
    }
}
