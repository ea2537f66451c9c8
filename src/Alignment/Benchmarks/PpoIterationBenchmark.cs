using DistAlign.Alignment.Training;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Reward;
using DistAlign.Engine.Random;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Benchmarks;

/// <summary>Where a PPO iteration's time went, as medians over the timed iterations.</summary>
/// <param name="SamplingMilliseconds">KV-cache decoding of the responses</param>
/// <param name="ScoringMilliseconds">the rest of the rollout: ln π_old and V_old, ln π0, R̂ (three packed forwards) and GAE</param>
/// <param name="TrainingMilliseconds">epochs × minibatches of forward, backward, clipping and AdamW</param>
/// <param name="ResponseTokens">response tokens per iteration</param>
public sealed record PpoIterationMeasurement(string Name, GptConfig Config, int Prompts, int PromptTokens, int ResponseTokens, int OptimizerSteps,
                                             double SamplingMilliseconds, double ScoringMilliseconds, double TrainingMilliseconds, double[] IterationMilliseconds)
{
    public double TotalMilliseconds => SamplingMilliseconds + ScoringMilliseconds + TrainingMilliseconds;
    /// <summary>Decoded tokens per second while sampling.</summary>
    public double SamplingTokensPerSecond => ResponseTokens / (SamplingMilliseconds / 1000);
}

/// <summary>
/// Times PPO iterations (RLHF, value head on the policy backbone, a reward model of the same shape) on random prompts:
/// sampling with the KV cache, scoring, and training, each as the median over the timed iterations. On a <see cref="GptDevice"/>
/// other than the CPU the policy (with its host value head), π0 and R̂'s backbone run there; every phase ends with its results on
/// the host (log-probs, values, rewards, the clip's norm), so the phase times include the device work, except the last AdamW
/// step of an iteration, which is queued and finishes inside the next rollout.
/// </summary>
public static class PpoIterationBenchmark
{
    /// <summary>The workloads of <c>distalign bench ppo</c> and the benchmark report: the tests' tiny model and the W2 model.</summary>
    public static readonly (string Name, GptConfig Config, int Prompts, int PromptTokens, int ResponseTokens)[] Workloads =
    [
        ("tiny", new GptConfig(Layers: 1, Heads: 2, Channels: 16, VocabSize: 2257, MaxSequenceLength: 32), 8, 8, 16),
        ("W2", StepWorkload.W2.Config, 8, 16, 48),
    ];

    /// <summary>Runs every workload of <see cref="Workloads"/> on <paramref name="device"/> (default the CPU).</summary>
    public static List<PpoIterationMeasurement> RunAll(int iterations, GptDevice? device = null) =>
        [.. Workloads.Select(w => Run(w.Name, w.Config, w.Prompts, w.PromptTokens, w.ResponseTokens, warmup: 1, iterations, device: device))];

    /// <summary>The markdown table both the CLI and the report print.</summary>
    public static IEnumerable<string> Table(IEnumerable<PpoIterationMeasurement> measurements)
    {
        yield return "| workload | model | prompts × (prompt + response tokens) | sampling ms (tokens/s) | scoring ms | training ms (optimizer steps) | total ms | sampling share |";
        yield return "|---|---|---|---:|---:|---:|---:|---:|";
        foreach (var m in measurements)
            yield return string.Create(System.Globalization.CultureInfo.InvariantCulture,
                $"| {m.Name} | {m.Config.Layers} layers, width {m.Config.Channels}, vocab {m.Config.VocabSize}, {m.Config.ParameterCount / 1e6:F2} M params | {m.Prompts} × ({m.PromptTokens} + {m.ResponseTokens / m.Prompts}) | {m.SamplingMilliseconds:F0} ({m.SamplingTokensPerSecond:N0}) | {m.ScoringMilliseconds:F0} | {m.TrainingMilliseconds:F0} ({m.OptimizerSteps}) | {m.TotalMilliseconds:F0} | {m.SamplingMilliseconds / m.TotalMilliseconds:P0} |");
    }

    public static PpoIterationMeasurement Run(string name, GptConfig config, int prompts, int promptTokens, int responseTokens,
                                              int warmup, int iterations, int epochs = 4, int minibatches = 2, ulong seed = 1, GptDevice? device = null)
    {
        device ??= GptDevice.Cpu;
        if (promptTokens + responseTokens > config.MaxSequenceLength)
            throw new ArgumentException($"{promptTokens} prompt + {responseTokens} response tokens exceed the context of {config.MaxSequenceLength}");
        var model = new Gpt(config);
        model.InitializeGpt2(seed);
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0), ownsModel: true, withValueHead: true, device);
        using var reference = policy.Snapshot();
        var rewardBackbone = new Gpt(config);
        rewardBackbone.InitializeGpt2(seed + 1);
        using var reward = new RewardModel(rewardBackbone, new AdamWSettings(), ownsBackbone: true, device);
        var rng = new PhiloxStream(seed, 9);
        var promptList = new List<int[]>();
        for (int i = 0; i < prompts * (warmup + iterations); i++)
        {
            var t = new int[promptTokens];
            for (int k = 0; k < promptTokens; k++) t[k] = (int)(rng.NextUInt() % (uint)config.VocabSize);
            promptList.Add(t);
        }
        var options = new PpoOptions
        {
            Steps = warmup + iterations, PromptsPerIteration = prompts, Epochs = epochs, Minibatches = minibatches,
            Sampling = new SamplingOptions(responseTokens), LearningRate = 1e-5f, Seed = seed,
        };
        var trainer = new PpoTrainer(policy, reference, reward, promptList, options);
        var sampling = new List<double>();
        var scoring = new List<double>();
        var training = new List<double>();
        var total = new List<double>();
        for (int i = 0; i < warmup + iterations; i++)
        {
            var report = trainer.TrainStep();
            if (i < warmup) continue;
            double sample = report["sampling_seconds"] * 1000, rollout = report["rollout_seconds"] * 1000, train = report["train_seconds"] * 1000;
            sampling.Add(sample);
            scoring.Add(rollout - sample);
            training.Add(train);
            total.Add(rollout + train);
        }
        return new PpoIterationMeasurement(name, config, prompts, promptTokens, prompts * responseTokens, options.OptimizerStepsPerIteration,
            Median(sampling), Median(scoring), Median(training), [.. total]);
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    }
}
