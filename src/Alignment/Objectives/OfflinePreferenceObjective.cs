using DistAlign.Alignment.Data;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Objectives;

/// <summary>The explicit KL regulariser of PMLE and distillation: β·KL(π(·|x) ‖ π0(·|x)) from fresh samples.</summary>
/// <param name="Beta">β; 0 turns the regulariser off (pure preference MLE)</param>
/// <param name="SamplesPerPrompt">k ≥ 2 samples per prompt (the leave-one-out baseline needs two)</param>
/// <param name="MaxNewTokens">length of each sampled response</param>
/// <param name="EndOfText">stop token for samples (−1: none)</param>
public sealed record KlRegularizer(double Beta, int SamplesPerPrompt = 2, int MaxNewTokens = 32, int EndOfText = -1);

/// <summary>What one step of an offline preference objective measured.</summary>
public sealed record OfflineStepMetrics(PairwiseLossMetrics Pairwise, double KlEstimate, double Loss);

/// <summary>
/// The offline preference objectives on any <see cref="IPolicy"/>: the DPO family and IPO (with cached
/// reference log-probs ln π0), preference MLE, −ln σ(γ Δ ln π) + β·KL(π ‖ π0) (OBJECTIVES.md §1), and preference
/// distillation on fixed pairs with given soft labels, −[p ln σ(z) + (1−p) ln σ(−z)] + β·KL(π ‖ π0) (§2).
/// </summary>
/// <remarks>
/// The pairwise term goes through <see cref="PairwiseBradleyTerryLoss"/> on per-sequence log-probs
/// (chosen and rejected interleaved: sequence 2i is pair i's a⁺, 2i+1 its a⁻); its gradient is scattered
/// back to the response tokens. The KL term samples k responses per prompt from the current π and uses
/// f_i = ln π(y_i) − ln π0(y_i): its value is mean f_i, its gradient the score-function estimator with a
/// leave-one-out baseline, ∇ ≈ (1/k) Σ_i (f_i − mean_{j≠i} f_j)·∇ ln π(y_i), averaged over prompts.
/// </remarks>
public sealed class OfflinePreferenceObjective
{
    private readonly PairwiseLossSettings settings;
    private readonly KlRegularizer? kl;

    public OfflinePreferenceObjective(PairwiseLossSettings settings, KlRegularizer? kl = null)
    {
        settings.Validate();
        this.settings = settings;
        if (kl is not null && kl.Beta > 0 && kl.SamplesPerPrompt < 2)
            throw new ArgumentException($"the KL estimate needs at least 2 samples per prompt (got {kl.SamplesPerPrompt})");
        if (kl is not null && kl.Beta < 0) throw new ArgumentException($"KL β must be ≥ 0 (got {kl.Beta})");
        this.kl = kl;
    }

    public PairwiseLossSettings Settings => settings;

    /// <summary>
    /// Adds this minibatch's gradient (of the mean loss over its pairs) to the policy's gradients.
    /// <paramref name="referenceLogProbs"/> holds ln π0 per sequence in the interleaved order (2 per pair)
    /// when the variant uses a reference; <paramref name="reference"/> is π0 for the KL term.
    /// </summary>
    /// <param name="gradientScale">multiplies the gradient added (1/A for gradient accumulation over A micro-batches)</param>
    /// <param name="klFirstStream">the KL samples' first Philox stream (a data-parallel rank's offset in its batch, see
    /// <see cref="AccumulateKl"/>)</param>
    public OfflineStepMetrics Accumulate(IPolicy policy, IReadOnlyList<PreferencePair> pairs, ReadOnlySpan<float> referenceLogProbs,
                                         IPolicy? reference, ulong sampleSeed, double gradientScale = 1.0, int klFirstStream = 0)
        => Accumulate(policy, pairs, referenceLogProbs, reference, sampleSeed, labels: default, gradientScale, klFirstStream);

    /// <summary>
    /// <see cref="Accumulate(IPolicy, IReadOnlyList{PreferencePair}, ReadOnlySpan{float}, IPolicy, ulong, double, int)"/> with
    /// given soft labels: preference distillation on fixed pairs, pair i's label p_i = P(chosen ≻ rejected) ∈ [0, 1] (the
    /// chosen response is a₁, the rejected a₂). Labels are read only by <see cref="PairwiseLossVariant.Distillation"/>, which
    /// needs one per pair; the other variants ignore them.
    /// </summary>
    public OfflineStepMetrics Accumulate(IPolicy policy, IReadOnlyList<PreferencePair> pairs, ReadOnlySpan<float> referenceLogProbs,
                                         IPolicy? reference, ulong sampleSeed, ReadOnlySpan<float> labels, double gradientScale = 1.0,
                                         int klFirstStream = 0)
    {
        var sequences = Sequences(pairs);
        int s = sequences.Count, p = pairs.Count;
        if (settings.UsesReference && referenceLogProbs.Length != s)
            throw new ArgumentException($"{settings.Variant} needs reference log-probs for all {s} sequences, got {referenceLogProbs.Length}");
        if (settings.Variant == PairwiseLossVariant.Distillation && labels.Length != p)
            throw new ArgumentException($"distillation needs a soft label for each of the {p} pairs, got {labels.Length}");

        int tokens = PolicyScores.TokenCount(sequences);
        var tokenLogProbs = new float[tokens];
        policy.Score(sequences, tokenLogProbs);
        var logps = new float[s];
        var counts = new int[s];
        PolicyScores.SumPerSequence(sequences, tokenLogProbs, logps, counts);

        var chosen = new int[p];
        var rejected = new int[p];
        for (int i = 0; i < p; i++) { chosen[i] = 2 * i; rejected[i] = 2 * i + 1; }
        var dLogps = new float[s];
        var metrics = PairwiseBradleyTerryLoss.ForwardBackward(settings, new PairwiseLossBatch
        {
            Logps = logps,
            RefLogps = settings.UsesReference ? referenceLogProbs : default,
            TokenCounts = counts,
            Chosen = chosen,
            Rejected = rejected,
            Labels = settings.Variant == PairwiseLossVariant.Distillation ? labels : default,
        }, new float[p], dLogps, default);
        if (gradientScale != 1.0)
            for (int i = 0; i < dLogps.Length; i++) dLogps[i] = (float)(dLogps[i] * gradientScale);
        var dTokens = new float[tokens];
        PolicyScores.ScatterPerSequence(sequences, dLogps, dTokens);
        policy.Backward(dTokens);

        double klEstimate = 0;
        if (kl is { Beta: > 0 })
        {
            if (reference is null) throw new ArgumentException("the KL regulariser needs the reference policy π0");
            klEstimate = AccumulateKl(policy, reference, DistinctPrompts(pairs.Select(p => p.Prompt)), kl, sampleSeed, gradientScale, klFirstStream);
        }
        return new OfflineStepMetrics(metrics, klEstimate, metrics.Loss + (kl?.Beta ?? 0) * klEstimate);
    }

    /// <summary>Reference log-probs per sequence, interleaved like <see cref="Accumulate(IPolicy, IReadOnlyList{PreferencePair}, ReadOnlySpan{float}, IPolicy, ulong, double, int)"/> expects.</summary>
    public static float[] ReferenceLogProbs(IPolicy reference, IReadOnlyList<PreferencePair> pairs)
    {
        var sequences = Sequences(pairs);
        var tokenLogProbs = new float[PolicyScores.TokenCount(sequences)];
        reference.Score(sequences, tokenLogProbs);
        var sums = new float[sequences.Count];
        PolicyScores.SumPerSequence(sequences, tokenLogProbs, sums, default);
        return sums;
    }

    /// <summary>The interleaved (prompt, a⁺), (prompt, a⁻) sequences of a list of pairs.</summary>
    public static List<PromptResponse> Sequences(IReadOnlyList<PreferencePair> pairs)
    {
        var sequences = new List<PromptResponse>(2 * pairs.Count);
        foreach (var pair in pairs)
        {
            sequences.Add(new PromptResponse(pair.Prompt, pair.Chosen));
            sequences.Add(new PromptResponse(pair.Prompt, pair.Rejected));
        }
        return sequences;
    }

    /// <summary>The distinct prompts of a sequence of prompts, in first-seen order.</summary>
    public static List<int[]> DistinctPrompts(IEnumerable<int[]> prompts)
    {
        var distinct = new List<int[]>();
        var seen = new HashSet<string>();
        foreach (var prompt in prompts)
            if (seen.Add(string.Join(',', prompt))) distinct.Add(prompt);
        return distinct;
    }

    /// <summary>
    /// Adds β·∇KL(π ‖ π0) over <paramref name="prompts"/> (k fresh samples each, leave-one-out baseline) to the
    /// policy's gradients and returns the KL estimate (mean over prompts). Sample i of prompt q draws from Philox stream
    /// <paramref name="firstStream"/> + k·q + i: a data-parallel rank whose distinct prompts follow d others in its batch passes
    /// k·d, so that it draws what one process would.
    /// </summary>
    internal static double AccumulateKl(IPolicy policy, IPolicy reference, IReadOnlyList<int[]> prompts, KlRegularizer kl, ulong seed, double gradientScale,
                                        int firstStream = 0)
    {
        int k = kl.SamplesPerPrompt;
        var repeated = new List<int[]>(prompts.Count * k);
        foreach (var prompt in prompts) for (int i = 0; i < k; i++) repeated.Add(prompt);
        var samples = policy.Sample(repeated, new SamplingOptions(kl.MaxNewTokens, EndOfText: kl.EndOfText) { FirstStream = firstStream }, seed);
        var sequences = new List<PromptResponse>(repeated.Count);
        var kept = new List<int>();
        for (int i = 0; i < repeated.Count; i++)
        {
            sequences.Add(new PromptResponse(repeated[i], samples[i].Tokens));
            kept.Add(samples[i].Tokens.Length);
        }
        if (kept.Any(len => len == 0)) throw new InvalidOperationException("a KL sample is empty: raise MaxNewTokens");

        int tokens = PolicyScores.TokenCount(sequences);
        var piTokens = new float[tokens];
        var refTokens = new float[tokens];
        reference.Score(sequences, refTokens);
        policy.Score(sequences, piTokens);
        var pi = new float[sequences.Count];
        var pi0 = new float[sequences.Count];
        PolicyScores.SumPerSequence(sequences, piTokens, pi, default);
        PolicyScores.SumPerSequence(sequences, refTokens, pi0, default);

        // f_i = ln π(y_i) − ln π0(y_i); per prompt: value mean f, weight (f_i − mean_{j≠i} f_j)/k.
        var dSeq = new float[sequences.Count];
        double value = 0;
        for (int q = 0; q < prompts.Count; q++)
        {
            double sum = 0;
            for (int i = 0; i < k; i++) sum += pi[q * k + i] - pi0[q * k + i];
            value += sum / k;
            for (int i = 0; i < k; i++)
            {
                double f = pi[q * k + i] - pi0[q * k + i];
                double baseline = (sum - f) / (k - 1);
                dSeq[q * k + i] = (float)(gradientScale * kl.Beta * (f - baseline) / k / prompts.Count);
            }
        }
        var dTokens = new float[tokens];
        PolicyScores.ScatterPerSequence(sequences, dSeq, dTokens);
        policy.Backward(dTokens);
        return value / prompts.Count;
    }
}
