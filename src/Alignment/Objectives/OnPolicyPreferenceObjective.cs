using DistAlign.Alignment.Data;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Objectives;

/// <summary>Where the two responses per prompt come from.</summary>
public enum PairSource
{
    /// <summary>Sampled from the current policy π_t ("on-policy", the default).</summary>
    Policy,
    /// <summary>Sampled from the reference π0.</summary>
    Reference,
    /// <summary>The dataset's own two responses (relabelled by R̂: the order in the file is ignored).</summary>
    Dataset,
}

/// <summary>What one step of an on-policy pairwise objective measured.</summary>
/// <param name="Tokens">prompt and response tokens scored (throughput accounting)</param>
public sealed record OnPolicyStepMetrics(PairwiseLossMetrics Pairwise, double KlEstimate, double Loss, double MeanReward, long Tokens);

/// <summary>
/// The pairwise objectives that draw their own pairs: preference distillation (OBJECTIVES.md §2) and REBEL.
/// Each step samples two responses a₁, a₂ per prompt, scores them with a reward function R̂, and:
/// <list type="bullet">
/// <item>distillation: soft label p = σ(R̂(a₁) − R̂(a₂)), loss −[p ln σ(z) + (1−p) ln σ(−z)] with
/// z = γ[ln π(a₁) − ln π(a₂)], plus β·KL(π ‖ π0) on fresh samples (as PMLE);</item>
/// <item>REBEL: ([ln π(a₁) − ln π_t(a₁)] − [ln π(a₂) − ln π_t(a₂)] − η[R̂(a₁) − R̂(a₂)])², the anchor π_t being
/// the policy that drew the pair (its sampled log-probs), so the pairs must come from the policy.</item>
/// </list>
/// Both go through <see cref="PairwiseBradleyTerryLoss"/> on per-sequence log-probs.
/// </summary>
public sealed class OnPolicyPreferenceObjective
{
    private readonly PairwiseLossSettings settings;
    private readonly IRewardFunction reward;
    private readonly SamplingOptions sampling;
    private readonly KlRegularizer? kl;
    private readonly PairSource source;

    public OnPolicyPreferenceObjective(PairwiseLossSettings settings, IRewardFunction reward, SamplingOptions sampling,
                                       KlRegularizer? kl = null, PairSource source = PairSource.Policy)
    {
        settings.Validate();
        if (settings.Variant is not (PairwiseLossVariant.Distillation or PairwiseLossVariant.Rebel))
            throw new ArgumentException($"on-policy pairs serve distillation and REBEL, not {settings.Variant}");
        if (settings.Variant == PairwiseLossVariant.Rebel && source != PairSource.Policy)
            throw new ArgumentException("REBEL's anchor is the policy that drew the pair: sample from the policy");
        if (source == PairSource.Dataset && sampling.MaxNewTokens < 1) sampling = sampling with { MaxNewTokens = 1 };
        if (sampling.Validate().MaxNewTokens < 1) throw new ArgumentException("sampled responses need at least one token");
        if (kl is { Beta: < 0 }) throw new ArgumentException($"KL β must be ≥ 0 (got {kl.Beta})");
        this.settings = settings;
        this.reward = reward;
        this.sampling = sampling;
        this.kl = kl;
        this.source = source;
    }

    /// <summary>Where the pairs come from.</summary>
    public PairSource Source => source;

    /// <summary>
    /// Adds the gradient of the mean loss over a minibatch of dataset pairs (times <paramref name="gradientScale"/>) to the
    /// policy's gradients: their two responses with <see cref="PairSource.Dataset"/>, otherwise two samples per prompt.
    /// </summary>
    /// <param name="firstPair">the pairs' position in their batch (a data-parallel rank's share starts there): pair i's two
    /// samples draw from Philox streams 2(firstPair + i) and 2(firstPair + i) + 1, as one process sampling the batch draws</param>
    /// <param name="klFirstStream">the KL samples' first Philox stream (see <see cref="OfflinePreferenceObjective.AccumulateKl"/>)</param>
    public OnPolicyStepMetrics Accumulate(IPolicy policy, IPolicy? reference, IReadOnlyList<PreferencePair> pairs, ulong seed, double gradientScale = 1.0,
                                          int firstPair = 0, int klFirstStream = 0)
    {
        if (source != PairSource.Dataset)
            return Accumulate(policy, reference, pairs.Select(p => p.Prompt).ToList(), seed, gradientScale, firstPair, klFirstStream);
        if (pairs.Count == 0) throw new ArgumentException("an on-policy step needs at least one pair");
        var sequences = OfflinePreferenceObjective.Sequences(pairs);
        return AccumulateOnSequences(policy, reference, pairs.Select(p => p.Prompt).ToList(), sequences, anchorSamples: null, seed, gradientScale, klFirstStream);
    }

    /// <summary>
    /// Adds this minibatch's gradient (of the mean loss over its prompts' pairs, times
    /// <paramref name="gradientScale"/>) to the policy's gradients.
    /// </summary>
    public OnPolicyStepMetrics Accumulate(IPolicy policy, IPolicy? reference, IReadOnlyList<int[]> prompts, ulong seed, double gradientScale = 1.0,
                                          int firstPair = 0, int klFirstStream = 0)
    {
        if (prompts.Count == 0) throw new ArgumentException("an on-policy step needs at least one prompt");
        if (source == PairSource.Dataset) throw new ArgumentException("pairs from the dataset need the dataset's pairs, not only prompts");
        if (source == PairSource.Reference && reference is null) throw new ArgumentException("pairs from π0 need the reference policy");
        var repeated = new List<int[]>(2 * prompts.Count);
        foreach (var prompt in prompts) { repeated.Add(prompt); repeated.Add(prompt); }
        var samples = (source == PairSource.Policy ? policy : reference!).Sample(repeated, sampling with { FirstStream = 2 * firstPair }, seed);
        var sequences = new List<PromptResponse>(repeated.Count);
        for (int i = 0; i < repeated.Count; i++) sequences.Add(new PromptResponse(repeated[i], samples[i].Tokens));
        return AccumulateOnSequences(policy, reference, prompts, sequences, samples, seed, gradientScale, klFirstStream);
    }

    private OnPolicyStepMetrics AccumulateOnSequences(IPolicy policy, IPolicy? reference, IReadOnlyList<int[]> prompts, List<PromptResponse> sequences,
                                                      Continuation[]? anchorSamples, ulong seed, double gradientScale, int klFirstStream)
    {
        int s = sequences.Count, p = prompts.Count;
        var rewards = new float[s];
        reward.Score(sequences, rewards);
        int tokens = PolicyScores.TokenCount(sequences);
        var tokenLogProbs = new float[tokens];
        policy.Score(sequences, tokenLogProbs);
        var logps = new float[s];
        PolicyScores.SumPerSequence(sequences, tokenLogProbs, logps, default);

        var first = new int[p];
        var second = new int[p];
        for (int i = 0; i < p; i++) { first[i] = 2 * i; second[i] = 2 * i + 1; }
        float[] labels = [];
        float[] anchor = [];
        if (settings.Variant == PairwiseLossVariant.Distillation)
        {
            labels = new float[p];
            for (int i = 0; i < p; i++) labels[i] = (float)(1.0 / (1.0 + Math.Exp(-((double)rewards[2 * i] - rewards[2 * i + 1]))));
        }
        else
        {
            anchor = new float[s];
            for (int i = 0; i < s; i++) anchor[i] = anchorSamples![i].LogProbs.Sum();
        }
        var dLogps = new float[s];
        var metrics = PairwiseBradleyTerryLoss.ForwardBackward(settings, new PairwiseLossBatch
        {
            Logps = logps,
            RefLogps = anchor,
            Rewards = settings.Variant == PairwiseLossVariant.Rebel ? rewards : default,
            Chosen = first,
            Rejected = second,
            Labels = labels,
        }, new float[p], dLogps, default);
        if (gradientScale != 1.0)
            for (int i = 0; i < s; i++) dLogps[i] = (float)(dLogps[i] * gradientScale);
        var dTokens = new float[tokens];
        PolicyScores.ScatterPerSequence(sequences, dLogps, dTokens);
        policy.Backward(dTokens);

        double klEstimate = 0;
        if (kl is { Beta: > 0 })
        {
            if (reference is null) throw new ArgumentException("the KL regulariser needs the reference policy π0");
            klEstimate = OfflinePreferenceObjective.AccumulateKl(policy, reference, OfflinePreferenceObjective.DistinctPrompts(prompts), kl,
                                                                 seed ^ 0x9E3779B97F4A7C15UL, gradientScale, klFirstStream);
        }
        long scored = 0;
        foreach (var q in sequences) scored += q.Prompt.Length + q.Response.Length;
        return new OnPolicyStepMetrics(metrics, klEstimate, metrics.Loss + (kl?.Beta ?? 0) * klEstimate, rewards.Average(), scored);
    }
}
