using System.Diagnostics;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Training;

/// <summary>What <see cref="PreferenceStepBenchmark.Run"/> measured: medians of alternating steps.</summary>
public sealed record PreferenceStepMeasurement(GptConfig Config, int Pairs, int Tokens, double DpoMedianMilliseconds, double SftMedianMilliseconds,
                                               double[] DpoMilliseconds, double[] SftMilliseconds)
{
    /// <summary>DPO step time / SFT step time on the same chosen + rejected tokens (goal ≤ 1.1).</summary>
    public double Ratio => DpoMedianMilliseconds / SftMedianMilliseconds;
}

/// <summary>
/// One DPO step with cached reference log-probs against one SFT step on the same chosen + rejected tokens
/// (both 6·N FLOPs per token: forward, backward, AdamW), alternating in one process so drift hits both.
/// </summary>
public static class PreferenceStepBenchmark
{
    /// <summary>
    /// DPO steps alone (the peer comparison's DPO workload): score, sigmoid loss against cached reference
    /// log-probs, backward, clip to norm 1, AdamW; returns the timed steps' milliseconds.
    /// </summary>
    public static double[] DpoSteps(GptConfig config, int pairs, int promptTokens, int responseTokens, int warmup, int steps, ulong seed = 1)
    {
        using var model = new Gpt(config);
        model.InitializeGpt2(seed);
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0));
        var data = RandomPairs(config, pairs, promptTokens, responseTokens, seed);
        var referenceLogProbs = OfflinePreferenceObjective.ReferenceLogProbs(policy, data);
        var dpo = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.1));
        var times = new double[steps];
        for (int s = 0; s < warmup + steps; s++)
        {
            long start = Stopwatch.GetTimestamp();
            policy.ZeroGradients();
            dpo.Accumulate(policy, data, referenceLogProbs, null, (ulong)s);
            policy.ClipGradients(1f);
            policy.OptimizerStep(s + 1, 1e-5f);
            if (s >= warmup) times[s - warmup] = Stopwatch.GetElapsedTime(start).TotalMilliseconds;
        }
        return times;
    }

    private static List<PreferencePair> RandomPairs(GptConfig config, int pairs, int promptTokens, int responseTokens, ulong seed)
    {
        var rng = new PhiloxStream(seed, 7);
        int[] Tokens(int n) { var t = new int[n]; for (int i = 0; i < n; i++) t[i] = (int)(rng.NextUInt() % (uint)config.VocabSize); return t; }
        var data = new List<PreferencePair>();
        for (int i = 0; i < pairs; i++) data.Add(new PreferencePair(Tokens(promptTokens), Tokens(responseTokens), Tokens(responseTokens)));
        return data;
    }

    public static PreferenceStepMeasurement Run(GptConfig config, int pairs, int promptTokens, int responseTokens, int warmup, int steps, ulong seed = 1)
    {
        using var model = new Gpt(config);
        model.InitializeGpt2(seed);
        using var policy = new GptPolicy(model, new AdamWSettings(WeightDecay: 0));
        var data = RandomPairs(config, pairs, promptTokens, responseTokens, seed);
        var referenceLogProbs = OfflinePreferenceObjective.ReferenceLogProbs(policy, data);
        var dpo = new OfflinePreferenceObjective(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.1));
        var sft = new SftObjective();
        var sftSequences = OfflinePreferenceObjective.Sequences(data); // chosen and rejected: the same tokens DPO scores

        var dpoTimes = new double[steps];
        var sftTimes = new double[steps];
        for (int s = 0; s < warmup + steps; s++)
        {
            long start = Stopwatch.GetTimestamp();
            policy.ZeroGradients();
            dpo.Accumulate(policy, data, referenceLogProbs, null, (ulong)s);
            policy.ClipGradients(1f);
            policy.OptimizerStep(2 * s + 1, 1e-5f);
            long middle = Stopwatch.GetTimestamp();
            policy.ZeroGradients();
            sft.Accumulate(policy, sftSequences);
            policy.ClipGradients(1f);
            policy.OptimizerStep(2 * s + 2, 1e-5f);
            long end = Stopwatch.GetTimestamp();
            if (s < warmup) continue;
            dpoTimes[s - warmup] = Stopwatch.GetElapsedTime(start, middle).TotalMilliseconds;
            sftTimes[s - warmup] = Stopwatch.GetElapsedTime(middle, end).TotalMilliseconds;
        }
        return new PreferenceStepMeasurement(config, pairs, PolicyScores.TokenCount(sftSequences), Median(dpoTimes), Median(sftTimes), dpoTimes, sftTimes);
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    }
}
