using System.Diagnostics;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Gpu;
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
/// Pretraining (next-token prediction) over a token stream: gradient accumulation, warmup + cosine
/// schedule, global-norm clipping, AdamW, periodic validation, NaN/Inf guard. Deterministic for a seed
/// and thread count, and resumable bit-identically from <see cref="TrainerState"/>.
/// </summary>
public sealed class LanguageModelTrainer
{
    private readonly Gpt model;
    private readonly GpuGpt? gpu;
    private readonly int[] validation;
    private readonly LanguageModelTrainingOptions options;
    private readonly LearningRateSchedule schedule;
    private readonly GptBatch batch;
    private readonly float[] logProbs, dLogProbs;

    /// <summary>Steps completed so far.</summary>
    public int Step { get; private set; }

    /// <summary>
    /// Test hook: called after the backward pass of every step, before the NaN/Inf checks, so a test can poison a
    /// gradient or weight and see the guard stop the step (tests/Reliability/NonFiniteGuardTests).
    /// </summary>
    internal Action<Gpt>? AfterBackward { get; set; }
    public TokenWindowLoader Loader { get; }
    public LanguageModelTrainingOptions Options => options;

    /// <param name="gpu">when given, every step and evaluation runs on it (same config as <paramref name="model"/>);
    /// <paramref name="model"/> is then the host copy: call <see cref="UploadModel"/> after initialising or
    /// restoring it, and <see cref="DownloadModel"/> before saving it</param>
    public LanguageModelTrainer(Gpt model, int[] trainTokens, int[] validationTokens, LanguageModelTrainingOptions options, GpuGpt? gpu = null)
    {
        this.model = model;
        this.gpu = gpu;
        if (gpu is not null && gpu.Config != model.Config)
            throw new ArgumentException($"the GPU model's config {gpu.Config} differs from the host model's {model.Config}", nameof(gpu));
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

    /// <summary>Copies the host model's parameters and moments to the GPU model (no-op on the CPU path).</summary>
    public void UploadModel() => gpu?.Upload(model);

    /// <summary>Copies the GPU model's parameters, gradients and moments into the host model (no-op on the CPU path).</summary>
    public void DownloadModel() => gpu?.Download(model);

    /// <summary>
    /// Forward and backward over the step's A micro-batches (on <paramref name="gpu"/> when given, else the host model),
    /// accumulating gradients: loss = −(1/(A·N)) Σ log-probs ⇒ d loss / d logprob = −1/(A·N). Returns −Σ log-probs and N·A.
    /// </summary>
    private (double LossSum, int Tokens) RunMicroBatches(GpuGpt? gpu)
    {
        double lossSum = 0;
        int tokens = 0;
        for (int micro = 0; micro < options.GradientAccumulation; micro++)
        {
            batch.SetLanguageModelling(Loader.Next());
            Array.Fill(dLogProbs, -1f / (options.GradientAccumulation * batch.TokenCount));
            if (gpu is not null) gpu.ForwardBackward(batch, dLogProbs, logProbs);
            else model.ForwardBackward(batch, dLogProbs, logProbs);
            foreach (float lp in logProbs) lossSum -= lp;
            tokens += batch.TokenCount;
        }
        return (lossSum, tokens);
    }

    /// <summary>One optimizer step over <see cref="LanguageModelTrainingOptions.GradientAccumulation"/> micro-batches.</summary>
    public StepReport TrainStep()
    {
        if (gpu is not null) return TrainStepOnGpu(gpu);
        var watch = Stopwatch.StartNew();
        model.ZeroGradients();
        var (lossSum, tokens) = RunMicroBatches(null);
        AfterBackward?.Invoke(model);
        float loss = (float)(lossSum / tokens);
        if (!float.IsFinite(loss))
            throw NonFiniteValueException.ForLoss(Step + 1, "the training loss", NonFiniteElement.FindFirst(model.Layout, model.Parameters));

        // Clipping leaves gradients whose norm is NaN/Inf unscaled, so the element named is the one the backward produced.
        float norm = options.GradientClip > 0
            ? (float)GradientNorm.ClipByGlobalNorm(model.Gradients, options.GradientClip).Norm
            : (float)GradientNorm.GlobalNorm(model.Gradients);
        if (!float.IsFinite(norm))
            throw NonFiniteValueException.ForGradient(Step + 1, NonFiniteElement.FindFirst(model.Layout, model.Gradients));

        float lr = schedule.At(Step);
        AdamWOptimizer.Step(model, Step + 1, lr, options.AdamW);
        Step++;
        double milliseconds = watch.Elapsed.TotalMilliseconds; // the training step alone, without evaluation
        float? validationLoss = null;
        if (options.EvaluateEvery > 0 && (Step % options.EvaluateEvery == 0 || Step == options.Steps))
            validationLoss = Evaluate();
        return new StepReport(Step, loss, norm, lr, tokens, milliseconds, validationLoss);
    }

    /// <summary>
    /// <see cref="TrainStep"/> on the GPU model: the same micro-batches, loss, clipping, schedule and AdamW
    /// (weight decay on the matrices), with the NaN/Inf guard naming the tensor after copying the model back.
    /// </summary>
    private StepReport TrainStepOnGpu(GpuGpt gpu)
    {
        var watch = Stopwatch.StartNew();
        gpu.ZeroGradients();
        var (lossSum, tokens) = RunMicroBatches(gpu);
        float loss = (float)(lossSum / tokens);
        if (!float.IsFinite(loss))
        {
            gpu.Download(model);
            throw NonFiniteValueException.ForLoss(Step + 1, "the training loss", NonFiniteElement.FindFirst(model.Layout, model.Parameters));
        }
        float norm = (float)gpu.ClipGradients(options.GradientClip).Norm;
        if (!float.IsFinite(norm))
        {
            gpu.Download(model);
            throw NonFiniteValueException.ForGradient(Step + 1, NonFiniteElement.FindFirst(model.Layout, model.Gradients));
        }
        float lr = schedule.At(Step);
        var s = options.AdamW;
        gpu.AdamWStep(Step + 1, lr, s.Beta1, s.Beta2, s.Epsilon, s.WeightDecay);
        gpu.Synchronize();
        Step++;
        double milliseconds = watch.Elapsed.TotalMilliseconds;
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
            if (gpu is not null) gpu.Forward(batch, logProbs);
            else model.Forward(batch, logProbs);
            foreach (float lp in logProbs) sum -= lp;
        }
        return (float)(sum / (batches * batch.TokenCount));
    }
}
