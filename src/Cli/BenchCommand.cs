using System.CommandLine;
using System.Text.Json;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using Spectre.Console;

namespace DistAlign.Cli;

/// <summary><c>distalign bench step</c>: the whole-training-step harness (W1, W2; with <c>--device cuda</c> also GPT-2 124M at 16 × 1024).</summary>
internal static class BenchCommand
{
    public static Command Create()
    {
        var workloads = new Option<string[]>("--workload") { Description = "w1 (GPT-2 124M, 4×64), w2 (4L/4H/256C/V4096, 8×128) and/or gpt2 (GPT-2 124M, 16×1024; --device cuda); repeatable.", DefaultValueFactory = _ => ["w2"], AllowMultipleArgumentsPerToken = true };
        var peak = new Option<double>("--peak-tflops") { DefaultValueFactory = _ => 989, Description = "With --device cuda: the GPU's dense peak for MFU (default: the H200's bf16, 989 TFLOP/s)." };
        var stepGpu = GpuTrainingOptions.Create();
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 3, Description = "Untimed steps first." };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 10, Description = "Timed steps (the median is reported)." };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var ranks = new Option<int>("--ranks") { Description = "Run as an N-rank data-parallel job (starts mpirun on this machine; each rank takes batch/N rows)." };
        var zero1 = new Option<bool>("--zero1") { Description = "Over several ranks: shard the AdamW moments (ZeRO-1)." };
        var json = new Option<FileInfo?>("--json") { Description = "Also write the measurements as JSON (rank 0)." };
        var step = new Command("step", "Time full training steps (forward + backward + clip + AdamW) with a per-op breakdown.") { workloads, warmup, steps, threads, peak, ranks, zero1, json };
        stepGpu.AddTo(step);
        step.SetAction(parse =>
        {
            int ranksWanted = CliErrors.NonNegative(parse.GetValue(ranks), "--ranks");
            if (ranksWanted > 1 && !MpiProcessGroup.LaunchedByMpirun)
                return MpiLauncher.Run(ranksWanted, WithoutOption(Environment.GetCommandLineArgs().Skip(1), "--ranks"));
            if (ranksWanted > 1 && ranksWanted != Ranks.Group.Size)
                throw new CliUsageException($"--ranks {ranksWanted} under an mpirun job of {Ranks.Group.Size} ranks: drop --ranks or match -np");
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(threads), "--threads");
            var chosen = parse.GetValue(workloads)!.Select(name => name.ToLowerInvariant() switch
            {
                "w1" => StepWorkload.W1,
                "w2" => StepWorkload.W2,
                "gpt2" => StepWorkload.Gpt2,
                _ => throw new CliUsageException($"--workload '{name}': expected w1, w2 or gpt2"),
            }).ToList();
            int warmupSteps = CliErrors.NonNegative(parse.GetValue(warmup), "--warmup"), timedSteps = CliErrors.Positive(parse.GetValue(steps), "--steps");
            var gpuValues = stepGpu.Read(parse);
            double peakFlops = parse.GetValue(peak) * 1e12;
            if (!(peakFlops > 0)) throw new CliUsageException($"--peak-tflops must be > 0 (got {parse.GetValue(peak)})");
            foreach (var workload in chosen) gpuValues.CheckFits(workload.Config);
            // --device cuda: a pretraining step (clip at 1, lr 3e-4) as llm.c's GPU runs, profiled on one extra step; the CPU: the
            // peer's step (no clip, lr 1e-4), profiled over as many extra steps as were timed
            using var device = GpuTrainingOptions.OpenIfChosen(gpuValues, chosen[0].Config);
            bool shard = parse.GetValue(zero1);
            if (shard && device is not null) throw new CliUsageException("--zero1 shards the CPU engine's AdamW state; drop it with --device cuda");
            var measured = new List<StepMeasurement>();
            foreach (var workload in chosen)
            {
                if (device is null && workload.Name == StepWorkload.Gpt2.Name)
                    throw new CliUsageException("--workload gpt2 (16 × 1024 tokens) is a GPU workload: use --device cuda, or w1 on the CPU");
                var m = device is null
                    ? StepBenchmark.Run(GptDevice.Cpu, workload, StepSettings.Peer, Math.Max(1, warmupSteps), timedSteps, profiledSteps: timedSteps,
                                        ranks: Ranks.Group, shardOptimizer: shard)
                    : StepBenchmark.Run(device.Models, workload, StepSettings.Pretraining, Math.Max(1, warmupSteps), timedSteps, profiledSteps: 1,
                                        ranks: Ranks.Group);
                Print(m, device is null ? null : peakFlops);
                measured.Add(m);
            }
            if (parse.GetValue(json) is { } file && Ranks.IsRoot) File.WriteAllText(file.FullName, StepJson(measured));
            return 0;
        });
        var dpoThreads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var dpoSteps = new Option<int>("--steps") { DefaultValueFactory = _ => 10, Description = "Timed steps of each (the median is reported)." };
        var dpo = new Command("dpo", "Time one DPO step (cached reference log-probs) against one SFT step on the same chosen + rejected tokens, W2-sized model.") { dpoThreads, dpoSteps };
        var dpoGpu = GpuTrainingOptions.Create();
        dpoGpu.AddTo(dpo);
        dpo.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(dpoThreads), "--threads");
            var config = StepWorkload.W2.Config;
            // --device cuda: both steps on GptPolicy (each timed step ends with a device synchronisation)
            using var device = GpuTrainingOptions.OpenIfChosen(dpoGpu.Read(parse), config);
            var m = PreferenceStepBenchmark.Run(config, PreferenceStepBenchmark.DpoPairs, PreferenceStepBenchmark.DpoPromptTokens, PreferenceStepBenchmark.DpoResponseTokens,
                warmup: 3, steps: CliErrors.Positive(parse.GetValue(dpoSteps), "--steps"), device: device?.Models);
            Console.WriteLine($"{m.Config}, {m.Pairs} pairs, {m.Tokens} response tokens per step, " +
                              (device is null ? $"{CpuParallel.Threads} threads" : $"on {device.Description} (GptPolicy)"));
            Console.WriteLine($"DPO step median {m.DpoMedianMilliseconds:F1} ms (min {m.DpoMilliseconds.Min():F1}) | SFT step median {m.SftMedianMilliseconds:F1} ms (min {m.SftMilliseconds.Min():F1}) | DPO/SFT = {m.Ratio:F3}");
            Console.WriteLine($"peak RSS {m.PeakResidentBytes / 1048576.0:F0} MiB; DPO step per op:");
            PrintOps(m.DpoOpMillisecondsPerStep);
            return 0;
        });
        var decodeThreads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var decodeLength = new Option<int>("--length") { DefaultValueFactory = _ => 128, Description = "Positions to decode (≤ the W2 context of 128)." };
        var decode = new Command("decode", "KV-cache decoding vs re-running the full forward for every new token (W2-sized model, 8 rows).") { decodeThreads, decodeLength };
        decode.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(decodeThreads), "--threads");
            var m = DecodeBenchmark.Run(StepWorkload.W2.Config, rows: 8, length: CliErrors.Positive(parse.GetValue(decodeLength), "--length"));
            Console.WriteLine($"{m.Config}, {m.Rows} rows × {m.Length} positions, {CpuParallel.Threads} threads");
            Console.WriteLine($"KV cache: {m.CachedMilliseconds:F0} ms ({m.CachedTokensPerSecond:N0} tokens/s) | full forward per token: {m.RecomputeMilliseconds:F0} ms ({m.RecomputeTokensPerSecond:N0} tokens/s) | speed-up {m.Speedup:F1}× over all positions | max |Δ log-prob| at the last position {m.MaxLogitDifference:E1}");
            Console.WriteLine($"per new token at context {m.Length}: cached step {m.CachedLastStepsMilliseconds:F2} ms vs full forward {m.RecomputeLastStepsMilliseconds:F1} ms → {m.SpeedupAtFullContext:F1}×");
            return 0;
        });
        var peerWorkloads = new Option<string[]>("--workload") { Description = "w1, w2 and/or dpo; repeatable.", DefaultValueFactory = _ => ["w2"], AllowMultipleArgumentsPerToken = true };
        var peerThreads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads for both." };
        var rounds = new Option<int>("--rounds") { DefaultValueFactory = _ => 3, Description = "Alternating rounds (ours, then the peer)." };
        var perRound = new Option<int>("--steps") { DefaultValueFactory = _ => 5, Description = "Timed steps per round for each." };
        var python = new Option<string>("--python") { DefaultValueFactory = _ => "/usr/bin/python3", Description = "Python with Debian's python3-torch." };
        var script = new Option<string?>("--peer-script") { Description = "Path of tools/peers/torch_step.py (default: found from the current folder upward)." };
        var peers = new Command("peers", "Our step and PyTorch's on the same workload (W1, W2 training steps; one DPO step), alternating in one invocation; prints the ratio of medians.") { peerWorkloads, peerThreads, rounds, perRound, python, script };
        peers.SetAction(parse =>
        {
            int threadCount = CliErrors.Positive(parse.GetValue(peerThreads), "--threads");
            CpuParallel.Threads = threadCount;
            int roundCount = CliErrors.Positive(parse.GetValue(rounds), "--rounds"), stepCount = CliErrors.Positive(parse.GetValue(perRound), "--steps");
            var names = parse.GetValue(peerWorkloads)!.Select(n => n.ToLowerInvariant()).ToArray();
            foreach (var name in names)
                if (name is not ("w1" or "w2" or "dpo")) throw new CliUsageException($"--workload '{name}': expected w1, w2 or dpo");
            string scriptPath = parse.GetValue(script) ?? FindUpward(Path.Combine("tools", "peers", "torch_step.py"));
            string py = parse.GetValue(python)!;
            if (PeerStepBenchmark.Unavailable(py, scriptPath) is { } why)
            {
                Console.WriteLine($"peer skipped: {why}");
                return 0;
            }
            Console.WriteLine($"peer OpenBLAS: {OpenBlasCoreType.Describe(OpenBlasCoreType.ForPeer())}, OMP_WAIT_POLICY=PASSIVE; " +
                              $"our kernels: {CpuVectors.Describe()}");
            int failed = 0;
            foreach (var name in names)
            {
                // a failed peer (SIGILL, timeout, bad output) is reported and the next workload still runs
                var c = ComparePeer(name, py, scriptPath, roundCount, stepCount, threadCount);
                string ours = $"DistAlign median {c.OursMedian:F1} ms [{c.OursMilliseconds.Min():F1}–{c.OursMilliseconds.Max():F1}]";
                if (c.Failed)
                {
                    failed++;
                    Console.WriteLine($"{c.Workload} ({threadCount} threads, {c.OursMilliseconds.Length} steps of ours): {ours} | {c.Peer} peer FAILED: " +
                                      $"{c.Failure} | peer: {c.PeerCoreDescription}");
                    continue;
                }
                Console.WriteLine($"{c.Workload} ({threadCount} threads, {c.OursMilliseconds.Length} steps each): {ours} | {c.Peer} median {c.PeerMedian:F1} ms " +
                                  $"[{c.PeerMilliseconds.Min():F1}–{c.PeerMilliseconds.Max():F1}] | ratio {c.Ratio:F2} | peer: {c.PeerCoreDescription}");
            }
            if (failed == 0) return 0;
            Console.Error.WriteLine($"distalign: the PyTorch peer failed on {failed} of {names.Length} workload(s); see above");
            return Program.RunFailed;
        });
        return new Command("bench", "Benchmarks.") { step, dpo, decode, peers, BenchPpoCommand.Create(), BenchScalingCommand.Create() };
    }

    /// <summary>
    /// One peer workload: W1 or W2 (training steps) or DPO (one DPO step on the W2 model, the shapes of
    /// <c>bench dpo</c>: 8 pairs, prompts of 16 and responses of 48 tokens, cached reference log-probs).
    /// </summary>
    internal static PeerComparison ComparePeer(string name, string python, string script, int rounds, int steps, int threads) => name switch
    {
        "w1" => PeerStepBenchmark.Run(StepWorkload.W1, python, script, rounds, steps, threads),
        "w2" => PeerStepBenchmark.Run(StepWorkload.W2, python, script, rounds, steps, threads),
        "dpo" => PreferenceStepBenchmark.ComparePeer(python, script, rounds, steps, threads),
        _ => throw new CliUsageException($"--workload '{name}': expected w1, w2 or dpo"),
    };

    private static string FindUpward(string relative)
    {
        for (var dir = new DirectoryInfo(Directory.GetCurrentDirectory()); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, relative);
            if (File.Exists(candidate)) return candidate;
        }
        return relative;
    }

    /// <param name="peakFlops">the device's peak, for the MFU figure (null on the CPU)</param>
    private static void Print(StepMeasurement m, double? peakFlops)
    {
        var w = m.Workload;
        string ranks = m.Ranks > 1 ? $"{m.Ranks} ranks × {m.Threads} threads{(m.ShardedOptimizer ? ", AdamW sharded (ZeRO-1)" : "")}" : $"{m.Threads} threads";
        Console.WriteLine($"{w.Name}: {w.Config} batch {w.Rows}×{w.Length} on {m.Device}, {ranks}, {w.Config.ParameterCount:N0} parameters, {w.FlopsPerStep / 1e9:F1} GFLOP/step");
        Console.WriteLine($"  step: median {m.MedianMilliseconds:F1} ms (min {m.MinMilliseconds:F1}, max {m.MaxMilliseconds:F1}, n = {m.StepMilliseconds.Length})" +
                          $" | {m.TokensPerSecond:N0} tokens/s | {m.GflopsPerSecond:F1} GFLOP/s" +
                          (peakFlops is double peak ? $" | MFU {m.Mfu(peak):P1} of {peak / 1e12:F0} TFLOP/s (llm.c's count; {m.NanoGptMfu(peak):P1} in nanoGPT's)" : "") +
                          $" | peak RSS {m.PeakResidentBytes / 1048576.0:F0} MiB (planned {m.PlannedBytes / 1048576.0:F0} MiB)" +
                          (m.DeviceBytesInUse is long bytes ? $" | {bytes / (double)(1L << 30):F1} GiB of device memory in use" : "") +
                          $" | loss {m.FirstLoss:F4} → {m.LastLoss:F4} on the repeated batch");
        Console.WriteLine(peakFlops is null ? "  per op (extra profiled steps):" : "  per op (one extra step, every op synchronised):");
        PrintOps(m.OpMillisecondsPerStep);
    }

    /// <summary>The measurements as JSON: per workload the step times, per-op breakdown and memory (what bench scaling reads).</summary>
    internal static string StepJson(IEnumerable<StepMeasurement> measurements) => JsonSerializer.Serialize(measurements.Select(m => new Dictionary<string, object>
    {
        ["workload"] = m.Workload.Name, ["ranks"] = m.Ranks, ["threads"] = m.Threads, ["zero1"] = m.ShardedOptimizer,
        ["median_ms"] = m.MedianMilliseconds, ["min_ms"] = m.MinMilliseconds, ["max_ms"] = m.MaxMilliseconds,
        ["tokens_per_second"] = m.TokensPerSecond, ["planned_bytes"] = m.PlannedBytes, ["peak_rss_bytes"] = m.PeakResidentBytes,
        ["ops_ms"] = m.OpMillisecondsPerStep.ToDictionary(o => o.Op, o => o.Milliseconds),
    }));

    /// <summary>The arguments without <paramref name="option"/> and its value (both "--x v" and "--x=v").</summary>
    internal static IEnumerable<string> WithoutOption(IEnumerable<string> args, string option)
    {
        bool skipValue = false;
        foreach (var a in args)
        {
            if (skipValue) { skipValue = false; continue; }
            if (a == option) { skipValue = true; continue; }
            if (a.StartsWith(option + "=", StringComparison.Ordinal)) continue;
            yield return a;
        }
    }

    private static void PrintOps(IReadOnlyList<(string Op, double Milliseconds)> ops)
    {
        var table = new Table().AddColumn("op").AddColumn(new TableColumn("ms/step").RightAligned()).AddColumn(new TableColumn("share").RightAligned());
        double total = ops.Sum(x => x.Milliseconds);
        foreach (var (op, ms) in ops)
            table.AddRow(op, ms.ToString("F1"), (ms / total).ToString("P1"));
        AnsiConsole.Write(table);
    }
}
