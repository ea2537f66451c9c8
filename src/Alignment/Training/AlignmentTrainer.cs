using System.Diagnostics;
using System.Text;
using System.Text.Json;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Training;

/// <summary>Which offline objective an <see cref="AlignmentTrainer"/> optimises.</summary>
public enum AlignmentObjective
{
    /// <summary>Supervised fine-tuning on the chosen responses (<see cref="SftObjective"/>).</summary>
    Sft,
    /// <summary>A pairwise preference loss (DPO family, IPO, PMLE ± KL) (<see cref="OfflinePreferenceObjective"/>).</summary>
    Preference,
    /// <summary>Preference distillation or REBEL on pairs drawn per step and scored by a reward model (<see cref="OnPolicyPreferenceObjective"/>).</summary>
    OnPolicy,
}

/// <summary>Settings of an offline alignment run. Everything here is part of the run's identity (resume checks it).</summary>
public sealed record AlignmentTrainingOptions : PairTrainingOptions
{
    public AlignmentObjective Objective { get; init; } = AlignmentObjective.Preference;
    /// <summary>The pairwise loss (ignored for SFT).</summary>
    public PairwiseLossSettings Loss { get; init; } = new(PairwiseLossVariant.DpoSigmoid);
    /// <summary>β·KL(π ‖ π0) from samples (PMLE); null or β = 0: off.</summary>
    public KlRegularizer? Kl { get; init; }
    public int GradientAccumulation { get; init; } = 1;
    /// <summary>On-policy objectives: where each step's pairs come from.</summary>
    public PairSource PairSource { get; init; } = PairSource.Policy;
    /// <summary>On-policy objectives and the KL term: how responses are sampled.</summary>
    public SamplingOptions Sampling { get; init; } = new(16);

    public AlignmentTrainingOptions Validate()
    {
        ValidateShared();
        if (GradientAccumulation < 1) throw new ArgumentException($"gradient accumulation must be ≥ 1 (got {GradientAccumulation})");
        if (Objective == AlignmentObjective.OnPolicy)
        {
            try { Loss.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new ArgumentException(e.Message, e); }
            if (Loss.Variant is not (PairwiseLossVariant.Distillation or PairwiseLossVariant.Rebel))
                throw new ArgumentException($"the on-policy objectives are distillation and REBEL, not {Loss.Variant}");
            if (Kl is { Beta: > 0 } && Loss.Variant != PairwiseLossVariant.Distillation)
                throw new ArgumentException("the sampled KL regulariser goes with preference distillation (REBEL has none)");
        }
        if (Objective == AlignmentObjective.Preference)
        {
            try { Loss.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new ArgumentException(e.Message, e); }
            if (Loss.Variant is PairwiseLossVariant.RewardModel or PairwiseLossVariant.Rebel or PairwiseLossVariant.Distillation)
                throw new ArgumentException($"{Loss.Variant} is not an offline preference objective of this trainer");
            if (Kl is { Beta: > 0 } && Loss.Variant != PairwiseLossVariant.Pmle)
                throw new ArgumentException("the sampled KL regulariser goes with PMLE (the DPO family's reference term is implicit)");
        }
        return this;
    }

    /// <summary>True when the loss reads cached reference log-probs ln π0.</summary>
    public bool UsesReferenceLogProbs => Objective == AlignmentObjective.Preference && Loss.UsesReference;

    /// <summary>True when the loss samples from π and scores under π0, or draws its pairs from π0.</summary>
    public bool UsesReferencePolicy => Objective != AlignmentObjective.Sft && Kl is { Beta: > 0 }
        || Objective == AlignmentObjective.OnPolicy && PairSource == PairSource.Reference;
}

/// <summary>What one optimizer step (or one evaluation) measured: TRL-named metrics in a fixed order.</summary>
/// <param name="Step">steps completed after this one (1-based)</param>
/// <param name="Metrics">name → value, "loss" first, then the objective's metrics, then the run's
/// (<c>lr</c>, <c>grad_norm</c>, <c>tokens_per_second</c>, <c>elapsed_seconds</c>) and, after an evaluation, <c>eval_*</c></param>
public sealed record AlignmentStepReport(int Step, IReadOnlyList<KeyValuePair<string, double>> Metrics)
{
    public double this[string name] => Metrics.First(m => m.Key == name).Value;
    public bool Has(string name) => Metrics.Any(m => m.Key == name);
}

/// <summary>
/// The training loop of the offline alignment objectives on any <see cref="IPolicy"/>: SFT on the chosen responses,
/// the DPO family and IPO (with reference log-probs given per pair), and PMLE with an optional sampled KL to π0.
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item><b>Data</b>: the pairs are split once into train and eval by a Philox shuffle of (seed, stream 0); the train
/// pairs are visited in an order reshuffled per epoch by Philox (seed, epoch + 1), micro-batch after micro-batch
/// (a micro-batch may straddle two epochs). The cursor (epoch, index) is all the data state there is.</item>
/// <item><b>Step</b>: A micro-batches each add 1/A times the gradient of their mean loss (so the result is the
/// mean over micro-batches), then clipped to <see cref="PairTrainingOptions.GradientClip"/>,
/// then AdamW with the warmup+cosine rate. A non-finite loss or gradient norm throws <see cref="NonFiniteValueException"/>
/// before the optimizer runs. KL samples use the seed (seed, step, micro-batch): nothing random is carried between steps.</item>
/// <item><b>Resume</b>: weights, AdamW moments, step and cursor restore the run bit-identically (same thread count).</item>
/// </list>
/// </remarks>
public sealed class AlignmentTrainer
{
    /// <summary>Name of the metrics file in the output folder.</summary>
    public const string MetricsFileName = "metrics.jsonl";

    private readonly IPolicy policy;
    private readonly IPolicy? reference;
    private readonly IReadOnlyList<PreferencePair> pairs;
    private readonly float[]? referenceLogProbs;
    private readonly AlignmentTrainingOptions options;
    private readonly LearningRateSchedule schedule;
    private readonly OfflinePreferenceObjective? preference;
    private readonly OnPolicyPreferenceObjective? onPolicy;
    private readonly IRewardFunction? reward;
    private readonly SftObjective sft = new();
    private readonly int[] trainIndices, evalIndices;
    private readonly EpochCursor cursor;
    private readonly Stopwatch clock = new();
    private readonly DataParallelSettings parallel;
    private double elapsedBefore;

    /// <summary>Steps completed.</summary>
    public int Step { get; private set; }
    /// <summary>Data cursor: epoch over the train pairs.</summary>
    public int Epoch => cursor.Epoch;
    /// <summary>Data cursor: next position in this epoch's order.</summary>
    public int Index => cursor.Index;
    public AlignmentTrainingOptions Options => options;
    public int TrainPairs => trainIndices.Length;
    public int EvalPairs => evalIndices.Length;
    /// <summary>The run's position (what a checkpoint saves besides weights and moments).</summary>
    public TrainerState State => new(Step, Epoch, Index);

    /// <param name="policy">π, trained in place</param>
    /// <param name="reference">π0 for the KL term (needed when <see cref="AlignmentTrainingOptions.UsesReferencePolicy"/>)</param>
    /// <param name="pairs">all pairs (train and eval are split here)</param>
    /// <param name="referenceLogProbs">ln π0 per sequence of <paramref name="pairs"/>, interleaved (2i chosen, 2i+1 rejected),
    /// as <see cref="ReferenceLogProbCache"/> returns them; needed by the DPO family and IPO</param>
    /// <param name="reward">R̂, needed by the on-policy objectives (distillation, REBEL)</param>
    /// <param name="parallel">the ranks of a data-parallel job (default: one process): every rank walks the same cursor and
    /// takes an equal share of each micro-batch's pairs (SFT and the offline preference losses without a sampled KL)</param>
    public AlignmentTrainer(IPolicy policy, IPolicy? reference, IReadOnlyList<PreferencePair> pairs, float[]? referenceLogProbs,
                            AlignmentTrainingOptions options, IRewardFunction? reward = null, DataParallelSettings? parallel = null)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(pairs);
        this.options = options.Validate();
        if (options.UsesReferenceLogProbs && (referenceLogProbs is null || referenceLogProbs.Length != 2 * pairs.Count))
            throw new ArgumentException($"{options.Loss.Variant} needs reference log-probs for all {2 * pairs.Count} sequences, got {referenceLogProbs?.Length ?? 0}");
        if (options.UsesReferencePolicy && reference is null) throw new ArgumentException("the KL regulariser needs the reference policy π0");
        this.policy = policy;
        this.reference = reference;
        this.pairs = pairs;
        this.referenceLogProbs = referenceLogProbs;
        if (options.Objective == AlignmentObjective.Preference) preference = new OfflinePreferenceObjective(options.Loss, options.Kl);
        if (options.Objective == AlignmentObjective.OnPolicy)
        {
            this.reward = reward ?? throw new ArgumentException($"{options.Loss.Variant} needs a reward model R̂");
            onPolicy = new OnPolicyPreferenceObjective(options.Loss, reward, options.Sampling, options.Kl, options.PairSource);
        }
        schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.MinLearningRateFraction);
        this.parallel = parallel ?? DataParallelSettings.SingleProcess;
        this.parallel.Group.ShareOf(options.BatchPairs, "the pairs of a batch (--batch)");

        (trainIndices, evalIndices) = Split(pairs.Count, options.EvalFraction, options.Seed);
        if (trainIndices.Length == 0) throw new ArgumentException($"no training pairs left ({pairs.Count} pairs, eval fraction {options.EvalFraction})");
        cursor = new EpochCursor(trainIndices, options.Seed);
    }

    /// <summary>The train/eval split: a Philox (seed, stream 0) permutation; the first ⌈f·N⌉ (at most N − 1) are held out, both sorted.</summary>
    public static (int[] Train, int[] Eval) Split(int count, double evalFraction, ulong seed)
    {
        int evalCount = evalFraction > 0 ? Math.Min(Math.Max(0, count - 1), (int)Math.Ceiling(evalFraction * count)) : 0;
        var permutation = new PhiloxStream(seed, 0).Permutation(count);
        var eval = permutation[..evalCount];
        var train = permutation[evalCount..];
        Array.Sort(eval);
        Array.Sort(train);
        return (train, eval);
    }

    /// <summary>Continues from a saved <see cref="State"/> (weights and moments are restored separately).</summary>
    public void Restore(TrainerState state, double elapsedSeconds = 0)
    {
        if (state.Step < 0 || state.Step > options.Steps)
            throw new CheckpointMismatchException($"checkpoint step {state.Step} is outside 0 … {options.Steps}");
        if (state.LoaderIndex > trainIndices.Length)
            throw new CheckpointMismatchException($"checkpoint data cursor {state.LoaderIndex} is beyond the {trainIndices.Length} training pairs");
        Step = state.Step;
        cursor.Seek(state.LoaderEpoch, state.LoaderIndex);
        elapsedBefore = elapsedSeconds;
    }

    /// <summary>Total seconds of training so far (across resumes, as far as the caller passed them to <see cref="Restore"/>).</summary>
    public double ElapsedSeconds => elapsedBefore + clock.Elapsed.TotalSeconds;

    /// <summary>One optimizer step over <see cref="AlignmentTrainingOptions.GradientAccumulation"/> micro-batches, then an evaluation when due.</summary>
    /// <exception cref="NonFiniteValueException">The loss or the gradient is not finite; the weights are unchanged.</exception>
    public AlignmentStepReport TrainStep()
    {
        if (Step >= options.Steps) throw new InvalidOperationException($"the run is complete ({options.Steps} steps)");
        clock.Start();
        var watch = Stopwatch.StartNew();
        int a = options.GradientAccumulation;
        policy.ZeroGradients();
        var sums = new List<KeyValuePair<string, double>>();
        long tokens = 0;
        // Across N ranks each takes an equal share of the micro-batch's pairs: a mean over pairs is the mean of the ranks'
        // means (weight 1/N); SFT's mean over tokens weighs each rank by its share of the tokens.
        double rankShare = 1.0 / parallel.Group.Size;
        for (int micro = 0; micro < a; micro++)
        {
            var indices = cursor.Next(options.BatchPairs);
            var (firstPair, pairCount) = parallel.Group.ShareOf(indices.Length, "the pairs of a batch (--batch)");
            var mine = indices[firstPair..(firstPair + pairCount)];
            var batch = Gather(mine);
            // Sampled terms draw from the Philox streams of this share's rows of the batch (see OnPolicyPreferenceObjective).
            int klFirstStream = options.Kl is { Beta: > 0 } k && firstPair > 0
                ? k.SamplesPerPrompt * OfflinePreferenceObjective.DistinctPrompts(Gather(indices[..firstPair]).Select(p => p.Prompt)).Count : 0;
            IEnumerable<(string, double)> named;
            if (options.Objective == AlignmentObjective.Sft)
            {
                var sequences = SftObjective.ChosenSequences(batch);
                double tokenShare = parallel.IsDistributed
                    ? (double)PolicyScores.TokenCount(sequences) / PolicyScores.TokenCount(SftObjective.ChosenSequences(Gather(indices))) : 1.0;
                var m = sft.Accumulate(policy, sequences, tokenShare / a);
                named = SftNamed(m, tokenShare, rankShare);
                tokens += m.Tokens;
            }
            else if (options.Objective == AlignmentObjective.OnPolicy)
            {
                ulong sampleSeed = MixSeed(options.Seed, (ulong)Step, (ulong)micro);
                var m = onPolicy!.Accumulate(policy, reference, batch, sampleSeed, rankShare / a, firstPair, klFirstStream);
                named = OnPolicyNamed(m).Select(kv => (kv.Item1, kv.Item2 * rankShare));
                tokens += m.Tokens;
            }
            else
            {
                ulong sampleSeed = MixSeed(options.Seed, (ulong)Step, (ulong)micro);
                var refs = options.UsesReferenceLogProbs ? GatherReference(mine) : default;
                var m = preference!.Accumulate(policy, batch, refs, reference, sampleSeed, rankShare / a, klFirstStream);
                named = PreferenceNamed(m).Select(kv => (kv.Item1, kv.Item2 * rankShare));
                foreach (var p in batch) tokens += p.Prompt.Length * 2 + p.Chosen.Length + p.Rejected.Length;
            }
            Add(sums, named);
        }
        if (parallel.IsDistributed)
        {
            // One exchange for the gradients, one for the metrics (and the token count) of this step.
            policy.AllReduceGradients(parallel.Group, $"gradients of step {Step + 1}");
            Span<double> tokenCount = [tokens];
            sums = PairTrainingOptions.SumOverRanks(parallel.Group, sums, $"metrics of step {Step + 1}", tokenCount);
            tokens = (long)tokenCount[0];
        }
        var metrics = sums.Select(kv => new KeyValuePair<string, double>(kv.Key, kv.Value / a)).ToList();
        double loss = metrics[0].Value;
        if (!double.IsFinite(loss)) throw Stop(NonFiniteValueException.ForLoss(Step + 1, "the training loss"));

        // Each micro-batch added (1/A)·∇ of its mean loss, so the gradients are the mean over the A micro-batches.
        double norm = policy.ClipGradients(0);
        if (!double.IsFinite(norm)) throw Stop(NonFiniteValueException.ForGradient(Step + 1, policy.FirstNonFiniteGradient()));
        if (options.GradientClip > 0) policy.ClipGradients(options.GradientClip);

        float lr = schedule.At(Step);
        policy.OptimizerStep(Step + 1, lr);
        Step++;
        parallel.CheckWeightsWhenDue(Step, policy.WeightsHash);
        double seconds = watch.Elapsed.TotalSeconds;
        clock.Stop();
        PairTrainingOptions.AddStepFigures(metrics, lr, norm, tokens, seconds, ElapsedSeconds);
        metrics.Add(new("epoch", cursor.Progress));
        if (evalIndices.Length > 0 && options.EvaluationDue(Step))
            foreach (var kv in Evaluate()) metrics.Add(new("eval_" + kv.Key, kv.Value));
        return new AlignmentStepReport(Step, metrics);
    }

    private Exception Stop(Exception e)
    {
        clock.Stop();
        return e;
    }

    /// <summary>
    /// Mean loss and metrics over the held-out pairs, forward only (no gradient, no sampling: the KL term is not
    /// evaluated), in chunks of the micro-batch size; means are weighted by pairs (SFT: by response tokens).
    /// </summary>
    public IReadOnlyList<KeyValuePair<string, double>> Evaluate()
    {
        var sums = new List<KeyValuePair<string, double>>();
        double weight = 0;
        // Each rank scores a contiguous share of the held-out pairs; sums and weights are added over the ranks.
        var heldOut = evalIndices[parallel.Group.PartOf(evalIndices.Length)];
        for (int start = 0; start < heldOut.Length; start += options.BatchPairs)
        {
            var indices = heldOut[start..Math.Min(heldOut.Length, start + options.BatchPairs)];
            var batch = Gather(indices);
            double w;
            IEnumerable<(string, double)> named;
            if (options.Objective == AlignmentObjective.Sft)
            {
                var sequences = SftObjective.ChosenSequences(batch);
                var lp = new float[PolicyScores.TokenCount(sequences)];
                policy.Score(sequences, lp);
                double sum = 0;
                foreach (float x in lp) sum += x;
                w = lp.Length;
                named = [("loss", -sum / lp.Length), ("mean_token_logp", sum / lp.Length)];
            }
            else
            {
                var sequences = OfflinePreferenceObjective.Sequences(batch);
                var tokenLogProbs = new float[PolicyScores.TokenCount(sequences)];
                policy.Score(sequences, tokenLogProbs);
                var logps = new float[sequences.Count];
                var counts = new int[sequences.Count];
                PolicyScores.SumPerSequence(sequences, tokenLogProbs, logps, counts);
                var chosen = new int[batch.Count];
                var rejected = new int[batch.Count];
                for (int i = 0; i < batch.Count; i++) { chosen[i] = 2 * i; rejected[i] = 2 * i + 1; }
                var refs = options.UsesReferenceLogProbs ? GatherReference(indices) : null;
                var settings = options.Loss;
                float[]? labels = null;
                if (options.Objective == AlignmentObjective.OnPolicy)
                {
                    // Held-out pairs of the dataset, soft-labelled by R̂: the distillation loss at γ, whose minimiser over
                    // the pair is γΔ ln π = ΔR̂ (REBEL: γ = 1/η, as its per-step target π_t·e^(ηR̂) moves Δ ln π by ηΔR̂).
                    var rewards = new float[sequences.Count];
                    reward!.Score(sequences, rewards);
                    labels = new float[batch.Count];
                    for (int i = 0; i < batch.Count; i++) labels[i] = (float)(1.0 / (1.0 + Math.Exp(-((double)rewards[2 * i] - rewards[2 * i + 1]))));
                    settings = new PairwiseLossSettings(PairwiseLossVariant.Distillation,
                        Gamma: settings.Variant == PairwiseLossVariant.Distillation ? settings.Gamma : settings.Eta != 0 ? 1.0 / settings.Eta : 1.0);
                }
                var m = PairwiseBradleyTerryLoss.Forward(settings, new PairwiseLossBatch
                {
                    Logps = logps,
                    RefLogps = refs,
                    TokenCounts = counts,
                    Chosen = chosen,
                    Rejected = rejected,
                    Labels = labels,
                }, new float[batch.Count]);
                w = batch.Count;
                named = m.Named();
            }
            Add(sums, named.Select(kv => (kv.Item1, kv.Item2 * w)));
            weight += w;
        }
        if (parallel.IsDistributed)
        {
            // A rank with no held-out pair still names every metric (scoring nothing) so that all ranks add the same vector.
            if (sums.Count == 0) Add(sums, EvaluationNames().Select(n => (n, 0.0)));
            Span<double> total = [weight];
            sums = PairTrainingOptions.SumOverRanks(parallel.Group, sums, $"evaluation after step {Step}", total);
            weight = total[0];
        }
        return sums.Select(kv => new KeyValuePair<string, double>(kv.Key, kv.Value / weight)).ToList();
    }

    // Weighted for the sum over ranks: token means by the rank's share of the tokens, sequence means by its share of the
    // pairs, counts as they are (all weights 1 in one process).
    private static IEnumerable<(string, double)> SftNamed(SftMetrics m, double tokenShare = 1, double rankShare = 1) =>
    [
        ("loss", m.Loss * tokenShare),
        ("mean_token_logp", m.MeanTokenLogProb * tokenShare),
        ("logps/chosen", m.MeanSequenceLogProb * rankShare),
        ("num_tokens", m.Tokens),
    ];

    // The names Evaluate reports, in its order (for a rank that held out no pair).
    private IEnumerable<string> EvaluationNames() => options.Objective == AlignmentObjective.Sft
        ? ["loss", "mean_token_logp"]
        : (default(PairwiseLossMetrics) with { Variant = options.Objective == AlignmentObjective.OnPolicy ? PairwiseLossVariant.Distillation : options.Loss.Variant })
            .Named().Select(n => n.Name);

    private IEnumerable<(string, double)> PreferenceNamed(OfflineStepMetrics m)
    {
        // "loss" is the full objective (pairwise + β·KL); the pairwise part alone is kept when they differ.
        yield return ("loss", m.Loss);
        foreach (var (name, value) in m.Pairwise.Named())
            if (name != "loss") yield return (name, value);
        if (options.Kl is { Beta: > 0 })
        {
            yield return ("pairwise_loss", m.Pairwise.Loss);
            yield return ("objective/kl", m.KlEstimate);
        }
    }

    private IEnumerable<(string, double)> OnPolicyNamed(OnPolicyStepMetrics m)
    {
        yield return ("loss", m.Loss);
        foreach (var (name, value) in m.Pairwise.Named())
            if (name != "loss") yield return (name, value);
        yield return ("objective/scores", m.MeanReward);
        if (options.Kl is { Beta: > 0 })
        {
            yield return ("pairwise_loss", m.Pairwise.Loss);
            yield return ("objective/kl", m.KlEstimate);
        }
    }

    private static void Add(List<KeyValuePair<string, double>> sums, IEnumerable<(string Name, double Value)> values)
    {
        foreach (var (name, value) in values)
        {
            int at = sums.FindIndex(kv => kv.Key == name);
            if (at < 0) sums.Add(new(name, value));
            else sums[at] = new(name, sums[at].Value + value);
        }
    }

    private List<PreferencePair> Gather(int[] indices)
    {
        var list = new List<PreferencePair>(indices.Length);
        foreach (int i in indices) list.Add(pairs[i]);
        return list;
    }

    private float[] GatherReference(int[] indices)
    {
        var refs = new float[2 * indices.Length];
        for (int i = 0; i < indices.Length; i++)
        {
            refs[2 * i] = referenceLogProbs![2 * indices[i]];
            refs[2 * i + 1] = referenceLogProbs[2 * indices[i] + 1];
        }
        return refs;
    }

    internal static ulong MixSeed(ulong seed, ulong step, ulong micro)
    {
        // SplitMix64 finaliser over the three words: distinct, well-spread seeds per (seed, step, micro-batch).
        ulong z = seed ^ (step * 0x9E3779B97F4A7C15UL) ^ (micro * 0xD1B54A32D192ED03UL);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    /// <summary>One metrics line as JSON: <c>{"step": N, name: value, …}</c> (non-finite values as null).</summary>
    public static string ToJsonLine(AlignmentStepReport report)
    {
        using var stream = new MemoryStream();
        using (var writer = new Utf8JsonWriter(stream))
        {
            writer.WriteStartObject();
            writer.WriteNumber("step", report.Step);
            foreach (var (name, value) in report.Metrics)
            {
                if (double.IsFinite(value)) writer.WriteNumber(name, value);
                else writer.WriteNull(name);
            }
            writer.WriteEndObject();
        }
        return Encoding.UTF8.GetString(stream.ToArray());
    }
}

/// <summary>
/// Runs an <see cref="AlignmentTrainer"/> on a GPT policy (<see cref="GptPolicy"/>, on any device) or a
/// tilt policy (<see cref="TiltPolicy"/>) into an output folder: <c>metrics.jsonl</c> (one JSON line per step), training checkpoints
/// (<see cref="PolicyCheckpoint"/>: weights, AdamW moments, step and data cursor, options) every N steps and at the end, resumable
/// bit-identically. A GPU policy's state is copied to its host model before each save and back to the device after a restore.
/// </summary>
public sealed class AlignmentRun : CheckpointedRun
{
    private readonly AlignmentTrainer trainer;
    private readonly IPolicy policy;

    /// <param name="policy">the trainer's policy: an <see cref="GptPolicy"/> or a <see cref="TiltPolicy"/></param>
    /// <param name="optionsJson">the run's identity (options, model, data hash): a resume with other settings is refused</param>
    public AlignmentRun(AlignmentTrainer trainer, IPolicy policy, string directory, string tokenizerSpec, string optionsJson, int checkpointEvery)
        : base(directory, tokenizerSpec, optionsJson, checkpointEvery)
    {
        PolicyCheckpoint.CheckSupported(policy);
        this.trainer = trainer;
        this.policy = policy;
    }

    public AlignmentTrainer Trainer => trainer;

    protected override int CompletedSteps => trainer.Step;
    protected override int TotalSteps => trainer.Options.Steps;
    protected override AlignmentStepReport TrainStep() => trainer.TrainStep();
    private (float[] M, float[] V)? gatheredMoments;
    protected override void PrepareCheckpoint() => gatheredMoments = PolicyCheckpoint.GatherMoments(policy);
    protected override void SaveCheckpoint() =>
        PolicyCheckpoint.SaveTraining(policy, Directory, TokenizerSpec, trainer.State, OptionsJson, moments: gatheredMoments);
    protected override TrainerState LoadCheckpoint(string checkpoint) => PolicyCheckpoint.LoadTraining(policy, checkpoint);
    protected override void Restore(TrainerState state, double elapsedSeconds) => trainer.Restore(state, elapsedSeconds);

    /// <summary>Reads the metrics file back as one dictionary per line.</summary>
    public static List<Dictionary<string, double?>> ReadMetrics(string path)
    {
        var rows = new List<Dictionary<string, double?>>();
        foreach (var line in File.ReadAllLines(path))
        {
            if (line.Length == 0) continue;
            using var doc = JsonDocument.Parse(line);
            var row = new Dictionary<string, double?>();
            foreach (var p in doc.RootElement.EnumerateObject())
                row[p.Name] = p.Value.ValueKind == JsonValueKind.Number ? p.Value.GetDouble() : null;
            rows.Add(row);
        }
        return rows;
    }
}

/// <summary>Reference log-probs through the persisted cache, with the log line the CLI prints.</summary>
public static class ReferenceLogProbs
{
    /// <summary>ln π0 for all pairs from <paramref name="cacheDirectory"/> (computed and stored on a miss); logs "cached (hit)" or "computed".</summary>
    public static float[] Get(IPolicy reference, IReadOnlyList<PreferencePair> pairs, string cacheDirectory, Action<string>? log, out bool hit)
    {
        var cache = new ReferenceLogProbCache(cacheDirectory, log);
        var values = cache.GetOrCompute(reference, pairs, out hit);
        log?.Invoke(hit ? "reference log-probs: cached (hit)" : "reference log-probs: computed");
        return values;
    }
}
