using System.Diagnostics;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Experiments;

/// <summary>The six alignment methods the demo compares, in report order.</summary>
public enum DemoMethod
{
    /// <summary>RLHF: PPO on the reward model with a KL penalty β to π0.</summary>
    Rlhf,
    /// <summary>Reverse KL: PPO on the reward model with the entropy term that makes its optimum π* (OBJECTIVES.md).</summary>
    ReverseKl,
    /// <summary>DPO (sigmoid) on the n pairs.</summary>
    Dpo,
    /// <summary>Preference MLE −ln σ(γ Δ ln π) on the n pairs (+ optional sampled KL to π0).</summary>
    Pmle,
    /// <summary>Preference distillation: pairs sampled on the training prompts, soft labels from the reward model.</summary>
    Distillation,
    /// <summary>REBEL: regression of the policy's log-ratio difference onto η ΔR̂ on its own samples.</summary>
    Rebel,
}

/// <summary>Settings of <c>distalign demo</c> and <c>distalign experiment lm</c>. Defaults: the full run; <see cref="Quick"/>: the CI run.</summary>
public sealed record DemoSettings
{
    public string Tokenizer { get; init; } = "gpt2-k2000";
    /// <summary>π0's shape (vocabulary from the tokenizer).</summary>
    public GptConfig Model { get; init; } = new(Layers: 4, Heads: 4, Channels: 128, VocabSize: 2257, MaxSequenceLength: 64);
    public LanguageModelTrainingOptions Pretraining { get; init; } = new()
    {
        Steps = 1500, Rows = 8, Length = 64, LearningRate = 3e-3f, WarmupSteps = 50,
        AdamW = new AdamWSettings(WeightDecay: 0.1f), EvaluateEvery = 0, EvaluationBatches = 16, Seed = 1,
    };
    public KnownTargetSettings Task { get; init; } = new();
    /// <summary>n: preference pairs every method learns from.</summary>
    public int Pairs { get; init; } = 1024;
    /// <summary>Optimizer steps per method (the same budget for all six).</summary>
    public int Steps { get; init; } = 100;
    /// <summary>Pairs (offline methods) or prompts (online methods) per step.</summary>
    public int BatchPairs { get; init; } = 16;
    public float LearningRate { get; init; } = 1e-4f;
    /// <summary>
    /// The PPO methods' learning rate: each rollout takes epochs × minibatches optimizer steps on noisy sampled advantages,
    /// so they take a tenth of the others' (at 1e-4 RLHF and reverse KL drifted tens of nats from π0 within 100 iterations).
    /// </summary>
    public float PpoLearningRate { get; init; } = 1e-5f;
    public double DpoBeta { get; init; } = 0.1;
    /// <summary>β of PMLE's sampled KL(π ‖ π0); 0 = pure preference MLE.</summary>
    public double PmleKlBeta { get; init; } = 0;
    public double DistillationKlBeta { get; init; } = 0;
    public double RebelEta { get; init; } = 1;
    public double RlhfBeta { get; init; } = 0.1;
    /// <summary>PPO passes over each rollout (each split into <see cref="PpoMinibatches"/> optimizer steps).</summary>
    public int PpoEpochs { get; init; } = 2;
    public int PpoMinibatches { get; init; } = 2;
    /// <summary>β of reverse KL's KL(π ‖ π0) term (0: the optimum is π* itself when R̂ = γ ln π* + c).</summary>
    public double ReverseKlBeta { get; init; } = 0;
    public int RewardSteps { get; init; } = 200;
    /// <summary>
    /// The reward model scores R̂ = γ·ln π0(y|x) + w·h + b (a fixed, reference-anchored baseline) instead of w·h + b alone:
    /// the head then learns only how the preferences depart from π0's own likelihood, which a last-token head can fit,
    /// and the on-policy methods' optima (∝ exp(R̂/γ)) start at π0 instead of at a near-uniform distribution.
    /// </summary>
    public bool RewardBaseline { get; init; } = true;
    public float RewardLearningRate { get; init; } = 3e-4f;
    /// <summary>Samples per evaluation prompt for every Monte Carlo estimate.</summary>
    public int EvalSamplesPerPrompt { get; init; } = 4;
    public ulong Seed { get; init; } = 1;

    /// <summary>The CI-sized run: a smaller π0, fewer prompts, pairs and steps.</summary>
    public static DemoSettings Quick => new()
    {
        Model = new GptConfig(Layers: 2, Heads: 2, Channels: 64, VocabSize: 2257, MaxSequenceLength: 32),
        Pretraining = new LanguageModelTrainingOptions
        {
            Steps = 150, Rows = 8, Length = 32, LearningRate = 3e-3f, WarmupSteps = 20,
            AdamW = new AdamWSettings(WeightDecay: 0.1f), EvaluateEvery = 0, EvaluationBatches = 4, Seed = 1,
        },
        Task = new KnownTargetSettings { ResponseTokens = 8, TrainPrompts = 32, EvalPrompts = 16 },
        Pairs = 64,
        Steps = 10,
        BatchPairs = 8,
        RewardSteps = 20,
        EvalSamplesPerPrompt = 2,
    };

    /// <summary>
    /// The smallest run that goes through every stage (1 layer, 2 heads, C = 8, the gpt2-k300 tokenizer's 557 tokens, T = 16;
    /// 3 pretraining steps, 8 pairs, one step per method and reward model steps 2): for checking a device against the CPU
    /// (tests on ILGPU's CPU simulator, gpu-check), not for its numbers.
    /// </summary>
    public static DemoSettings Smoke => new()
    {
        Tokenizer = "gpt2-k300",   // GPT-2's first 300 merges hold enough whole words for the lexicon's tilt
        Model = new GptConfig(Layers: 1, Heads: 2, Channels: 8, VocabSize: 557, MaxSequenceLength: 16),
        Pretraining = new LanguageModelTrainingOptions
        {
            Steps = 3, Rows = 2, Length = 16, LearningRate = 3e-3f, WarmupSteps = 1,
            AdamW = new AdamWSettings(WeightDecay: 0.1f), EvaluateEvery = 0, EvaluationBatches = 1, Seed = 1,
        },
        Task = new KnownTargetSettings { ResponseTokens = 4, TrainPrompts = 4, EvalPrompts = 2 },
        Pairs = 8, Steps = 1, BatchPairs = 2, RewardSteps = 2, EvalSamplesPerPrompt = 2, PpoEpochs = 1, PpoMinibatches = 1,
        LearningRate = 1e-2f, PpoLearningRate = 1e-2f,
    };

    public DemoSettings Validate()
    {
        Task.Validate();
        Pretraining.Validate();
        if (Pairs < 2) throw new ArgumentException($"n must be at least 2 pairs (got {Pairs})");
        if (Steps < 1 || RewardSteps < 1) throw new ArgumentException("methods and the reward model need at least one step");
        if (BatchPairs < 1) throw new ArgumentException($"batch must be at least 1 (got {BatchPairs})");
        if (EvalSamplesPerPrompt < 2) throw new ArgumentException("the evaluation needs at least 2 samples per prompt (pairs of π0 samples rate the reward model)");
        return this;
    }
}

/// <summary>One progress event: a stage (pretraining, pairs, a method, …), how far it is, and a short status line.</summary>
public sealed record DemoProgress(string Stage, double Done, double Total, string Detail);

/// <summary>What describes the task, printed in every report (OBJECTIVES.md asks for KL(π*‖π0) and the label margin).</summary>
public sealed record DemoTaskSummary(Estimate TargetKl, double TargetMeanLength, int LexiconTokens, int TrainPrompts, int EvalPrompts,
                                     int EvalSamples, double Temperature, double Gamma, int ResponseTokens);

/// <summary>The reward model fitted on the n pairs: its last training loss and its accuracy against the true ln π* ordering on fresh π0 pairs.</summary>
public sealed record DemoRewardSummary(int Steps, double FinalLoss, double TrueOrderAccuracy, double Seconds);

/// <summary>One method's run: settings in words, training and evaluation seconds, loss curve (its own objective per step), evaluation.</summary>
public sealed record DemoMethodResult(DemoMethod Method, string Name, string Settings, double Seconds,
                                      IReadOnlyList<(int Step, double Loss)> LossCurve, KnownTargetEvaluation Evaluation);

/// <summary>Everything measured at one dataset size n.</summary>
public sealed record DemoSizeResult(int Pairs, double MeanLabelMargin, double AgreementWithTarget, DemoRewardSummary Reward, IReadOnlyList<DemoMethodResult> Methods);

/// <summary>
/// The language-model known-target experiment of issue #7: π0 (cached pretraining), π* = π0 tilted by the VADER
/// lexicon, pairs from π0 labelled by the true preference model, a reward model, the six methods from π0 with the
/// same budget each, and every method evaluated against π* (<see cref="KnownTargetEvaluator"/>). π0 and π* are
/// evaluated too, as the two ends of the scale. On a <see cref="GptDevice"/> other than the CPU, π0's pretraining, the reward
/// model's backbone, every policy and π0's copies (scores, gradients, AdamW, KV-cache decoding, entropies) run on the device;
/// π* (a fixed tilt of π0's CPU model), the prompts, the pairs' labels and the evaluator's estimates stay on the host.
/// </summary>
public sealed class DemoExperiment : IDisposable
{
    private readonly Gpt reference;
    private readonly Action<DemoProgress>? progress;

    /// <summary>Where π0 was pretrained and the reward model and every method train.</summary>
    public GptDevice Device { get; }

    public DemoSettings Settings { get; }
    public PretrainedReference Pi0 { get; }
    public KnownTargetTask Task { get; }
    public KnownTargetEvaluator Evaluator { get; }
    public DemoTaskSummary Summary { get; }
    public KnownTargetEvaluation ReferenceEvaluation { get; }
    public KnownTargetEvaluation TargetEvaluation { get; }

    private DemoExperiment(DemoSettings settings, Gpt reference, PretrainedReference pi0, KnownTargetTask task, KnownTargetEvaluator evaluator,
                           DemoTaskSummary summary, KnownTargetEvaluation referenceEvaluation, KnownTargetEvaluation targetEvaluation, Action<DemoProgress>? progress,
                           GptDevice device)
    {
        Device = device;
        Settings = settings;
        this.reference = reference;
        Pi0 = pi0;
        Task = task;
        Evaluator = evaluator;
        Summary = summary;
        ReferenceEvaluation = referenceEvaluation;
        TargetEvaluation = targetEvaluation;
        this.progress = progress;
    }

    /// <summary>
    /// π0 (from <paramref name="cacheDirectory"/> or pretrained into it), π*, the prompts, the evaluator, and π0's and π*'s scores;
    /// models train on <paramref name="device"/> (default the CPU), which must outlive the experiment.
    /// </summary>
    public static DemoExperiment Prepare(DemoSettings settings, string cacheDirectory, Action<DemoProgress>? progress = null, GptDevice? device = null)
    {
        settings.Validate();
        device ??= GptDevice.Cpu;
        var tokenizer = Gpt2Tokenizer.FromSpec(settings.Tokenizer);
        var config = settings.Model with { VocabSize = tokenizer.VocabSize };
        var (model, pi0) = ReferencePretraining.GetOrTrain(cacheDirectory, config, settings.Pretraining, tokenizer,
            (step, steps, loss) => progress?.Invoke(new DemoProgress("pretrain π0", step, steps, $"loss {loss:F3}")), device);
        progress?.Invoke(new DemoProgress("pretrain π0", 1, 1, pi0.Cached ? "cached" : $"validation loss {pi0.ValidationLoss:F3}"));
        try
        {
            var weights = LexiconTilt.TokenWeights(tokenizer, ShippedData.VaderLexicon());
            var target = new TiltedTarget(model, weights, settings.Task.Temperature);
            var (train, eval) = KnownTargetTask.PromptsFrom(ShippedData.SplitMobyDick().HeldOut, tokenizer, settings.Task, settings.Seed);
            var task = new KnownTargetTask(target, settings.Task, train, eval, tokenizer.EndOfText);
            progress?.Invoke(new DemoProgress("evaluate π0 and π*", 0, 3, "sampling π* and π0"));
            var evaluator = new KnownTargetEvaluator(task, settings.EvalSamplesPerPrompt, settings.Seed);
            progress?.Invoke(new DemoProgress("evaluate π0 and π*", 1, 3, "π0"));
            KnownTargetEvaluation referenceEvaluation;
            using (var pi0Policy = device.Policy(model, new AdamWSettings()))
                referenceEvaluation = evaluator.Evaluate(new PolicyResponseModel(pi0Policy));
            progress?.Invoke(new DemoProgress("evaluate π0 and π*", 2, 3, "π*"));
            var targetEvaluation = evaluator.Evaluate(target);
            progress?.Invoke(new DemoProgress("evaluate π0 and π*", 3, 3, "done"));
            var summary = new DemoTaskSummary(referenceEvaluation.ForwardKl, targetEvaluation.MeanLength, weights.Count(w => w != 0),
                train.Count, eval.Count, evaluator.Samples, settings.Task.Temperature, settings.Task.Gamma, settings.Task.ResponseTokens);
            return new DemoExperiment(settings, model, pi0, task, evaluator, summary, referenceEvaluation, targetEvaluation, progress, device);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Pairs, reward model and all six methods at n pairs.</summary>
    public DemoSizeResult RunAtSize(int n)
    {
        string stage = $"n = {n}: pairs";
        progress?.Invoke(new DemoProgress(stage, 0, 1, "sampling a, b ~ π0"));
        var drawn = Task.DrawPairs(n, KnownTargetTask.Mix(Settings.Seed, 100 + (ulong)n));
        progress?.Invoke(new DemoProgress(stage, 1, 1, $"mean |P* − ½| {drawn.MeanLabelMargin:F3}"));

        using var rewardBackbone = Device.Backbone(reference.Config);   // null on the CPU; disposed after the reward model
        using var rewardModel = new RewardModel(Copy(reference), new AdamWSettings(WeightDecay: 0), ownsBackbone: true, rewardBackbone);
        using var baselinePolicy = Device.Policy(reference, new AdamWSettings());
        if (Settings.RewardBaseline) rewardModel.Baseline = new LogLikelihoodReward(baselinePolicy, Settings.Task.Gamma);
        var reward = TrainRewardModel(rewardModel, drawn.Pairs, n);

        var referenceLogProbs = ReferenceLogProbs(drawn.Pairs);
        var methods = new List<DemoMethodResult>();
        foreach (var method in Enum.GetValues<DemoMethod>())
            methods.Add(RunMethod(method, n, drawn.Pairs, referenceLogProbs, rewardModel));
        return new DemoSizeResult(n, drawn.MeanLabelMargin, drawn.AgreementWithTarget, reward, methods);
    }

    private DemoRewardSummary TrainRewardModel(RewardModel model, IReadOnlyList<PreferencePair> pairs, int n)
    {
        var watch = Stopwatch.StartNew();
        var trainer = new RewardModelTrainer(model, pairs, new RewardTrainingOptions
        {
            Steps = Settings.RewardSteps, BatchPairs = Settings.BatchPairs, LearningRate = Settings.RewardLearningRate,
            WarmupSteps = Math.Min(10, Settings.RewardSteps / 10), EvalFraction = 0, EvaluateEvery = 0, Seed = Settings.Seed,
        });
        string stage = $"n = {n}: reward model";
        double loss = double.NaN;
        while (trainer.Step < Settings.RewardSteps)
        {
            var report = trainer.TrainStep();
            loss = report["loss"];
            progress?.Invoke(new DemoProgress(stage, report.Step, Settings.RewardSteps, $"loss {loss:F3}"));
        }
        double accuracy = Evaluator.RewardAccuracy(model);
        return new DemoRewardSummary(Settings.RewardSteps, loss, accuracy, watch.Elapsed.TotalSeconds);
    }

    /// <summary>ln π0 of every chosen and rejected response (interleaved), scored like the policy scores them.</summary>
    private float[] ReferenceLogProbs(IReadOnlyList<PreferencePair> pairs)
    {
        using var pi0 = Device.Policy(reference, new AdamWSettings());
        var sums = KnownTargetTask.ScoreAll(new PolicyResponseModel(pi0), OfflinePreferenceObjective.Sequences(pairs));
        return [.. sums.Select(x => (float)x)];
    }

    /// <summary>The method's settings in words, as the report prints them.</summary>
    public string Describe(DemoMethod method) => method switch
    {
        DemoMethod.Rlhf => $"PPO on R̂ − β·KL(π‖π0), β = {Settings.RlhfBeta}; {Settings.PpoEpochs} epochs × {Settings.PpoMinibatches} minibatches per rollout, learning rate {Settings.PpoLearningRate}",
        DemoMethod.ReverseKl => $"PPO on R̂ + γ·H(π) − β·KL(π‖π0), γ = {Settings.Task.Gamma}, β = {Settings.ReverseKlBeta}; {Settings.PpoEpochs} epochs × {Settings.PpoMinibatches} minibatches per rollout, learning rate {Settings.PpoLearningRate}",
        DemoMethod.Dpo => $"sigmoid loss, β = {Settings.DpoBeta}",
        DemoMethod.Pmle => $"−ln σ(γ Δ ln π), γ = {Settings.Task.Gamma}" + (Settings.PmleKlBeta > 0 ? $", KL β = {Settings.PmleKlBeta}" : ""),
        DemoMethod.Distillation => $"soft labels σ(ΔR̂) on π's samples, γ = {Settings.Task.Gamma}" + (Settings.DistillationKlBeta > 0 ? $", KL β = {Settings.DistillationKlBeta}" : ""),
        DemoMethod.Rebel => $"pairs from π, R̂ regression, η = {Settings.RebelEta}",
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    /// <summary>The name the report uses.</summary>
    public static string NameOf(DemoMethod method) => method switch
    {
        DemoMethod.Rlhf => "RLHF (PPO)",
        DemoMethod.ReverseKl => "Reverse KL (PPO)",
        DemoMethod.Dpo => "DPO",
        DemoMethod.Pmle => "PMLE",
        DemoMethod.Distillation => "Distillation",
        DemoMethod.Rebel => "REBEL",
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    private DemoMethodResult RunMethod(DemoMethod method, int n, IReadOnlyList<PreferencePair> pairs, float[] referenceLogProbs, RewardModel rewardModel)
    {
        string name = NameOf(method), stage = $"n = {n}: {name}";
        using var policy = Device.Policy(Copy(reference), new AdamWSettings(WeightDecay: 0), ownsModel: true,
            withValueHead: method is DemoMethod.Rlhf or DemoMethod.ReverseKl);
        using var pi0 = Device.Policy(reference, new AdamWSettings());
        var step = CreateTrainer(method, policy, pi0, pairs, referenceLogProbs, rewardModel);
        var watch = Stopwatch.StartNew();
        var curve = new List<(int, double)>();
        for (int s = 0; s < Settings.Steps; s++)
        {
            var report = step();
            curve.Add((report.Step, report["loss"]));
            progress?.Invoke(new DemoProgress(stage, report.Step, Settings.Steps + 1, $"loss {report["loss"]:F3}"));
        }
        progress?.Invoke(new DemoProgress(stage, Settings.Steps, Settings.Steps + 1, "evaluating"));
        var evaluation = Evaluator.Evaluate(new PolicyResponseModel(policy));
        double seconds = watch.Elapsed.TotalSeconds;
        progress?.Invoke(new DemoProgress(stage, Settings.Steps + 1, Settings.Steps + 1, $"KL(π*‖π̂) {evaluation.ForwardKl}"));
        return new DemoMethodResult(method, name, Describe(method), seconds, curve, evaluation);
    }

    private AlignmentTrainingOptions OfflineOptions(PairwiseLossSettings loss, KlRegularizer? kl) => new()
    {
        Objective = AlignmentObjective.Preference, Loss = loss, Kl = kl,
        Steps = Settings.Steps, BatchPairs = Settings.BatchPairs, LearningRate = Settings.LearningRate,
        WarmupSteps = Math.Min(10, Settings.Steps / 10), EvalFraction = 0, EvaluateEvery = 0, Seed = Settings.Seed,
    };

    /// <summary>One training step of the method: offline ones on the n pairs, online ones on the pairs' prompts (or the task's training prompts) with R̂.</summary>
    private Func<AlignmentStepReport> CreateTrainer(DemoMethod method, IGptValueModel policy, IPolicy pi0, IReadOnlyList<PreferencePair> pairs,
                                                   float[] referenceLogProbs, RewardModel rewardModel)
    {
        var kl = (double beta) => beta > 0 ? new KlRegularizer(beta, 2, Settings.Task.ResponseTokens, Task.EndOfText) : null;
        switch (method)
        {
            case DemoMethod.Dpo:
            {
                var trainer = new AlignmentTrainer(policy, null, pairs, referenceLogProbs,
                    OfflineOptions(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: Settings.DpoBeta), null));
                return trainer.TrainStep;
            }
            case DemoMethod.Pmle:
            {
                var trainer = new AlignmentTrainer(policy, pi0, pairs, null,
                    OfflineOptions(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: Settings.Task.Gamma), kl(Settings.PmleKlBeta)));
                return trainer.TrainStep;
            }
            case DemoMethod.Distillation or DemoMethod.Rebel:
            {
                var loss = method == DemoMethod.Distillation
                    ? new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: Settings.Task.Gamma)
                    : new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: Settings.RebelEta);
                var options = OfflineOptions(loss, method == DemoMethod.Distillation ? kl(Settings.DistillationKlBeta) : null) with
                {
                    Objective = AlignmentObjective.OnPolicy, PairSource = PairSource.Policy, Sampling = Task.Sampling,
                };
                var trainer = new AlignmentTrainer(policy, pi0, pairs, null, options, rewardModel);
                return trainer.TrainStep;
            }
            case DemoMethod.Rlhf or DemoMethod.ReverseKl:
            {
                var options = new PpoOptions
                {
                    Objective = method == DemoMethod.Rlhf ? PpoObjective.Rlhf : PpoObjective.ReverseKl,
                    Beta = method == DemoMethod.Rlhf ? Settings.RlhfBeta : Settings.ReverseKlBeta,
                    Gamma = method == DemoMethod.Rlhf ? 0 : Settings.Task.Gamma,
                    Steps = Settings.Steps, PromptsPerIteration = Settings.BatchPairs, Epochs = Settings.PpoEpochs, Minibatches = Settings.PpoMinibatches,
                    Sampling = Task.Sampling,
                    LearningRate = Settings.PpoLearningRate, WarmupSteps = Math.Min(10, Settings.Steps / 10), Seed = Settings.Seed,
                };
                var trainer = new PpoTrainer(policy, pi0, rewardModel, Task.TrainPrompts, options);
                return trainer.TrainStep;
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(method));
        }
    }

    private static Gpt Copy(Gpt model)
    {
        var copy = new Gpt(model.Config);
        model.Parameters.CopyTo(copy.Parameters);
        return copy;
    }

    public void Dispose() => reference.Dispose();
}
