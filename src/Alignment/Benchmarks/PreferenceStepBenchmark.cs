using System.Diagnostics;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Benchmarks;

/// <summary>What <see cref="PreferenceStepBenchmark.Run"/> measured: medians of alternating steps.</summary>
/// <param name="DpoOpMillisecondsPerStep">The DPO step's per-op breakdown (the model's <see cref="OpProfile"/> laps, "clip + AdamW", and
/// "other": packing, the per-sequence sums, the pairwise loss, zeroing), milliseconds per step, largest first.</param>
/// <param name="PeakResidentBytes">The process's peak resident memory after the run.</param>
public sealed record PreferenceStepMeasurement(GptConfig Config, int Pairs, int Tokens, double DpoMedianMilliseconds, double SftMedianMilliseconds,
                                               double[] DpoMilliseconds, double[] SftMilliseconds,
                                               IReadOnlyList<(string Op, double Milliseconds)> DpoOpMillisecondsPerStep, long PeakResidentBytes)
{
    /// <summary>DPO step time / SFT step time on the same chosen + rejected tokens (goal ≤ 1.1).</summary>
    public double Ratio => DpoMedianMilliseconds / SftMedianMilliseconds;
}

/// <summary>
/// One DPO step with cached reference log-probs against one SFT step on the same chosen + rejected tokens
/// (both 6·N FLOPs per token: forward, backward, AdamW), alternating in one process so drift hits both. On the CPU
/// policy by default, or on the policy a caller builds (a <see cref="GptPolicy"/>: each timed step then ends with a
/// device synchronisation, and the per-op breakdown comes from one extra, separately profiled DPO step, because the
/// GPU profile synchronises after every op).
/// </summary>
public static class PreferenceStepBenchmark
{
    /// <summary>The DPO workload's batch (bench dpo and the DPO peer): pairs, prompt and response tokens, on the W2 model.</summary>
    public const int DpoPairs = 8, DpoPromptTokens = 16, DpoResponseTokens = 48;

    /// <summary>
    /// The DPO peer workload: our DPO step (<see cref="DpoSteps"/>, W2 model, <see cref="DpoPairs"/> pairs) against
    /// <c>torch_step.py --workload dpo</c>, alternating rounds (see <see cref="PeerStepBenchmark.Compare"/>).
    /// </summary>
    public static PeerComparison ComparePeer(string python, string script, int rounds, int stepsPerRound, int threads) =>
        PeerStepBenchmark.Compare("DPO", (warmup, steps) => DpoSteps(StepWorkload.W2.Config, DpoPairs, DpoPromptTokens, DpoResponseTokens, warmup, steps),
                                  python, script, "dpo", rounds, stepsPerRound, threads);

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

    /// <param name="device">where the policy trains (default the CPU)</param>
    public static PreferenceStepMeasurement Run(GptConfig config, int pairs, int promptTokens, int responseTokens, int warmup, int steps, ulong seed = 1,
                                                GptDevice? device = null)
    {
        using var model = new Gpt(config);
        model.InitializeGpt2(seed);
        var adamW = new AdamWSettings(WeightDecay: 0);
        using var policy = new GptPolicy(model, adamW, device: device);
        var engine = policy.Engine;
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
            engine.Synchronize();
            long middle = Stopwatch.GetTimestamp();
            policy.ZeroGradients();
            sft.Accumulate(policy, sftSequences);
            policy.ClipGradients(1f);
            policy.OptimizerStep(2 * s + 2, 1e-5f);
            engine.Synchronize();
            long end = Stopwatch.GetTimestamp();
            if (s < warmup) continue;
            dpoTimes[s - warmup] = Stopwatch.GetElapsedTime(start, middle).TotalMilliseconds;
            sftTimes[s - warmup] = Stopwatch.GetElapsedTime(middle, end).TotalMilliseconds;
        }
        // one more DPO step with the profile attached (a device engine synchronises after every op), outside the timed ones
        var profile = new OpProfile();
        engine.Profile = profile;
        policy.ZeroGradients();
        dpo.Accumulate(policy, data, referenceLogProbs, null, (ulong)(warmup + steps));
        engine.Profile = null;
        long optimizerStart = Stopwatch.GetTimestamp();
        policy.ClipGradients(1f);
        policy.OptimizerStep(2 * (warmup + steps) + 1, 1e-5f);
        engine.Synchronize();
        profile.Charge("clip + AdamW", Stopwatch.GetElapsedTime(optimizerStart).TotalMilliseconds);
        var perStep = profile.Totals().ToList();   // one profiled step: totals are per step
        perStep.Add(("other (packing, sums, pairwise loss, zeroing)", Math.Max(0, dpoTimes.Average() - perStep.Sum(x => x.Item2))));
        return new PreferenceStepMeasurement(config, pairs, PolicyScores.TokenCount(sftSequences), Median(dpoTimes), Median(sftTimes), dpoTimes, sftTimes,
            perStep.OrderByDescending(x => x.Item2).ToList(), Process.GetCurrentProcess().PeakWorkingSet64);
    }

    private static double Median(double[] values)
    {
        var sorted = values.Order().ToArray();
        int n = sorted.Length;
        return n % 2 == 1 ? sorted[n / 2] : 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]);
    }
}
