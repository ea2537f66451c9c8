using System.Diagnostics;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Experiments;

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
    /// <summary>π0's features of every sequence scored so far (pairs, evaluation samples, rollouts): the tilt class's only transformer passes.</summary>
    private readonly FrozenFeatureCache? features;

    /// <summary>Where π0 was pretrained and the reward model and every method train.</summary>
    public GptDevice Device { get; }

    /// <summary>The settings; during <see cref="RunAtSize"/>, those of the seed being run (<see cref="DemoSettings.Seed"/> + k).</summary>
    public DemoSettings Settings { get; private set; }
    public PretrainedReference Pi0 { get; }
    public KnownTargetTask Task { get; }
    public KnownTargetEvaluator Evaluator { get; }
    public DemoTaskSummary Summary { get; }
    public KnownTargetEvaluation ReferenceEvaluation { get; }
    public KnownTargetEvaluation TargetEvaluation { get; }

    private DemoExperiment(DemoSettings settings, Gpt reference, PretrainedReference pi0, KnownTargetTask task, KnownTargetEvaluator evaluator,
                           DemoTaskSummary summary, KnownTargetEvaluation referenceEvaluation, KnownTargetEvaluation targetEvaluation, Action<DemoProgress>? progress,
                           GptDevice device, DataParallelSettings parallel)
    {
        Device = device;
        Parallel = parallel;
        Settings = settings;
        this.reference = reference;
        Pi0 = pi0;
        Task = task;
        Evaluator = evaluator;
        Summary = summary;
        ReferenceEvaluation = referenceEvaluation;
        TargetEvaluation = targetEvaluation;
        this.progress = progress;
        if (settings.FrozenBackbone)
        {
            if (!device.IsCpu) throw new NotSupportedException("the tilt and head-LoRA classes train on the CPU only (a step is one GEMM over cached features)");
            features = new FrozenFeatureCache(reference);
        }
    }

    /// <summary>A policy that starts at π0: a copy of the GPT (full), or b = 0 (and B = 0) over the frozen π0 (tilt, head-LoRA).</summary>
    private IPolicy NewPolicy(bool withValueHead) => Settings.Train switch
    {
        TrainedWeights.Tilt => new TiltPolicy(features!, new AdamWSettings(WeightDecay: Settings.WeightDecay), withValueHead: withValueHead),
        TrainedWeights.HeadLora => new TiltPolicy(features!, new AdamWSettings(WeightDecay: Settings.WeightDecay), withValueHead: withValueHead,
                                                  adapterRank: Settings.AdapterRank, adapterSeed: KnownTargetTask.Mix(Settings.Seed, 11)),
        _ => new GptPolicy(Copy(reference), new AdamWSettings(WeightDecay: Settings.WeightDecay), ownsModel: true, withValueHead: withValueHead, Device),
    };

    /// <summary>π0 in the methods' own class, so ln π0 and ln π are computed the same way.</summary>
    private IPolicy NewReference() => Settings.Train switch
    {
        TrainedWeights.Tilt or TrainedWeights.HeadLora => new TiltPolicy(features!, new AdamWSettings()),
        _ => new GptPolicy(reference, new AdamWSettings(), device: Device),
    };

    /// <summary>How every trainer of the experiment runs across the ranks of a data-parallel job (one process by default).</summary>
    public DataParallelSettings Parallel { get; }

    /// <summary>
    /// π0 (from <paramref name="cacheDirectory"/> or pretrained into it), π*, the prompts, the evaluator, and π0's and π*'s scores;
    /// models train on <paramref name="device"/> (default the CPU), which must outlive the experiment. Over the ranks of
    /// <paramref name="parallel"/> every trainer (π0's pretraining, the reward model, the six methods) shares its batches out
    /// and sums the gradients; the rest (pairs, evaluation) is computed alike on every rank, and only rank 0 writes π0's cache.
    /// </summary>
    public static DemoExperiment Prepare(DemoSettings settings, string cacheDirectory, Action<DemoProgress>? progress = null, GptDevice? device = null,
                                         DataParallelSettings? parallel = null)
    {
        settings.Validate();
        device ??= GptDevice.Cpu;
        parallel ??= DataParallelSettings.SingleProcess;
        var tokenizer = Gpt2Tokenizer.FromSpec(settings.Tokenizer);
        var config = settings.Model with { VocabSize = tokenizer.VocabSize };
        var (model, pi0) = ReferencePretraining.GetOrTrain(cacheDirectory, config, settings.Pretraining, tokenizer,
            (step, steps, loss) => progress?.Invoke(new DemoProgress("pretrain π0", step, steps, $"loss {loss:F3}")), device, parallel);
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
            using (var pi0Policy = new GptPolicy(model, new AdamWSettings(), device: device))
                referenceEvaluation = evaluator.Evaluate(new PolicyResponseModel(pi0Policy));
            progress?.Invoke(new DemoProgress("evaluate π0 and π*", 2, 3, "π*"));
            var targetEvaluation = evaluator.Evaluate(target);
            progress?.Invoke(new DemoProgress("evaluate π0 and π*", 3, 3, "done"));
            var summary = new DemoTaskSummary(referenceEvaluation.ForwardKl, targetEvaluation.MeanLength, weights.Count(w => w != 0),
                train.Count, eval.Count, evaluator.Samples, settings.Task.Temperature, settings.Task.Gamma, settings.Task.ResponseTokens);
            return new DemoExperiment(settings, model, pi0, task, evaluator, summary, referenceEvaluation, targetEvaluation, progress, device, parallel);
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
        var original = Settings;
        var seeds = new List<DemoSizeResult>();
        try
        {
            for (int k = 0; k < original.Seeds; k++)
            {
                Settings = original with { Seed = original.Seed + (ulong)k };
                seeds.Add(RunAtSizeAndSeed(n, original.Seeds > 1 ? $"n = {n}, seed {Settings.Seed}" : $"n = {n}"));
                features?.Clear();   // this seed's pairs are done with
            }
        }
        finally
        {
            Settings = original;
        }
        return seeds[0] with { OtherSeeds = seeds.Skip(1).ToList() };
    }

    /// <summary>What progress lines start with: "n = 1024" or "n = 1024, seed 2".</summary>
    private string label = "";

    /// <summary>Pairs, reward model and every method at n pairs, for the seed in <see cref="Settings"/>.</summary>
    private DemoSizeResult RunAtSizeAndSeed(int n, string label)
    {
        this.label = label;
        string stage = $"{label}: pairs";
        progress?.Invoke(new DemoProgress(stage, 0, 1, "sampling a, b ~ π0"));
        var drawn = Task.DrawPairs(n, KnownTargetTask.Mix(Settings.Seed, 100 + (ulong)n));
        progress?.Invoke(new DemoProgress(stage, 1, 1, $"mean |P* − ½| {drawn.MeanLabelMargin:F3}"));

        int held = Settings.TuningGrid.Count > 0 ? Math.Max(1, (int)Math.Ceiling(Settings.ValidationFraction * n)) : 0;
        if (held >= n) throw new ArgumentException($"n = {n} leaves no pairs to train on after holding out {held}");
        var train = drawn.Pairs.Take(n - held).ToList();   // pairs are i.i.d.: the last ones are held out
        validation = drawn.Pairs.Skip(n - held).ToList();
        if (features is not null) features.Add(OfflinePreferenceObjective.Sequences(drawn.Pairs));
        var referenceLogProbs = ReferenceLogProbs(train);
        if (Settings.FrozenBackbone)
        {
            using var rewardPolicy = NewPolicy(withValueHead: false);
            var rewardSummary = TrainTiltReward(rewardPolicy, train, n);
            return RunMethods(n, drawn, train, referenceLogProbs, new LogLikelihoodReward(rewardPolicy, Settings.Task.Gamma), rewardSummary);
        }
        using var rewardModel = new RewardModel(Copy(reference), new AdamWSettings(WeightDecay: 0), ownsBackbone: true, Device);
        using var baselinePolicy = new GptPolicy(reference, new AdamWSettings(), device: Device);
        if (Settings.RewardBaseline) rewardModel.Baseline = new LogLikelihoodReward(baselinePolicy, Settings.Task.Gamma);
        var reward = TrainRewardModel(rewardModel, train, n);
        return RunMethods(n, drawn, train, referenceLogProbs, rewardModel, reward);
    }

    /// <summary>The pairs held out at the current n for the honest criterion (empty without tuning).</summary>
    private IReadOnlyList<PreferencePair> validation = [];

    private DemoSizeResult RunMethods(int n, KnownTargetPairs drawn, IReadOnlyList<PreferencePair> train, float[] referenceLogProbs,
                                      IRewardFunction reward, DemoRewardSummary rewardSummary)
    {
        var methods = new List<DemoMethodResult>();
        foreach (var method in Settings.Methods)
        {
            if (Settings.TuningGrid.Count == 0)
            {
                methods.Add(RunMethod(method, n, train, referenceLogProbs, reward, Settings));
                continue;
            }
            var candidates = new List<(DemoMethodResult Run, DemoCandidate Candidate)>();
            foreach (double multiplier in Settings.TuningGrid)
            {
                var (parameter, value, settings) = Tuned(method, multiplier);
                var run = RunMethod(method, n, train, referenceLogProbs, reward, settings, $"{parameter} {value:G3}");
                candidates.Add((run, new DemoCandidate(parameter, value, run.ValidationLoss, run.Evaluation, run.Seconds)));
            }
            // the lowest held-out loss; ties (identical runs, e.g. PPO stopped early before β mattered) go to the first
            int kept = 0;
            for (int i = 1; i < candidates.Count; i++)
                if (candidates[i].Candidate.ValidationLoss < candidates[kept].Candidate.ValidationLoss) kept = i;
            methods.Add(candidates[kept].Run with { Candidates = [.. candidates.Select((c, i) => c.Candidate with { Kept = i == kept })] });
        }
        return new DemoSizeResult(n, drawn.MeanLabelMargin, drawn.AgreementWithTarget, rewardSummary, methods) { AgainstReference = drawn.AgainstReference };
    }

    /// <summary>
    /// The method's key parameter at <paramref name="multiplier"/> × its setting: its name, value, and the settings that carry it.
    /// REBEL's is its learning rate, not η: it takes one step per fresh batch, where π_t = π, so its gradient is
    /// 2η·ΔR̂·∇Δ ln π — η only scales it, and AdamW undoes a constant scale (a first grid over η gave three identical runs).
    /// </summary>
    private (string Parameter, double Value, DemoSettings Settings) Tuned(DemoMethod method, double multiplier) => method switch
    {
        DemoMethod.Dpo => ("β", Settings.DpoBeta * multiplier, Settings with { DpoBeta = Settings.DpoBeta * multiplier }),
        DemoMethod.Rlhf => ("β", Settings.RlhfBeta * multiplier, Settings with { RlhfBeta = Settings.RlhfBeta * multiplier }),
        DemoMethod.ReverseKl => ("learning rate", Settings.PpoLearningRate * multiplier, Settings with { PpoLearningRate = (float)(Settings.PpoLearningRate * multiplier) }),
        _ => ("learning rate", Settings.LearningRate * multiplier, Settings with { LearningRate = (float)(Settings.LearningRate * multiplier) }),
    };

    /// <summary>
    /// The honest criterion: mean −ln σ(γ [ln π̂(a⁺) − ln π̂(a⁻)]) over the held-out pairs — how well π̂, read as the preference
    /// model σ(γ Δ ln π̂) that the labels were drawn from with π*, predicts preferences it did not train on.
    /// </summary>
    private double ValidationLoss(IPolicy policy)
    {
        if (validation.Count == 0) return double.NaN;
        var logProbs = KnownTargetTask.ScoreAll(new PolicyResponseModel(policy), OfflinePreferenceObjective.Sequences(validation));
        double sum = 0;
        for (int i = 0; i < validation.Count; i++)
        {
            double margin = Settings.Task.Gamma * (logProbs[2 * i] - logProbs[2 * i + 1]);
            sum += margin >= 0 ? double.LogP1(Math.Exp(-margin)) : -margin + double.LogP1(Math.Exp(margin));
        }
        return sum / validation.Count;
    }

    /// <summary>
    /// The tilt class's reward model: R̂ = γ·ln π_r(y|x), its own offset r fitted by Bradley–Terry on the n pairs. With this head
    /// the Bradley–Terry loss −ln σ(R̂(a⁺) − R̂(a⁻)) is the preference-MLE loss, so R̂ = γ ln π* is in the class (as the
    /// policy's target is) and the reward-based methods aim at π_r = exp(R̂/γ).
    /// </summary>
    private DemoRewardSummary TrainTiltReward(IPolicy rewardPolicy, IReadOnlyList<PreferencePair> pairs, int n)
    {
        var watch = Stopwatch.StartNew();
        int steps = EpochSteps(Settings, pairs.Count) ?? Settings.RewardSteps;
        var trainer = new AlignmentTrainer(rewardPolicy, null, pairs, null, OfflineOptions(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: Settings.Task.Gamma), null) with
        {
            Steps = steps, Seed = KnownTargetTask.Mix(Settings.Seed, 7), WarmupSteps = Math.Min(10, steps / 10),
        }, parallel: Parallel);
        string stage = $"{label}: reward model";
        double loss = double.NaN;
        while (trainer.Step < steps)
        {
            var report = trainer.TrainStep();
            loss = report["loss"];
            progress?.Invoke(new DemoProgress(stage, report.Step, steps, $"loss {loss:F3}"));
        }
        double accuracy = Evaluator.RewardAccuracy(new LogLikelihoodReward(rewardPolicy, Settings.Task.Gamma));
        return new DemoRewardSummary(steps, loss, accuracy, watch.Elapsed.TotalSeconds);
    }

    private DemoRewardSummary TrainRewardModel(RewardModel model, IReadOnlyList<PreferencePair> pairs, int n)
    {
        var watch = Stopwatch.StartNew();
        var trainer = new RewardModelTrainer(model, pairs, new RewardTrainingOptions
        {
            Steps = Settings.RewardSteps, BatchPairs = Settings.BatchPairs, LearningRate = Settings.RewardLearningRate,
            WarmupSteps = Math.Min(10, Settings.RewardSteps / 10), EvalFraction = 0, EvaluateEvery = 0, Seed = Settings.Seed,
        }, Parallel);
        string stage = $"{label}: reward model";
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
        using var pi0 = NewReference();
        var sums = KnownTargetTask.ScoreAll(new PolicyResponseModel(pi0), OfflinePreferenceObjective.Sequences(pairs));
        return [.. sums.Select(x => (float)x)];
    }

    /// <summary>The method's settings in words, as the report prints them.</summary>
    public string Describe(DemoMethod method) => Describe(method, Settings);

    /// <summary>The method's settings in words under <paramref name="settings"/> (a tuning candidate's).</summary>
    public static string Describe(DemoMethod method, DemoSettings settings) => method switch
    {
        DemoMethod.Rlhf => $"PPO on R̂ − β·KL(π‖π0), β = {settings.RlhfBeta}; {settings.PpoEpochs} epochs × {settings.PpoMinibatches} minibatches per rollout, learning rate {settings.PpoLearningRate}",
        DemoMethod.ReverseKl => $"PPO on R̂ + γ·H(π) − β·KL(π‖π0), γ = {settings.Task.Gamma}, β = {settings.ReverseKlBeta}; {settings.PpoEpochs} epochs × {settings.PpoMinibatches} minibatches per rollout, learning rate {settings.PpoLearningRate}",
        DemoMethod.Dpo => $"sigmoid loss, β = {settings.DpoBeta}, learning rate {settings.LearningRate}",
        DemoMethod.Pmle => $"−ln σ(γ Δ ln π), γ = {settings.Task.Gamma}, learning rate {settings.LearningRate}" + (settings.PmleKlBeta > 0 ? $", KL β = {settings.PmleKlBeta}" : ""),
        DemoMethod.Distillation => $"soft labels σ(ΔR̂) on {(settings.DistillationPairs == PairSource.Dataset ? "the dataset's pairs" : settings.DistillationPairs == PairSource.Reference ? "π0's samples" : "π's samples")}, γ = {settings.Task.Gamma}, learning rate {settings.LearningRate}" + (settings.DistillationKlBeta > 0 ? $", KL β = {settings.DistillationKlBeta}" : ""),
        DemoMethod.Rebel => $"pairs from π, R̂ regression, η = {settings.RebelEta}, learning rate {settings.LearningRate}",
        _ => throw new ArgumentOutOfRangeException(nameof(method)),
    };

    /// <summary>The method's name on the command line (<c>--methods</c>) and in file names: rlhf, reverse-kl, dpo, pmle, distillation, rebel.</summary>
    public static string KeyOf(DemoMethod method) => method switch
    {
        DemoMethod.ReverseKl => "reverse-kl",
        _ => method.ToString().ToLowerInvariant(),
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

    private DemoMethodResult RunMethod(DemoMethod method, int n, IReadOnlyList<PreferencePair> pairs, float[] referenceLogProbs, IRewardFunction rewardModel,
                                       DemoSettings settings, string? candidate = null)
    {
        string name = NameOf(method), stage = $"{label}: {name}" + (candidate is null ? "" : $" ({candidate})");
        using var policy = NewPolicy(withValueHead: method is DemoMethod.Rlhf or DemoMethod.ReverseKl);
        using var pi0 = NewReference();
        int steps = StepsOf(method, settings, pairs.Count);
        var step = CreateTrainer(method, policy, pi0, pairs, referenceLogProbs, rewardModel, settings, steps);
        var watch = Stopwatch.StartNew();
        var curve = new List<(int, double)>();
        // Early stopping on the honest criterion: the held-out loss at EarlyStoppingChecks even points of the run (the last
        // included); the policy as it was at the best one is what gets evaluated.
        int every = Math.Max(1, steps / EarlyStoppingChecks);
        IPolicy? best = null;
        double bestLoss = double.PositiveInfinity;
        int bestStep = steps;
        try
        {
            for (int s = 0; s < steps; s++)
            {
                var report = step();
                curve.Add((report.Step, report["loss"]));
                progress?.Invoke(new DemoProgress(stage, report.Step, steps + 1, $"loss {report["loss"]:F3}"));
                if (validation.Count == 0 || (report.Step % every != 0 && report.Step != steps)) continue;
                double loss = ValidationLoss(policy);
                if (!(loss < bestLoss)) continue;
                bestLoss = loss;
                bestStep = report.Step;
                if (report.Step == steps) { best?.Dispose(); best = null; }   // the final policy is the best: evaluate it in place
                else if (best is null) best = policy.Snapshot();
                else best.CopyWeightsFrom(policy);
            }
            progress?.Invoke(new DemoProgress(stage, steps, steps + 1, "evaluating"));
            var kept = best ?? policy;
            var evaluation = Evaluator.Evaluate(new PolicyResponseModel(kept));
            double validationLoss = validation.Count == 0 ? double.NaN : bestLoss;
            double seconds = watch.Elapsed.TotalSeconds;
            progress?.Invoke(new DemoProgress(stage, steps + 1, steps + 1, $"KL(π*‖π̂) {evaluation.ForwardKl}"));
            string described = Describe(method, settings) + $"; {steps} steps" + (validation.Count > 0 ? $", kept step {bestStep} (early stopping)" : "");
            return new DemoMethodResult(method, name, described, seconds, curve, evaluation, validationLoss) { KeptStep = bestStep };
        }
        finally
        {
            best?.Dispose();
        }
    }

    /// <summary>Held-out checks per run for early stopping (when pairs are held out).</summary>
    public const int EarlyStoppingChecks = 8;

    /// <summary>
    /// Steps of a method: <see cref="DemoSettings.OnPolicySteps"/> for those that sample every step; for the others
    /// ⌈<see cref="DemoSettings.Epochs"/> · pairs / batch⌉ when epochs are set (the budget grows with n), else <see cref="DemoSettings.Steps"/>.
    /// </summary>
    public static int StepsOf(DemoMethod method, DemoSettings settings, int trainPairs)
    {
        if (SamplesEveryStep(method, settings) && settings.OnPolicySteps > 0) return settings.OnPolicySteps;
        return EpochSteps(settings, trainPairs) ?? settings.Steps;
    }

    /// <summary>⌈epochs · pairs / batch⌉ when <see cref="DemoSettings.Epochs"/> is set; null otherwise.</summary>
    private static int? EpochSteps(DemoSettings settings, int trainPairs) =>
        settings.Epochs > 0 ? Math.Max(1, (int)Math.Ceiling(settings.Epochs * trainPairs / settings.BatchPairs)) : null;

    /// <summary>Whether the method draws responses from the policy every step (its budget is <see cref="DemoSettings.OnPolicySteps"/> × <see cref="DemoSettings.OnPolicyBatch"/>).</summary>
    public static bool SamplesEveryStep(DemoMethod method, DemoSettings settings) =>
        method is DemoMethod.Rlhf or DemoMethod.ReverseKl or DemoMethod.Rebel
        || (method == DemoMethod.Distillation && settings.DistillationPairs != PairSource.Dataset);

    private static int OnPolicyBatchOf(DemoSettings settings) => settings.OnPolicyBatch > 0 ? settings.OnPolicyBatch : settings.BatchPairs;

    private AlignmentTrainingOptions OfflineOptions(PairwiseLossSettings loss, KlRegularizer? kl) => OfflineOptions(loss, kl, Settings, Settings.Steps);

    private static AlignmentTrainingOptions OfflineOptions(PairwiseLossSettings loss, KlRegularizer? kl, DemoSettings settings, int steps) => new()
    {
        Objective = AlignmentObjective.Preference, Loss = loss, Kl = kl,
        Steps = steps, BatchPairs = settings.BatchPairs, LearningRate = settings.LearningRate,
        WarmupSteps = Math.Min(10, steps / 10), EvalFraction = 0, EvaluateEvery = 0, Seed = settings.Seed,
    };

    /// <summary>One training step of the method: offline ones on the n pairs, online ones on the pairs' prompts (or the task's training prompts) with R̂.</summary>
    private Func<AlignmentStepReport> CreateTrainer(DemoMethod method, IPolicy policy, IPolicy pi0, IReadOnlyList<PreferencePair> pairs,
                                                   float[] referenceLogProbs, IRewardFunction rewardModel, DemoSettings settings, int steps)
    {
        var kl = (double beta) => beta > 0 ? new KlRegularizer(beta, 2, settings.Task.ResponseTokens, Task.EndOfText) : null;
        AlignmentTrainingOptions OfflineOptions(PairwiseLossSettings loss, KlRegularizer? regularizer) => DemoExperiment.OfflineOptions(loss, regularizer, settings, steps);
        switch (method)
        {
            case DemoMethod.Dpo:
            {
                var trainer = new AlignmentTrainer(policy, null, pairs, referenceLogProbs,
                    OfflineOptions(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: settings.DpoBeta), null), parallel: Parallel);
                return trainer.TrainStep;
            }
            case DemoMethod.Pmle:
            {
                var trainer = new AlignmentTrainer(policy, pi0, pairs, null,
                    OfflineOptions(new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: settings.Task.Gamma), kl(settings.PmleKlBeta)), parallel: Parallel);
                return trainer.TrainStep;
            }
            case DemoMethod.Distillation or DemoMethod.Rebel:
            {
                var loss = method == DemoMethod.Distillation
                    ? new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: settings.Task.Gamma)
                    : new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: settings.RebelEta);
                var options = OfflineOptions(loss, method == DemoMethod.Distillation ? kl(settings.DistillationKlBeta) : null) with
                {
                    Objective = AlignmentObjective.OnPolicy, Sampling = Task.Sampling,
                    PairSource = method == DemoMethod.Distillation ? settings.DistillationPairs : PairSource.Policy,
                    BatchPairs = SamplesEveryStep(method, settings) ? OnPolicyBatchOf(settings) : settings.BatchPairs,
                };
                var trainer = new AlignmentTrainer(policy, pi0, pairs, null, options, rewardModel, Parallel);
                return trainer.TrainStep;
            }
            case DemoMethod.Rlhf or DemoMethod.ReverseKl:
            {
                var options = new PpoOptions
                {
                    Objective = method == DemoMethod.Rlhf ? PpoObjective.Rlhf : PpoObjective.ReverseKl,
                    Beta = method == DemoMethod.Rlhf ? settings.RlhfBeta : settings.ReverseKlBeta,
                    Gamma = method == DemoMethod.Rlhf ? 0 : settings.Task.Gamma,
                    Steps = steps, PromptsPerIteration = OnPolicyBatchOf(settings), Epochs = settings.PpoEpochs, Minibatches = settings.PpoMinibatches,
                    Sampling = Task.Sampling,
                    LearningRate = settings.PpoLearningRate, WarmupSteps = Math.Min(10, steps / 10), Seed = settings.Seed,
                };
                var trainer = new PpoTrainer((IValuePolicy)policy, pi0, rewardModel, Task.TrainPrompts, options, Parallel);
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
