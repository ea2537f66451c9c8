using DistAlign.Alignment.Policies;

namespace DistAlign.Alignment.Experiments;

/// <summary>How close a model π̂ came to the known target, and how degenerate its samples are.</summary>
/// <param name="ForwardKl">KL(π* ‖ π̂) per response: mean of ln π*(y) − ln π̂(y), y ~ π*</param>
/// <param name="ReverseKl">KL(π̂ ‖ π*) per response: mean of ln π̂(y) − ln π*(y), y ~ π̂</param>
/// <param name="KlToReference">KL(π̂ ‖ π0) per response: mean of ln π̂(y) − ln π0(y), y ~ π̂</param>
/// <param name="WinRate">mean of P*(a ≻ b) = σ(γ[ln π*(a) − ln π*(b)]), a ~ π̂, b ~ π0 on the same prompt</param>
/// <param name="LexiconReward">mean Σ_t w(y_t) of π̂'s samples</param>
/// <param name="TokenEntropy">mean over π̂'s sampled positions of the exact entropy of π̂(· | prefix), nats</param>
/// <param name="Distinct1">distinct unigrams / all unigrams of π̂'s samples</param>
/// <param name="Distinct2">distinct bigrams (within a response) / all bigrams</param>
/// <param name="MeanLength">mean response length of π̂'s samples</param>
public sealed record KnownTargetEvaluation(Estimate ForwardKl, Estimate ReverseKl, Estimate KlToReference, Estimate WinRate,
                                           Estimate LexiconReward, double TokenEntropy, double Distinct1, double Distinct2, double MeanLength)
{
    /// <summary>Every number, by the name the report uses (standard errors as <c>*_se</c>).</summary>
    public IEnumerable<KeyValuePair<string, double>> Named()
    {
        foreach (var (name, e) in new[] { ("forward_kl", ForwardKl), ("reverse_kl", ReverseKl), ("kl_to_pi0", KlToReference), ("win_rate", WinRate), ("lexicon_reward", LexiconReward) })
        {
            yield return new(name, e.Mean);
            yield return new(name + "_se", e.StandardError);
        }
        yield return new("token_entropy", TokenEntropy);
        yield return new("distinct_1", Distinct1);
        yield return new("distinct_2", Distinct2);
        yield return new("mean_length", MeanLength);
    }
}

/// <summary>
/// Evaluates models of responses against the task's π* on the held-out prompts. The samples of π* (forward KL) and
/// of π0 (the win rate's opponent) are drawn once, with their exact ln π*, and shared by every model evaluated:
/// differences between methods are then not blurred by different draws of the reference samples.
/// </summary>
public sealed class KnownTargetEvaluator
{
    private readonly KnownTargetTask task;
    private readonly ulong seed;
    private readonly List<PromptResponse> targetSamples, opponentSamples;
    private readonly double[] targetLogProbs, opponentTargetLogProbs;

    public int SamplesPerPrompt { get; }
    /// <summary>Samples per estimate (evaluation prompts × samples per prompt).</summary>
    public int Samples => targetSamples.Count;
    /// <summary>The task whose target, prompts and sampling settings the evaluation uses.</summary>
    public KnownTargetTask Task => task;

    public KnownTargetEvaluator(KnownTargetTask task, int samplesPerPrompt, ulong seed)
    {
        if (samplesPerPrompt < 1) throw new ArgumentException($"at least one sample per prompt (got {samplesPerPrompt})");
        if (task.EvalPrompts.Count * samplesPerPrompt < 2) throw new ArgumentException("standard errors need at least 2 samples");
        this.task = task;
        this.seed = seed;
        SamplesPerPrompt = samplesPerPrompt;
        var prompts = KnownTargetTask.Repeat(task.EvalPrompts, samplesPerPrompt);
        var fromTarget = task.SampleAll(task.Target, prompts, KnownTargetTask.Mix(seed, 1));
        targetSamples = prompts.Select((p, i) => new PromptResponse(p, fromTarget[i].Tokens)).ToList();
        targetLogProbs = task.TargetAndReferenceLogProbs(targetSamples).Target;
        using var reference = new GptPolicy(task.Reference, new());
        var fromReference = task.SampleAll(new PolicyResponseModel(reference), prompts, KnownTargetTask.Mix(seed, 2));
        opponentSamples = prompts.Select((p, i) => new PromptResponse(p, fromReference[i].Tokens)).ToList();
        opponentTargetLogProbs = task.TargetAndReferenceLogProbs(opponentSamples).Target;
    }

    /// <summary>All the metrics of <paramref name="model"/>; its own samples use the evaluator's seed (the same for every model).</summary>
    public KnownTargetEvaluation Evaluate(IResponseModel model)
    {
        // Forward KL on the shared π* samples.
        var modelOnTarget = KnownTargetTask.ScoreAll(model, targetSamples);
        var forward = Estimate.Of(targetLogProbs.Select((t, i) => t - modelOnTarget[i]));

        // The model's own samples: reverse KL, KL to π0, win rate, lexicon reward, entropy, distinct-n.
        var prompts = targetSamples.Select(s => s.Prompt).ToList();
        var drawn = task.SampleAll(model, prompts, KnownTargetTask.Mix(seed, 3));
        var own = prompts.Select((p, i) => new PromptResponse(p, drawn[i].Tokens)).ToList();
        var entropySums = new double[own.Count];
        var lnModel = KnownTargetTask.ScoreAll(model, own, entropySums);
        var (lnTarget, lnReference) = task.TargetAndReferenceLogProbs(own);
        var reverse = Estimate.Of(lnModel.Select((m, i) => m - lnTarget[i]));
        var toReference = Estimate.Of(lnModel.Select((m, i) => m - lnReference[i]));
        var win = Estimate.Of(lnTarget.Select((t, i) => KnownTargetTask.Sigmoid(task.Settings.Gamma * (t - opponentTargetLogProbs[i]))));
        var weights = task.Target.TokenWeights.ToArray();
        var reward = Estimate.Of(own.Select(s => LexiconTilt.Reward(weights, s.Response)));
        long tokens = own.Sum(s => (long)s.Response.Length);
        double entropy = entropySums.Sum() / tokens;
        return new KnownTargetEvaluation(forward, reverse, toReference, win, reward, entropy,
            Distinct(own, 1), Distinct(own, 2), (double)tokens / own.Count);
    }

    /// <summary>
    /// How well a reward function orders fresh π0 responses the way π* does: over pairs of the shared π0 samples on the
    /// same held-out prompt (samples 2i and 2i + 1), the share with sign(R̂(a) − R̂(b)) = sign(ln π*(a) − ln π*(b)).
    /// </summary>
    public double RewardAccuracy(Objectives.IRewardFunction reward)
    {
        var rewards = new float[opponentSamples.Count];
        for (int start = 0; start < rewards.Length; start += KnownTargetTask.ChunkSequences)
        {
            int m = Math.Min(KnownTargetTask.ChunkSequences, rewards.Length - start);
            reward.Score(opponentSamples.GetRange(start, m), rewards.AsSpan(start, m));
        }
        int agree = 0, pairs = 0;
        for (int i = 0; i + 1 < rewards.Length; i += 2)
        {
            if (!ReferenceEquals(opponentSamples[i].Prompt, opponentSamples[i + 1].Prompt)) continue;
            pairs++;
            if ((rewards[i] - rewards[i + 1] > 0) == (opponentTargetLogProbs[i] - opponentTargetLogProbs[i + 1] > 0)) agree++;
        }
        return pairs == 0 ? double.NaN : (double)agree / pairs;
    }

    /// <summary>Distinct n-grams (within each response) over all n-grams of all responses; 0 when there are none.</summary>
    public static double Distinct(IReadOnlyList<PromptResponse> sequences, int n)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        long total = 0;
        foreach (var s in sequences)
            for (int i = 0; i + n <= s.Response.Length; i++)
            {
                total++;
                seen.Add(string.Join(',', s.Response.AsSpan(i, n).ToArray()));
            }
        return total == 0 ? 0 : (double)seen.Count / total;
    }
}
