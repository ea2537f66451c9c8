using System.CommandLine;
using System.Globalization;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Cli;

/// <summary><c>distalign bench ppo</c>: where a PPO iteration's time goes (sampling, scoring, training) on the tiny and W2-sized models.</summary>
internal static class BenchPpoCommand
{
    /// <summary>The tiny model of the tests and the W2 model, with their rollout shapes.</summary>
    private static readonly (string Name, GptConfig Config, int Prompts, int PromptTokens, int ResponseTokens)[] Workloads =
    [
        ("tiny", new GptConfig(Layers: 1, Heads: 2, Channels: 16, VocabSize: 2257, MaxSequenceLength: 32), 8, 8, 16),
        ("W2", StepWorkload.W2.Config, 8, 16, 48),
    ];

    public static Command Create()
    {
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var iterations = new Option<int>("--iterations") { DefaultValueFactory = _ => 5, Description = "Timed PPO iterations per workload (medians are reported)." };
        var command = new Command("ppo", "Split a PPO iteration (RLHF, 4 epochs × 2 minibatches) into sampling, scoring and training, tiny and W2-sized models.") { threads, iterations };
        command.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(threads), "--threads");
            int n = CliErrors.Positive(parse.GetValue(iterations), "--iterations");
            Console.WriteLine($"PPO iteration (RLHF, value head on the policy backbone, reward model of the same shape), {CpuParallel.Threads} threads, medians of {n}");
            Console.WriteLine("| workload | model | prompts × (prompt + response) | sampling ms (tokens/s) | scoring ms | training ms (opt. steps) | total ms | sampling share |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|");
            foreach (var w in Workloads)
            {
                var m = PpoIterationBenchmark.Run(w.Name, w.Config, w.Prompts, w.PromptTokens, w.ResponseTokens, warmup: 1, iterations: n);
                Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                    $"| {m.Name} | {m.Config.Layers} layers, width {m.Config.Channels}, vocab {m.Config.VocabSize}, {m.Config.ParameterCount / 1e6:F2} M params | {m.Prompts} × ({m.PromptTokens} + {w.ResponseTokens}) | {m.SamplingMilliseconds:F0} ({m.SamplingTokensPerSecond:N0}) | {m.ScoringMilliseconds:F0} | {m.TrainingMilliseconds:F0} ({m.OptimizerSteps}) | {m.TotalMilliseconds:F0} | {m.SamplingMilliseconds / m.TotalMilliseconds:P0} |"));
            }
            return 0;
        });
        return command;
    }
}
