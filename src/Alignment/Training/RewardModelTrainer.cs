using System.Diagnostics;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Reward;
using DistAlign.Engine.Distributed;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Training;

/// <summary>Settings of a reward-model run. Everything here is part of the run's identity (resume checks it).</summary>
public sealed record RewardTrainingOptions : PairTrainingOptions
{
    /// <summary>The Bradley–Terry loss (variant <see cref="PairwiseLossVariant.RewardModel"/>, margin, centring).</summary>
    public PairwiseLossSettings Loss { get; init; } = new(PairwiseLossVariant.RewardModel);

    public RewardTrainingOptions Validate()
    {
        ValidateShared();
        if (Loss.Variant != PairwiseLossVariant.RewardModel) throw new ArgumentException($"a reward model trains with the RewardModel loss, not {Loss.Variant}");
        try { Loss.Validate(); }
        catch (ArgumentOutOfRangeException e) { throw new ArgumentException(e.Message, e); }
        return this;
    }
}

/// <summary>
/// The training loop of a Bradley–Terry <see cref="RewardModel"/> on preference pairs.
/// </summary>
/// <remarks>
/// <list type="bullet">
/// <item><b>Data</b>: split once into train and eval by <see cref="AlignmentTrainer.Split"/> (Philox seed, stream 0); the train
/// pairs are visited in an order reshuffled per epoch by Philox (seed, epoch + 1); a batch may straddle two epochs.
/// The cursor (epoch, index) is all the data state there is.</item>
/// <item><b>Step</b>: zero gradients, loss and backward, global-norm clip, then AdamW at the warmup+cosine rate. A non-finite
/// loss or gradient norm throws <see cref="NonFiniteValueException"/> before the update.</item>
/// <item><b>Metrics</b>: the pairwise loss's (<c>loss</c>, <c>accuracy</c>, <c>margin</c>, <c>mean_reward</c>), then <c>lr</c>,
/// <c>grad_norm</c>, <c>tokens_per_second</c>, <c>elapsed_seconds</c> and, when evaluated, <c>eval_*</c>.</item>
/// <item><b>Resume</b>: weights, head, AdamW moments, step and cursor restore the run bit-identically (same thread count).</item>
/// </list>
/// </remarks>
public sealed class RewardModelTrainer
{
    private readonly RewardModel model;
    private readonly IReadOnlyList<PreferencePair> pairs;
    private readonly RewardTrainingOptions options;
    private readonly LearningRateSchedule schedule;
    private readonly int[] trainIndices, evalIndices;
    private int[] order = [];
    private readonly Stopwatch clock = new();
    private readonly DataParallelSettings parallel;
    private double elapsedBefore;

    /// <summary>Steps completed.</summary>
    public int Step { get; private set; }
    /// <summary>Data cursor: epoch over the train pairs.</summary>
    public int Epoch { get; private set; }
    /// <summary>Data cursor: next position in this epoch's order.</summary>
    public int Index { get; private set; }
    public RewardTrainingOptions Options => options;
    public RewardModel Model => model;
    public int TrainPairs => trainIndices.Length;
    public int EvalPairs => evalIndices.Length;
    /// <summary>The run's position (what a checkpoint saves besides weights and moments).</summary>
    public TrainerState State => new(Step, Epoch, Index);
    /// <summary>Total seconds of training so far (across resumes, as far as the caller passed them to <see cref="Restore"/>).</summary>
    public double ElapsedSeconds => elapsedBefore + clock.Elapsed.TotalSeconds;

    /// <param name="model">trained in place</param>
    /// <param name="pairs">all pairs (train and eval are split here)</param>
    /// <param name="parallel">the ranks of a data-parallel job (default: one process): every rank walks the same cursor and
    /// takes an equal share of each batch's pairs; the gradients are summed over the ranks before clipping</param>
    public RewardModelTrainer(RewardModel model, IReadOnlyList<PreferencePair> pairs, RewardTrainingOptions options, DataParallelSettings? parallel = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(pairs);
        this.options = options.Validate();
        this.model = model;
        this.pairs = pairs;
        schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.MinLearningRateFraction);
        (trainIndices, evalIndices) = AlignmentTrainer.Split(pairs.Count, options.EvalFraction, options.Seed);
        if (trainIndices.Length == 0) throw new ArgumentException($"no training pairs left ({pairs.Count} pairs, eval fraction {options.EvalFraction})");
        this.parallel = parallel ?? DataParallelSettings.SingleProcess;
        this.parallel.Group.ShareOf(options.BatchPairs, "the pairs of a batch (--batch)");
        Seek(0, 0);
    }

    /// <summary>Continues from a saved <see cref="State"/> (weights, head and moments are restored separately).</summary>
    public void Restore(TrainerState state, double elapsedSeconds = 0)
    {
        if (state.Step < 0 || state.Step > options.Steps)
            throw new CheckpointMismatchException($"checkpoint step {state.Step} is outside 0 … {options.Steps}");
        if (state.LoaderEpoch < 0 || state.LoaderIndex < 0 || state.LoaderIndex > trainIndices.Length)
            throw new CheckpointMismatchException($"checkpoint data cursor ({state.LoaderEpoch}, {state.LoaderIndex}) does not fit the {trainIndices.Length} training pairs");
        Step = state.Step;
        Seek(state.LoaderEpoch, state.LoaderIndex);
        elapsedBefore = elapsedSeconds;
    }

    private void Seek(int epoch, int index)
    {
        Epoch = epoch;
        Index = index;
        var permutation = new PhiloxStream(options.Seed, (ulong)epoch + 1).Permutation(trainIndices.Length);
        order = new int[permutation.Length];
        for (int i = 0; i < order.Length; i++) order[i] = trainIndices[permutation[i]];
    }

    private List<PreferencePair> NextBatch()
    {
        var batch = new List<PreferencePair>(options.BatchPairs);
        for (int i = 0; i < options.BatchPairs; i++)
        {
            if (Index == order.Length) Seek(Epoch + 1, 0);
            batch.Add(pairs[order[Index++]]);
        }
        return batch;
    }

    /// <summary>One optimizer step, then an evaluation when due.</summary>
    /// <exception cref="NonFiniteValueException">The loss or the gradient is not finite; the weights are unchanged.</exception>
    public AlignmentStepReport TrainStep()
    {
        if (Step >= options.Steps) throw new InvalidOperationException($"the run is complete ({options.Steps} steps)");
        clock.Start();
        var watch = Stopwatch.StartNew();
        var batch = NextBatch();
        model.ZeroGradients();
        // Across N ranks each takes an equal share of the pairs: the mean loss is the mean of the ranks' means (weight 1/N).
        var (first, count) = parallel.Group.ShareOf(batch.Count, "the pairs of a batch (--batch)");
        double share = 1.0 / parallel.Group.Size;
        var pairwise = model.Loss(batch.GetRange(first, count), options.Loss, withGradient: true, gradientScale: share);
        var named = pairwise.Named().Select(kv => new KeyValuePair<string, double>(kv.Name, kv.Value)).ToList();
        if (parallel.IsDistributed)
        {
            model.AllReduceGradients(parallel.Group, $"gradients of step {Step + 1}");
            named = PairTrainingOptions.SumOverRanks(parallel.Group, [.. named.Select(kv => new KeyValuePair<string, double>(kv.Key, kv.Value * share))],
                                                     $"metrics of step {Step + 1}");
        }
        double loss = named[0].Value;
        double norm = model.ClipGradients(options.GradientClip);
        if (!double.IsFinite(loss)) throw Stop(NonFiniteValueException.ForLoss(Step + 1, "the reward-model loss"));
        if (!double.IsFinite(norm)) throw Stop(NonFiniteValueException.ForGradient(Step + 1, model.FirstNonFiniteGradient()));
        float lr = schedule.At(Step);
        model.OptimizerStep(Step + 1, lr);
        Step++;
        double seconds = watch.Elapsed.TotalSeconds;
        clock.Stop();
        long tokens = 0;
        foreach (var p in batch) tokens += 2L * p.Prompt.Length + p.Chosen.Length + p.Rejected.Length;
        parallel.CheckWeightsWhenDue(Step, model.WeightsHash);
        var metrics = named;
        PairTrainingOptions.AddStepFigures(metrics, lr, norm, tokens, seconds, ElapsedSeconds);
        if (evalIndices.Length > 0 && options.EvaluationDue(Step))
            foreach (var kv in Evaluate()) metrics.Add(new("eval_" + kv.Key, kv.Value));
        return new AlignmentStepReport(Step, metrics);
    }

    private Exception Stop(Exception e)
    {
        clock.Stop();
        return e;
    }

    /// <summary>Mean loss and metrics over the held-out pairs (forward only), in chunks of the batch size, weighted by pairs.</summary>
    public IReadOnlyList<KeyValuePair<string, double>> Evaluate()
    {
        var sums = new List<KeyValuePair<string, double>>();
        // Each rank scores a contiguous share of the held-out pairs; the sums are added over the ranks.
        var (from, count) = parallel.Group.PartOf(evalIndices.Length).GetOffsetAndLength(evalIndices.Length);
        int to = from + count;
        for (int start = from; start < to; start += options.BatchPairs)
        {
            int end = Math.Min(to, start + options.BatchPairs);
            var chunk = new List<PreferencePair>(end - start);
            for (int i = start; i < end; i++) chunk.Add(pairs[evalIndices[i]]);
            foreach (var (name, value) in model.Loss(chunk, options.Loss, withGradient: false).Named())
            {
                int at = sums.FindIndex(kv => kv.Key == name);
                if (at < 0) sums.Add(new(name, value * chunk.Count));
                else sums[at] = new(name, sums[at].Value + value * chunk.Count);
            }
        }
        if (parallel.IsDistributed)
        {
            // A rank with no held-out pair names every metric too, so that all ranks add the same vector.
            if (sums.Count == 0)
                sums = [.. (default(PairwiseLossMetrics) with { Variant = options.Loss.Variant }).Named().Select(n => new KeyValuePair<string, double>(n.Name, 0))];
            sums = PairTrainingOptions.SumOverRanks(parallel.Group, sums, $"evaluation after step {Step}");
        }
        return [.. sums.Select(kv => new KeyValuePair<string, double>(kv.Key, kv.Value / evalIndices.Length))];
    }
}

/// <summary>
/// Runs a <see cref="RewardModelTrainer"/> into an output folder, like <see cref="AlignmentRun"/> does for a policy:
/// <c>metrics.jsonl</c> (one JSON line per step) and training checkpoints (<see cref="RewardModel.SaveTraining"/>: backbone,
/// head, all AdamW moments, step and data cursor, options) every N steps and at the end, resumable bit-identically.
/// </summary>
public sealed class RewardModelRun : CheckpointedRun
{
    private readonly RewardModelTrainer trainer;

    /// <param name="optionsJson">the run's identity (options, model, data hash): a resume with other settings is refused</param>
    public RewardModelRun(RewardModelTrainer trainer, string directory, string tokenizerSpec, string optionsJson, int checkpointEvery)
        : base(directory, tokenizerSpec, optionsJson, checkpointEvery)
    {
        ArgumentNullException.ThrowIfNull(trainer);
        this.trainer = trainer;
    }

    public RewardModelTrainer Trainer => trainer;

    protected override int CompletedSteps => trainer.Step;
    protected override int TotalSteps => trainer.Options.Steps;
    protected override AlignmentStepReport TrainStep() => trainer.TrainStep();
    protected override void SaveCheckpoint() => trainer.Model.SaveTraining(Directory, TokenizerSpec, trainer.State, OptionsJson);
    protected override TrainerState LoadCheckpoint(string checkpoint) => trainer.Model.LoadTraining(checkpoint).State;
    protected override void Restore(TrainerState state, double elapsedSeconds) => trainer.Restore(state, elapsedSeconds);
}
