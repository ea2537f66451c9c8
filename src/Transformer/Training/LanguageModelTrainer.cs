using System.Diagnostics;
using DistAlign.Engine.Distributed;
using DistAlign.Transformer.Model;

namespace DistAlign.Transformer.Training;

/// <summary>Settings of a pretraining / language-modelling run.</summary>
public sealed record LanguageModelTrainingOptions
{
    public int Steps { get; init; } = 1000;
    /// <summary>Rows of a micro-batch over all ranks (each of N ranks takes Rows/N of them).</summary>
    public int Rows { get; init; } = 8;
    public int Length { get; init; } = 64;
    public int GradientAccumulation { get; init; } = 1;
    public float LearningRate { get; init; } = 1e-3f;
    public int WarmupSteps { get; init; } = 50;
    public float MinLearningRateFraction { get; init; } = 0.1f;
    public AdamWSettings AdamW { get; init; } = new();
    /// <summary>Clip the global gradient norm to this (0 = no clipping).</summary>
    public float GradientClip { get; init; } = 1f;
    /// <summary>Validation loss every this many steps (0 = never; always after the last step).</summary>
    public int EvaluateEvery { get; init; } = 100;
    public int EvaluationBatches { get; init; } = 8;
    public ulong Seed { get; init; } = 1;

    public LanguageModelTrainingOptions Validate()
    {
        if (Steps < 0) throw new ArgumentException($"steps must be ≥ 0 (got {Steps})");
        if (Rows < 1 || Length < 1) throw new ArgumentException($"batch must be at least 1×1 (got {Rows}×{Length})");
        if (GradientAccumulation < 1) throw new ArgumentException($"gradient accumulation must be ≥ 1 (got {GradientAccumulation})");
        if (!(LearningRate > 0) || float.IsInfinity(LearningRate)) throw new ArgumentException($"learning rate must be a positive number (got {LearningRate})");
        if (WarmupSteps < 0) throw new ArgumentException($"warmup steps must be ≥ 0 (got {WarmupSteps})");
        if (GradientClip < 0) throw new ArgumentException($"gradient clip must be ≥ 0 (got {GradientClip})");
        if (EvaluateEvery < 0 || EvaluationBatches < 1) throw new ArgumentException("evaluation interval must be ≥ 0 and evaluation batches ≥ 1");
        return this;
    }
}

/// <summary>What one optimizer step did.</summary>
public readonly record struct StepReport(int Step, float Loss, float GradientNorm, float LearningRate, int Tokens, double Milliseconds, float? ValidationLoss);

/// <summary>
/// Pretraining (next-token prediction) over a token stream on any <see cref="IGptEngine"/>: gradient accumulation,
/// warmup + cosine schedule, global-norm clipping, AdamW, periodic validation, NaN/Inf guard. Deterministic for a seed,
/// engine and thread count, and resumable bit-identically from <see cref="TrainerState"/>.
/// </summary>
public sealed class LanguageModelTrainer
{
    private readonly Gpt model;
    private readonly IGptEngine engine;
    private readonly int[] validation;
    private readonly LanguageModelTrainingOptions options;
    private readonly LearningRateSchedule schedule;
    private readonly DataParallelSettings parallel;
    private readonly int firstRow;   // this rank's rows of each window: [firstRow, firstRow + batch.Rows)
    private readonly GptBatch batch;
    private readonly float[] logProbs, dLogProbs;

    /// <summary>Steps completed so far.</summary>
    public int Step { get; private set; }

    /// <summary>
    /// Test hook: called after the backward pass of every step, before the NaN/Inf checks, so a test can poison a
    /// gradient or weight and see the guard stop the step (tests/Reliability/NonFiniteGuardTests). It receives the host model,
    /// which is the trained one on the CPU engine only: on a device engine poisoning it changes nothing.
    /// </summary>
    internal Action<Gpt>? AfterBackward { get; set; }
    public TokenWindowLoader Loader { get; }
    public LanguageModelTrainingOptions Options => options;

    /// <param name="model">the host model: checkpoints save it and restores write it</param>
    /// <param name="engine">the engine every step and evaluation runs on (same config; default <paramref name="model"/> itself,
    /// the CPU). On another engine call <see cref="UploadModel"/> after initialising or restoring <paramref name="model"/>, and
    /// <see cref="DownloadModel"/> before saving it.</param>
    /// <param name="parallel">the ranks of a data-parallel job (default: one process); every rank reads the same windows and
    /// takes its share of their rows, so the data cursor, and a checkpoint's state, are the same on every rank</param>
    public LanguageModelTrainer(Gpt model, int[] trainTokens, int[] validationTokens, LanguageModelTrainingOptions options, IGptEngine? engine = null,
                                DataParallelSettings? parallel = null)
    {
        this.model = model;
        this.engine = engine ?? model;
        if (this.engine.Config != model.Config)
            throw new ArgumentException($"the engine's config {this.engine.Config} differs from the host model's {model.Config}", nameof(engine));
        this.options = options.Validate();
        validation = validationTokens;
        schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.MinLearningRateFraction);
        this.parallel = parallel ?? DataParallelSettings.SingleProcess;
        (firstRow, int rows) = this.parallel.Group.ShareOf(options.Rows, "the rows of a batch");
        batch = new GptBatch(rows, options.Length);
        logProbs = new float[batch.TokenCount];
        dLogProbs = new float[batch.TokenCount];
        Loader = new TokenWindowLoader(trainTokens, options.Rows, options.Length, options.Seed);
    }

    /// <summary>Where the run is: step and data cursor (what a checkpoint must save besides weights and moments).</summary>
    public TrainerState State => new(Step, Loader.Epoch, Loader.Index);

    /// <summary>Continues from a saved <see cref="State"/> (weights and moments restored separately).</summary>
    public void Restore(TrainerState state)
    {
        Step = state.Step;
        Loader.Seek(state.LoaderEpoch, state.LoaderIndex);
    }

    /// <summary>Copies the host model's parameters and moments to the engine (nothing on the CPU).</summary>
    public void UploadModel() => engine.CopyStateFrom(model);

    /// <summary>Copies the engine's parameters, gradients and moments into the host model (nothing on the CPU).</summary>
    public void DownloadModel() => engine.CopyStateTo(model);

    /// <summary>
    /// One optimizer step over <see cref="LanguageModelTrainingOptions.GradientAccumulation"/> micro-batches of A:
    /// loss = −(1/(A·N)) Σ log-probs ⇒ ∂loss/∂logprob = −1/(A·N), N the tokens of a micro-batch over all ranks; then the
    /// sum of the ranks' gradients, clipping, the schedule's learning rate and AdamW. A non-finite loss or gradient norm
    /// throws (on every rank) before the weights change, naming the first non-finite tensor.
    /// </summary>
    public StepReport TrainStep()
    {
        var watch = Stopwatch.StartNew();
        engine.ZeroGradients();
        double lossSum = 0;
        int tokens = 0;
        int globalTokens = options.Rows * options.Length;
        for (int micro = 0; micro < options.GradientAccumulation; micro++)
        {
            batch.SetLanguageModelling(MyRows(Loader.Next()));
            Array.Fill(dLogProbs, -1f / (options.GradientAccumulation * globalTokens));
            engine.ForwardBackward(batch, dLogProbs, logProbs);
            foreach (float lp in logProbs) lossSum -= lp;
            tokens += globalTokens;
        }
        engine.AllReduceGradients(parallel.Group, $"gradients of step {Step + 1}");
        lossSum = parallel.Group.Sum(lossSum, $"loss of step {Step + 1}");
        AfterBackward?.Invoke(model);
        float loss = (float)(lossSum / tokens);
        if (!float.IsFinite(loss))
            throw NonFiniteValueException.ForLoss(Step + 1, "the training loss", engine.FirstNonFiniteParameter());

        // Clipping leaves gradients whose norm is NaN/Inf unscaled, so the element named is the one the backward produced.
        float norm = (float)engine.ClipGradients(options.GradientClip).Norm;
        if (!float.IsFinite(norm))
            throw NonFiniteValueException.ForGradient(Step + 1, engine.FirstNonFiniteGradient());

        float lr = schedule.At(Step);
        engine.AdamWStep(Step + 1, lr, options.AdamW);
        engine.Synchronize();
        Step++;
        parallel.CheckWeightsWhenDue(Step, () => DataParallelSettings.HashOf(engine));
        double milliseconds = watch.Elapsed.TotalMilliseconds; // the training step alone, without evaluation
        float? validationLoss = null;
        if (options.EvaluateEvery > 0 && (Step % options.EvaluateEvery == 0 || Step == options.Steps))
            validationLoss = Evaluate();
        return new StepReport(Step, loss, norm, lr, tokens, milliseconds, validationLoss);
    }

    /// <summary>
    /// Mean next-token loss over the first <see cref="LanguageModelTrainingOptions.EvaluationBatches"/>
    /// windows of the validation stream (the same windows every time, so values are comparable), each rank scoring its
    /// share of the rows.
    /// </summary>
    public float Evaluate()
    {
        var loader = new TokenWindowLoader(validation, options.Rows, options.Length, options.Seed, shuffle: false);
        int batches = Math.Min(options.EvaluationBatches, loader.WindowCount);
        double sum = 0;
        for (int i = 0; i < batches; i++)
        {
            batch.SetLanguageModelling(MyRows(loader.Next()));
            engine.Forward(batch, logProbs);
            foreach (float lp in logProbs) sum -= lp;
        }
        sum = parallel.Group.Sum(sum, $"validation loss after step {Step}");
        return (float)(sum / (batches * options.Rows * options.Length));
    }

    // This rank's rows of a window of Rows·T + 1 tokens: rows overlap their neighbours by the one target token.
    private ReadOnlySpan<int> MyRows(ReadOnlySpan<int> window) => window.Slice(firstRow * options.Length, batch.Rows * options.Length + 1);
}
