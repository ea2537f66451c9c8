using System.CommandLine;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Cli;

/// <summary><c>distalign bench ppo</c>: where a PPO iteration's time goes (sampling, scoring, training) on the tiny and W2-sized models.</summary>
internal static class BenchPpoCommand
{
    public static Command Create()
    {
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads." };
        var iterations = new Option<int>("--iterations") { DefaultValueFactory = _ => 5, Description = "Timed PPO iterations per workload (medians are reported)." };
        var command = new Command("ppo", "Split a PPO iteration (RLHF, 4 epochs × 2 minibatches) into sampling, scoring and training, tiny and W2-sized models.") { threads, iterations };
        var gpu = GpuTrainingOptions.Create();
        gpu.AddTo(command);
        command.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(threads), "--threads");
            int n = CliErrors.Positive(parse.GetValue(iterations), "--iterations");
            // --device cuda: the policy, π0 and R̂'s backbone on the GPU (GPU engines), decoding on the device
            using var device = GpuTrainingOptions.OpenIfChosen(gpu.Read(parse), PpoIterationBenchmark.Workloads[^1].Config);
            Console.WriteLine($"PPO iteration (RLHF, value head on the policy backbone, reward model of the same shape), " +
                              (device is null ? $"{CpuParallel.Threads} threads" : $"on {device.Description}") + $", medians of {n}");
            foreach (var line in PpoIterationBenchmark.Table(PpoIterationBenchmark.RunAll(n, device?.Models))) Console.WriteLine(line);
            return 0;
        });
        return command;
    }
}
