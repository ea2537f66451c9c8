using System.Diagnostics;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Random;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Training;

/// <summary>What PPO maximises (OBJECTIVES.md, "RLHF with PPO" and "3. Reverse-KL minimisation").</summary>
public enum PpoObjective
{
    /// <summary>E_π[R̂] − β·KL(π ‖ π0): per-token reward −β(ln π_old − ln π0), R̂ on the last token.</summary>
    Rlhf,
    /// <summary>E_π[R̂] + γ·H(π) − β·KL(π ‖ π0): per-token reward −(β+γ) ln π_old + β ln π0 (or the exact entropy bonus).</summary>
    ReverseKl,
}

/// <summary>How reverse-KL minimisation gets its γ·H(π) term.</summary>
public enum EntropyBonus
{
    /// <summary>−γ ln π_old(y_t) inside each token's reward (a one-sample estimate; the default).</summary>
    InReward,
    /// <summary>γ × the exact per-token entropy of π(· | prefix), added to the loss with its gradient.</summary>
    Exact,
}

/// <summary>Settings of a PPO run (RLHF or reverse KL). Everything here is part of the run's identity.</summary>
public sealed record PpoOptions
{
    public PpoObjective Objective { get; init; } = PpoObjective.Rlhf;
    /// <summary>β, the weight of KL(π ‖ π0).</summary>
    public double Beta { get; init; } = 0.05;
    /// <summary>γ, reverse KL's entropy weight (the preference temperature); ignored by RLHF.</summary>
    public double Gamma { get; init; }
    public EntropyBonus Entropy { get; init; } = EntropyBonus.InReward;
    /// <summary>PPO iterations (rollout + training).</summary>
    public int Steps { get; init; } = 100;
    /// <summary>Prompts per rollout, one response each.</summary>
    public int PromptsPerIteration { get; init; } = 8;
    /// <summary>Passes over each rollout batch.</summary>
    public int Epochs { get; init; } = 4;
    /// <summary>Minibatches per pass (each one optimizer step).</summary>
    public int Minibatches { get; init; } = 2;
    /// <summary>GAE λ.</summary>
    public double Lambda { get; init; } = 0.95;
    /// <summary>GAE discount.</summary>
    public double Discount { get; init; } = 1.0;
    /// <summary>Policy ratio clip ε.</summary>
    public double ClipRange { get; init; } = 0.2;
    /// <summary>Weight of the value loss in the total loss.</summary>
    public double ValueCoefficient { get; init; } = 0.1;
    /// <summary>Value clip range (in reward units).</summary>
    public double ValueClip { get; init; } = 0.2;
    /// <summary>Whiten advantages over each rollout (with <see cref="EntropyBonus.Exact"/>: centre them only).</summary>
    public bool WhitenAdvantages { get; init; } = true;
    /// <summary>
    /// Place a reward that is a sum over tokens (<see cref="ITokenRewardFunction"/>, e.g. γ·ln π_r) token by token rather than
    /// all on the last token: a token's return leaves out rewards earned before it (same expected gradient, less variance).
    /// Other rewards are unaffected.
    /// </summary>
    public bool TokenRewards { get; init; } = true;
    /// <summary>Score given instead of R̂ to a response that did not end with the end-of-text token (null: off).</summary>
    public float? MissingEndPenalty { get; init; }
    public SamplingOptions Sampling { get; init; } = new(16);
    public float LearningRate { get; init; } = 1e-5f;
    /// <summary>Warmup in iterations (the rate is constant within an iteration).</summary>
    public int WarmupSteps { get; init; }
    public float MinLearningRateFraction { get; init; } = 1f;
    /// <summary>Global gradient-norm clip per optimizer step (0 = off).</summary>
    public float GradientClip { get; init; } = 1f;
    public ulong Seed { get; init; } = 1;

    public PpoOptions Validate()
    {
        if (!(Beta >= 0) || double.IsInfinity(Beta)) throw new ArgumentException($"β must be a finite number ≥ 0 (got {Beta})");
        if (!(Gamma >= 0) || double.IsInfinity(Gamma)) throw new ArgumentException($"γ must be a finite number ≥ 0 (got {Gamma})");
        if (Objective == PpoObjective.Rlhf && Gamma != 0) throw new ArgumentException("γ belongs to the reverse-KL objective; RLHF has none");
        if (Steps < 0) throw new ArgumentException($"steps must be ≥ 0 (got {Steps})");
        if (PromptsPerIteration < 1) throw new ArgumentException($"a rollout needs at least one prompt (got {PromptsPerIteration})");
        if (Epochs < 1) throw new ArgumentException($"PPO epochs must be ≥ 1 (got {Epochs})");
        if (Minibatches < 1 || Minibatches > PromptsPerIteration)
            throw new ArgumentException($"minibatches must lie in 1 … {PromptsPerIteration} (the prompts per iteration), got {Minibatches}");
        if (!(Lambda >= 0 && Lambda <= 1)) throw new ArgumentException($"GAE λ must lie in [0, 1] (got {Lambda})");
        if (!(Discount >= 0 && Discount <= 1)) throw new ArgumentException($"the discount must lie in [0, 1] (got {Discount})");
        if (!(ClipRange > 0)) throw new ArgumentException($"the clip range must be > 0 (got {ClipRange})");
        if (!(ValueCoefficient >= 0)) throw new ArgumentException($"the value coefficient must be ≥ 0 (got {ValueCoefficient})");
        if (!(ValueClip > 0)) throw new ArgumentException($"the value clip must be > 0 (got {ValueClip})");
        if (MissingEndPenalty is float p && !float.IsFinite(p)) throw new ArgumentException($"the missing-end penalty must be finite (got {p})");
        if (Sampling.Validate().MaxNewTokens < 1) throw new ArgumentException("sampled responses need at least one token");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new ArgumentException($"learning rate must be a positive number (got {LearningRate})");
        if (WarmupSteps < 0) throw new ArgumentException($"warmup steps must be ≥ 0 (got {WarmupSteps})");
        if (!(GradientClip >= 0)) throw new ArgumentException($"gradient clip must be ≥ 0 (got {GradientClip})");
        return this;
    }

    /// <summary>Optimizer steps per iteration.</summary>
    public int OptimizerStepsPerIteration => Epochs * Minibatches;
}

/// <summary>
/// PPO for RLHF and reverse-KL minimisation on any <see cref="IValuePolicy"/> (the GPT with a value head on its
/// backbone, or the tabular policy with a value table).
/// </summary>
/// <remarks>
/// One <see cref="TrainStep"/> is one iteration:
/// <list type="number">
/// <item><b>Rollout</b>: the next <see cref="PpoOptions.PromptsPerIteration"/> prompts (an <see cref="EpochCursor"/>), one
/// response each sampled from π with the seed (seed, step); then, with the same kernel as training, ln π_old and
/// V_old per response token, ln π0 per token from the reference, and R̂ per response (or the missing-end penalty).</item>
/// <item><b>Rewards</b>: r_t = −β(ln π_old − ln π0) (RLHF), −(β+γ) ln π_old + β ln π0 (reverse KL), R̂ added on the
/// last token; GAE with discount 1 and λ = 0.95 per response; advantages whitened over the rollout's tokens (only
/// centred with the exact entropy bonus).</item>
/// <item><b>Training</b>: <see cref="PpoOptions.Epochs"/> passes, each over a fresh Philox permutation of the responses
/// cut into <see cref="PpoOptions.Minibatches"/> minibatches; per minibatch L = clipped policy loss + c_v · clipped
/// value loss (− γ·mean entropy with <see cref="EntropyBonus.Exact"/>), means over its response tokens; gradient
/// clipping, then AdamW (optimizer step number = iteration × epochs × minibatches + k + 1).</item>
/// </list>
/// Nothing random is carried between iterations: every seed derives from (seed, step, …), so weights, moments,
/// step and prompt cursor restore a run bit-identically.
/// </remarks>
public sealed class PpoTrainer
{
    private readonly IValuePolicy policy;
    private readonly IPolicy reference;
    private readonly IRewardFunction reward;
    private readonly IReadOnlyList<int[]> prompts;
    private readonly PpoOptions options;
    private readonly LearningRateSchedule schedule;
    private readonly EpochCursor cursor;
    private readonly Stopwatch clock = new();
    private readonly DataParallelSettings parallel;
    private double elapsedBefore;

    /// <summary>Iterations completed.</summary>
    public int Step { get; private set; }
    public PpoOptions Options => options;
    /// <summary>The run's position (what a checkpoint saves besides weights and moments).</summary>
    public TrainerState State => new(Step, cursor.Epoch, cursor.Index);
    /// <summary>Total seconds of training so far (across resumes, as far as the caller passed them to <see cref="Restore"/>).</summary>
    public double ElapsedSeconds => elapsedBefore + clock.Elapsed.TotalSeconds;

    /// <param name="policy">π with its value head, trained in place</param>
    /// <param name="reference">π0, frozen</param>
    /// <param name="reward">R̂, queried only</param>
    /// <param name="prompts">the prompts to roll out from (each at least one token)</param>
    /// <param name="parallel">the ranks of a data-parallel job (default: one process): each rank rolls out an equal share of
    /// every iteration's prompts, the rollouts are gathered so that every rank holds the whole one, and each minibatch's
    /// sequences are shared out again for the gradient, which is summed over the ranks</param>
    public PpoTrainer(IValuePolicy policy, IPolicy reference, IRewardFunction reward, IReadOnlyList<int[]> prompts, PpoOptions options,
                      DataParallelSettings? parallel = null)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(reference);
        ArgumentNullException.ThrowIfNull(reward);
        ArgumentNullException.ThrowIfNull(prompts);
        this.options = options.Validate();
        if (prompts.Count == 0) throw new ArgumentException("PPO needs at least one prompt");
        for (int i = 0; i < prompts.Count; i++)
            if (prompts[i].Length == 0) throw new ArgumentException($"prompt {i} is empty (it needs at least one token, e.g. <|endoftext|>)");
        this.policy = policy;
        this.reference = reference;
        this.reward = reward;
        this.prompts = prompts;
        schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, Math.Max(1, options.Steps), options.MinLearningRateFraction);
        cursor = new EpochCursor(Enumerable.Range(0, prompts.Count).ToArray(), options.Seed);
        this.parallel = parallel ?? DataParallelSettings.SingleProcess;
        this.parallel.Group.ShareOf(options.PromptsPerIteration, "the prompts of an iteration (--batch)");
    }

    /// <summary>Continues from a saved <see cref="State"/> (weights and moments are restored separately).</summary>
    public void Restore(TrainerState state, double elapsedSeconds = 0)
    {
        if (state.Step < 0 || state.Step > options.Steps)
            throw new CheckpointMismatchException($"checkpoint step {state.Step} is outside 0 … {options.Steps}");
        if (state.LoaderIndex > prompts.Count)
            throw new CheckpointMismatchException($"checkpoint prompt cursor {state.LoaderIndex} is beyond the {prompts.Count} prompts");
        Step = state.Step;
        cursor.Seek(state.LoaderEpoch, state.LoaderIndex);
        elapsedBefore = elapsedSeconds;
    }

    private bool UsesExactEntropy => options.Objective == PpoObjective.ReverseKl && options.Entropy == EntropyBonus.Exact && options.Gamma > 0;

    /// <summary>A rollout: the sequences and, per response token (flat, in sequence order), what training needs.</summary>
    public sealed record Rollout(
        List<PromptResponse> Sequences, int[] TokenStart, float[] OldLogProbs, float[] OldValues, float[] ReferenceLogProbs,
        float[] Scores, float[] Rewards, float[] Advantages, float[] Returns, int Ended, double SamplingSeconds);

    /// <summary>
    /// Samples, scores and computes advantages for the given prompts (no gradient, no optimizer step). Across ranks each
    /// rank rolls out its share of the prompts (drawing from the Philox streams of those rows) and every rank receives the
    /// whole rollout, as one process would have collected it; advantages are whitened over the whole rollout.
    /// </summary>
    public Rollout Collect(IReadOnlyList<int[]> batchPrompts, ulong seed)
    {
        Rollout rollout;
        if (parallel.IsDistributed)
        {
            var (first, count) = parallel.Group.ShareOf(batchPrompts.Count, "the prompts of an iteration (--batch)");
            rollout = Gather(batchPrompts, CollectUnwhitened(batchPrompts.Skip(first).Take(count).ToList(), seed, first));
        }
        else rollout = CollectUnwhitened(batchPrompts, seed, 0);
        // With the exact entropy bonus the advantages keep their units (centred only): dividing them by their std,
        // which shrinks to 0 as π nears its optimum, would outweigh the γ·H term and move the fixed point to RLHF's.
        if (options.WhitenAdvantages) Ppo.Whiten(rollout.Advantages, scale: !UsesExactEntropy);
        return rollout;
    }

    // The rollout of these prompts, rows drawing from Philox streams firstStream, firstStream + 1, …; advantages not yet whitened.
    private Rollout CollectUnwhitened(IReadOnlyList<int[]> batchPrompts, ulong seed, int firstStream)
    {
        long sampleStart = Stopwatch.GetTimestamp();
        var samples = policy.Sample(batchPrompts, options.Sampling with { FirstStream = firstStream }, seed);
        double samplingSeconds = Stopwatch.GetElapsedTime(sampleStart).TotalSeconds;
        var sequences = new List<PromptResponse>(samples.Length);
        for (int i = 0; i < samples.Length; i++)
        {
            if (samples[i].Tokens.Length == 0) throw new InvalidOperationException($"the sampler returned an empty response for prompt {i}");
            sequences.Add(new PromptResponse(batchPrompts[i], samples[i].Tokens));
        }
        int s = sequences.Count, tokens = PolicyScores.TokenCount(sequences);
        var start = new int[s + 1];
        for (int i = 0; i < s; i++) start[i + 1] = start[i] + sequences[i].Response.Length;

        var oldLogProbs = new float[tokens];
        var oldValues = new float[tokens];
        policy.ScoreWithValues(sequences, oldLogProbs, oldValues);
        var refLogProbs = new float[tokens];
        reference.Score(sequences, refLogProbs);
        var scores = new float[s];
        // A reward that is a sum over tokens is placed token by token (its sum is the sequence's score); any other on the last token.
        float[]? tokenScores = null;
        if (options.TokenRewards && reward is ITokenRewardFunction perToken)
        {
            tokenScores = new float[tokens];
            perToken.ScoreTokens(sequences, tokenScores);
            PolicyScores.SumPerSequence(sequences, tokenScores, scores, default);
        }
        else reward.Score(sequences, scores);
        int ended = 0;
        for (int i = 0; i < s; i++)
        {
            if (samples[i].Ended) ended++;
            else if (options.MissingEndPenalty is float penalty)
            {
                scores[i] = penalty;
                if (tokenScores is not null) tokenScores.AsSpan(start[i], start[i + 1] - start[i]).Clear();   // the penalty replaces them
            }
        }

        // r_t = −β(ln π_old − ln π0) − γ ln π_old (reverse KL, entropy in the reward), R̂ on the last token (or r̂_t on each).
        double beta = options.Beta;
        double gamma = options.Objective == PpoObjective.ReverseKl && options.Entropy == EntropyBonus.InReward ? options.Gamma : 0;
        var rewards = new float[tokens];
        for (int t = 0; t < tokens; t++) rewards[t] = (float)(-beta * ((double)oldLogProbs[t] - refLogProbs[t]) - gamma * oldLogProbs[t]);
        for (int i = 0; i < s; i++)
        {
            bool penalised = !samples[i].Ended && options.MissingEndPenalty is not null;
            if (tokenScores is null || penalised) rewards[start[i + 1] - 1] += scores[i];
            else for (int t = start[i]; t < start[i + 1]; t++) rewards[t] += tokenScores[t];
        }

        var advantages = new float[tokens];
        var returns = new float[tokens];
        for (int i = 0; i < s; i++)
        {
            int a = start[i], n = start[i + 1] - a;
            Ppo.Gae(rewards.AsSpan(a, n), oldValues.AsSpan(a, n), options.Discount, options.Lambda, advantages.AsSpan(a, n), returns.AsSpan(a, n));
        }
        return new Rollout(sequences, start, oldLogProbs, oldValues, refLogProbs, scores, rewards, advantages, returns, ended, samplingSeconds);
    }

    // Every rank's share of a rollout, concatenated in rank order: the rollout one process would have collected.
    private Rollout Gather(IReadOnlyList<int[]> batchPrompts, Rollout mine)
    {
        var group = parallel.Group;
        string what = $"rollout of iteration {Step + 1}";
        var lengths = group.AllGatherConcatenated<int>(mine.Sequences.Select(q => q.Response.Length).ToArray(), $"{what}: response lengths");
        var tokens = group.AllGatherConcatenated<int>(mine.Sequences.SelectMany(q => q.Response).ToArray(), $"{what}: response tokens");
        var sequences = new List<PromptResponse>(lengths.Length);
        var start = new int[lengths.Length + 1];
        for (int i = 0; i < lengths.Length; i++)
        {
            start[i + 1] = start[i] + lengths[i];
            sequences.Add(new PromptResponse(batchPrompts[i], tokens[start[i]..start[i + 1]]));
        }
        float[] All(float[] values, string name) => group.AllGatherConcatenated<float>(values, $"{what}: {name}");
        int ended = (int)group.Sum(mine.Ended, $"{what}: ended responses");
        return new Rollout(sequences, start, All(mine.OldLogProbs, "ln π_old"), All(mine.OldValues, "V_old"), All(mine.ReferenceLogProbs, "ln π0"),
                           All(mine.Scores, "scores"), All(mine.Rewards, "rewards"), All(mine.Advantages, "advantages"), All(mine.Returns, "returns"),
                           ended, mine.SamplingSeconds);
    }

    /// <summary>One PPO iteration: rollout, then epochs × minibatches optimizer steps.</summary>
    /// <exception cref="NonFiniteValueException">A loss or gradient norm is not finite (the optimizer step that met it is not applied).</exception>
    public AlignmentStepReport TrainStep()
    {
        if (Step >= options.Steps) throw new InvalidOperationException($"the run is complete ({options.Steps} iterations)");
        clock.Start();
        var rolloutWatch = Stopwatch.StartNew();
        var batchPrompts = cursor.Next(options.PromptsPerIteration).Select(i => prompts[i]).ToList();
        var rollout = Collect(batchPrompts, AlignmentTrainer.MixSeed(options.Seed, (ulong)Step, 0));
        double rolloutSeconds = rolloutWatch.Elapsed.TotalSeconds;

        var trainWatch = Stopwatch.StartNew();
        float lr = schedule.At(Step);
        bool exactEntropy = UsesExactEntropy;
        int s = rollout.Sequences.Count;
        double policyLoss = 0, valueLoss = 0, clipFraction = 0, valueClipFraction = 0, approxKl = 0, ratio = 0, entropy = 0, gradNorm = 0;
        int updates = 0;
        for (int epoch = 0; epoch < options.Epochs; epoch++)
        {
            var order = new PhiloxStream(AlignmentTrainer.MixSeed(options.Seed, (ulong)Step, (ulong)epoch + 1), 0).Permutation(s);
            for (int mb = 0; mb < options.Minibatches; mb++)
            {
                int from = mb * s / options.Minibatches, to = (mb + 1) * s / options.Minibatches;
                var m = TrainMinibatch(rollout, order[from..to], exactEntropy, lr, Step * options.OptimizerStepsPerIteration + updates + 1);
                policyLoss += m.Policy.Loss;
                valueLoss += m.Value.Loss;
                clipFraction += m.Policy.ClipFraction;
                valueClipFraction += m.Value.ClipFraction;
                approxKl += m.Policy.ApproxKl;
                ratio += m.Policy.MeanRatio;
                entropy += m.MeanEntropy;
                gradNorm += m.GradientNorm;
                updates++;
            }
        }
        double trainSeconds = trainWatch.Elapsed.TotalSeconds;
        Step++;
        clock.Stop();
        parallel.CheckWeightsWhenDue(Step, policy.WeightsHash);

        // Per-response sums, as TRL reports them: KL = Σ_t (ln π_old − ln π0), entropy = −Σ_t ln π_old.
        double kl = 0, sampledEntropy = 0, scoreSum = 0, length = 0;
        for (int i = 0; i < s; i++)
        {
            for (int t = rollout.TokenStart[i]; t < rollout.TokenStart[i + 1]; t++)
            {
                kl += (double)rollout.OldLogProbs[t] - rollout.ReferenceLogProbs[t];
                sampledEntropy -= rollout.OldLogProbs[t];
            }
            scoreSum += rollout.Scores[i];
            length += rollout.Sequences[i].Response.Length;
        }
        kl /= s;
        sampledEntropy /= s;
        double meanScore = scoreSum / s;
        double rlhfReward = meanScore - options.Beta * kl;
        double objective = options.Objective == PpoObjective.ReverseKl ? rlhfReward + options.Gamma * sampledEntropy : rlhfReward;
        double tokens = rollout.OldLogProbs.Length;
        var metrics = new List<KeyValuePair<string, double>>
        {
            new("loss", (policyLoss + options.ValueCoefficient * valueLoss) / updates),
            new("objective/kl", kl),
            new("objective/entropy", sampledEntropy),
            new("objective/scores", meanScore),
            new("objective/rlhf_reward", rlhfReward),
            new("objective/value", objective),
            new("policy/approxkl_avg", approxKl / updates),
            new("policy/clipfrac_avg", clipFraction / updates),
            new("loss/policy_avg", policyLoss / updates),
            new("loss/value_avg", valueLoss / updates),
            new("val/clipfrac_avg", valueClipFraction / updates),
            new("val/ratio", ratio / updates),
            new("val/num_eos_tokens", rollout.Ended),
            new("response_length", length / s),
        };
        if (exactEntropy) metrics.Add(new("policy/entropy_avg", entropy / updates));
        metrics.Add(new("lr", lr));
        metrics.Add(new("grad_norm", gradNorm / updates));
        metrics.Add(new("rollout_seconds", rolloutSeconds));
        metrics.Add(new("sampling_seconds", rollout.SamplingSeconds));
        metrics.Add(new("train_seconds", trainSeconds));
        metrics.Add(new("sampling_tokens_per_second", rollout.SamplingSeconds > 0 ? tokens / rollout.SamplingSeconds : 0));
        metrics.Add(new("elapsed_seconds", ElapsedSeconds));
        metrics.Add(new("epoch", cursor.Progress));
        return new AlignmentStepReport(Step, metrics);
    }

    private readonly record struct MinibatchMetrics(PolicyLossMetrics Policy, ValueLossMetrics Value, double MeanEntropy, double GradientNorm);

    private MinibatchMetrics TrainMinibatch(Rollout rollout, int[] allMembers, bool exactEntropy, float lr, int optimizerStep)
    {
        // Across ranks each takes a contiguous share of the minibatch's sequences; its token means are weighted by its share
        // of the tokens, w = n/N, so that the sums over the ranks are the minibatch's means (w = 1 in one process).
        var members = allMembers[parallel.Group.PartOf(allMembers.Length)];
        int totalTokens = 0;
        foreach (int i in allMembers) totalTokens += rollout.TokenStart[i + 1] - rollout.TokenStart[i];
        var sequences = new List<PromptResponse>(members.Length);
        foreach (int i in members) sequences.Add(rollout.Sequences[i]);
        int n = PolicyScores.TokenCount(sequences);
        double w = (double)n / totalTokens;
        var oldLogProbs = new float[n];
        var oldValues = new float[n];
        var advantages = new float[n];
        var returns = new float[n];
        int at = 0;
        foreach (int i in members)
        {
            int a = rollout.TokenStart[i], len = rollout.TokenStart[i + 1] - a;
            rollout.OldLogProbs.AsSpan(a, len).CopyTo(oldLogProbs.AsSpan(at));
            rollout.OldValues.AsSpan(a, len).CopyTo(oldValues.AsSpan(at));
            rollout.Advantages.AsSpan(a, len).CopyTo(advantages.AsSpan(at));
            rollout.Returns.AsSpan(a, len).CopyTo(returns.AsSpan(at));
            at += len;
        }

        policy.ZeroGradients();
        var logProbs = new float[n];
        var values = new float[n];
        var entropies = exactEntropy ? new float[n] : [];
        var dLogProbs = new float[n];
        var dValues = new float[n];
        PolicyLossMetrics pm = default;
        ValueLossMetrics vm = default;
        double meanEntropy = 0;
        float[] dEntropies = [];
        if (n > 0)   // a rank whose share of a small minibatch is empty adds nothing but takes part in the exchanges
        {
            policy.ScoreWithValues(sequences, logProbs, values, entropies);
            pm = Ppo.ClippedPolicyLoss(logProbs, oldLogProbs, advantages, options.ClipRange, dLogProbs);
            vm = Ppo.ClippedValueLoss(values, oldValues, returns, options.ValueClip, dValues);
            for (int t = 0; t < n; t++) dValues[t] = (float)(dValues[t] * options.ValueCoefficient);
            if (exactEntropy)
            {
                // L −= γ·mean_t H_t  ⇒  ∂L/∂H_t = −γ/n (n: the minibatch's tokens over all ranks).
                foreach (float h in entropies) meanEntropy += h;
                meanEntropy /= n;
                dEntropies = new float[n];
                Array.Fill(dEntropies, (float)(-options.Gamma / totalTokens));
            }
        }
        if (parallel.IsDistributed)
        {
            for (int t = 0; t < n; t++) { dLogProbs[t] = (float)(dLogProbs[t] * w); dValues[t] = (float)(dValues[t] * w); }
            double[] sums = [pm.Loss * w, pm.ClipFraction * w, pm.ApproxKl * w, pm.MeanRatio * w, vm.Loss * w, vm.ClipFraction * w, meanEntropy * w];
            parallel.Group.AllReduceSum(sums, $"PPO metrics of optimizer step {optimizerStep}");
            pm = new PolicyLossMetrics(sums[0], sums[1], sums[2], sums[3]);
            vm = new ValueLossMetrics(sums[4], sums[5]);
            meanEntropy = sums[6];
        }
        double loss = pm.Loss + options.ValueCoefficient * vm.Loss - (exactEntropy ? options.Gamma * meanEntropy : 0);
        if (!double.IsFinite(loss)) throw Stop(new NonFiniteValueException(Step + 1, "the PPO loss"));
        if (n > 0) policy.BackwardWithValues(dLogProbs, dValues, dEntropies);
        if (parallel.IsDistributed) policy.AllReduceGradients(parallel.Group, $"gradients of optimizer step {optimizerStep}");
        double norm = policy.ClipGradients(0);
        if (!double.IsFinite(norm)) throw Stop(NonFiniteValueException.ForGradient(Step + 1, policy.FirstNonFiniteGradient()));
        if (options.GradientClip > 0) policy.ClipGradients(options.GradientClip);
        policy.OptimizerStep(optimizerStep, lr);
        return new MinibatchMetrics(pm, vm, meanEntropy, norm);
    }

    private Exception Stop(Exception e)
    {
        clock.Stop();
        return e;
    }
}
