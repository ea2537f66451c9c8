using System.Diagnostics;
using DistAlign.Transformer.Model;

namespace DistAlign.Transformer.Training;

/// <summary>Settings of a pretraining / language-modelling run.</summary>
public sealed record LanguageModelTrainingOptions
{
    public int Steps { get; init; } = 1000;
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
    public LanguageModelTrainer(Gpt model, int[] trainTokens, int[] validationTokens, LanguageModelTrainingOptions options, IGptEngine? engine = null)
    {
        this.model = model;
        this.engine = engine ?? model;
        if (this.engine.Config != model.Config)
            throw new ArgumentException($"the engine's config {this.engine.Config} differs from the host model's {model.Config}", nameof(engine));
        this.options = options.Validate();
        validation = validationTokens;
        schedule = new LearningRateSchedule(options.LearningRate, options.WarmupSteps, options.Steps, options.MinLearningRateFraction);
        batch = new GptBatch(options.Rows, options.Length);
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
    /// loss = −(1/(A·N)) Σ log-probs ⇒ ∂loss/∂logprob = −1/(A·N); then clipping, the schedule's learning rate and AdamW.
    /// A non-finite loss or gradient norm throws before the weights change, naming the first non-finite tensor.
    /// </summary>
    public StepReport TrainStep()
    {
        var watch = Stopwatch.StartNew();
        engine.ZeroGradients();
        double lossSum = 0;
        int tokens = 0;
        for (int micro = 0; micro < options.GradientAccumulation; micro++)
        {
            batch.SetLanguageModelling(Loader.Next());
            Array.Fill(dLogProbs, -1f / (options.GradientAccumulation * batch.TokenCount));
            engine.ForwardBackward(batch, dLogProbs, logProbs);
            foreach (float lp in logProbs) lossSum -= lp;
            tokens += batch.TokenCount;
        }
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
        double milliseconds = watch.Elapsed.TotalMilliseconds; // the training step alone, without evaluation
        float? validationLoss = null;
        if (options.EvaluateEvery > 0 && (Step % options.EvaluateEvery == 0 || Step == options.Steps))
            validationLoss = Evaluate();
        return new StepReport(Step, loss, norm, lr, tokens, milliseconds, validationLoss);
    }

    /// <summary>
    /// Mean next-token loss over the first <see cref="LanguageModelTrainingOptions.EvaluationBatches"/>
    /// windows of the validation stream (the same windows every time, so values are comparable).
    /// </summary>
    public float Evaluate()
    {
        var loader = new TokenWindowLoader(validation, options.Rows, options.Length, options.Seed, shuffle: false);
        int batches = Math.Min(options.EvaluationBatches, loader.WindowCount);
        double sum = 0;
        for (int i = 0; i < batches; i++)
        {
            batch.SetLanguageModelling(loader.Next());
            engine.Forward(batch, logProbs);
            foreach (float lp in logProbs) sum -= lp;
        }
        return (float)(sum / (batches * batch.TokenCount));
    }
}
