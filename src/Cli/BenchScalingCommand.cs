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
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 10, Description = "Timed steps (the median is reported)." };
        var command = new Command("scaling", "Strong scaling of a training step: 1 process × N threads, 1 × 1, N ranks × 1 thread, and N × 1 with ZeRO-1.")
        {
            workload, ranks, warmup, steps,
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
            var results = new List<JsonElement>();
            string folder = Directory.CreateTempSubdirectory("distalign-scaling-").FullName;
            try
            {
                foreach (var (label, r, t, zero1) in runs)
                {
                    string json = Path.Combine(folder, $"run-{results.Count}.json");
                    string[] args = [.. common, "--threads", t.ToString(CultureInfo.InvariantCulture), "--json", json, .. zero1 ? ["--zero1"] : Array.Empty<string>()];
                    Console.WriteLine($"{label} …");
                    int exit = MpiLauncher.Run(r, args, Path.Combine(folder, $"run-{results.Count}.log"));
                    if (exit != 0 || !File.Exists(json))
                        throw new InvalidOperationException($"{label}: bench step exited with {exit}; its output: {Path.Combine(folder, $"run-{results.Count}.log")}");
                    using var doc = JsonDocument.Parse(File.ReadAllText(json));
                    results.Add(doc.RootElement[0].Clone());
                }
            }
            finally
            {
                if (results.Count == runs.Length) Directory.Delete(folder, recursive: true);
            }
            Print(name, n, runs.Select(x => x.Label).ToArray(), results);
            return 0;
        });
        return command;
    }

    private static void Print(string workload, int n, string[] labels, List<JsonElement> results)
    {
        double Median(int i) => results[i].GetProperty("median_ms").GetDouble();
        double Op(int i, string op) => results[i].GetProperty("ops_ms").TryGetProperty(op, out var v) ? v.GetDouble() : 0;
        var table = new Table().AddColumn("configuration").AddColumn(new TableColumn("median ms/step").RightAligned())
            .AddColumn(new TableColumn("tokens/s").RightAligned()).AddColumn(new TableColumn("all-reduce ms/step").RightAligned())
            .AddColumn(new TableColumn("all-gather ms/step").RightAligned()).AddColumn(new TableColumn("planned MiB per rank").RightAligned())
            .AddColumn(new TableColumn("peak RSS MiB per rank").RightAligned());
        for (int i = 0; i < results.Count; i++)
            table.AddRow(labels[i], Median(i).ToString("F1", CultureInfo.InvariantCulture),
                results[i].GetProperty("tokens_per_second").GetDouble().ToString("N0", CultureInfo.InvariantCulture),
                Op(i, "all-reduce").ToString("F1", CultureInfo.InvariantCulture), Op(i, "all-gather").ToString("F1", CultureInfo.InvariantCulture),
                (results[i].GetProperty("planned_bytes").GetInt64() / 1048576.0).ToString("F1", CultureInfo.InvariantCulture),
                (results[i].GetProperty("peak_rss_bytes").GetInt64() / 1048576.0).ToString("F0", CultureInfo.InvariantCulture));
        Console.WriteLine($"{workload.ToUpperInvariant()}, the same global batch in every configuration:");
        AnsiConsole.Write(table);
        // Strong scaling: N ranks should take 1/N of one rank's time; against threads, the same cores used the other way.
        double efficiency = Median(1) / (n * Median(2));
        Console.WriteLine($"scaling efficiency 1 → {n} ranks (1 thread each): T(1×1) / ({n} · T({n}×1)) = {Median(1):F1} / ({n} · {Median(2):F1}) = {efficiency:F2}");
        Console.WriteLine($"{n} ranks × 1 thread against 1 process × {n} threads: T(1×{n}) / T({n}×1) = {Median(0) / Median(2):F2} (above 1: the ranks are faster)");
        Console.WriteLine($"ZeRO-1: planned {results[3].GetProperty("planned_bytes").GetInt64() / 1048576.0:F1} MiB per rank against {results[2].GetProperty("planned_bytes").GetInt64() / 1048576.0:F1} MiB unsharded; " +
                          $"step {Median(3):F1} ms against {Median(2):F1} ms");
    }
}
