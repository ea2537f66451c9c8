using System.CommandLine;
using System.Globalization;
using System.Security.Cryptography;
using System.Text.Json;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Cli;

/// <summary>The flags of the on-policy objectives (distill, rebel, rlhf, rkl), with their defaults.</summary>
internal sealed class OnlineOptions
{
    public readonly Option<FileInfo> RewardModel = new("--reward-model") { Description = "R̂: a reward model written by `distalign reward` (on-policy objectives)." };
    public readonly Option<string> PairSource = new("--pair-source") { Description = "distill: pairs from policy, reference or dataset.", DefaultValueFactory = _ => "policy" };
    public readonly Option<double> Eta = new("--eta") { Description = "REBEL: reward scale η.", DefaultValueFactory = _ => 1.0 };
    public readonly Option<int> MaxNewTokens = new("--max-new-tokens") { Description = "Most tokens per sampled response (on-policy objectives).", DefaultValueFactory = _ => 16 };
    public readonly Option<int> Epochs = new("--ppo-epochs") { Description = "PPO: passes over each rollout.", DefaultValueFactory = _ => 4 };
    public readonly Option<int> Minibatches = new("--minibatches") { Description = "PPO: minibatches per pass.", DefaultValueFactory = _ => 2 };
    public readonly Option<double> Lambda = new("--lambda") { Description = "PPO: GAE λ.", DefaultValueFactory = _ => 0.95 };
    public readonly Option<double> ClipRange = new("--cliprange") { Description = "PPO: policy ratio clip ε.", DefaultValueFactory = _ => 0.2 };
    public readonly Option<double> ValueCoefficient = new("--value-coef") { Description = "PPO: value-loss weight.", DefaultValueFactory = _ => 0.1 };
    public readonly Option<double> ValueClip = new("--value-clip") { Description = "PPO: value clip range.", DefaultValueFactory = _ => 0.2 };
    public readonly Option<bool> NoWhiten = new("--no-whiten") { Description = "PPO: keep raw advantages." };
    public readonly Option<float?> MissingEndPenalty = new("--missing-end-penalty") { Description = "PPO: score for a response without the end token (default: off)." };
    public readonly Option<string> Entropy = new("--entropy") { Description = "rkl: the γ·H term in-reward (default) or exact.", DefaultValueFactory = _ => "in-reward" };
    public readonly Option<string> ValueModel = new("--value-model") { Description = "PPO: value head on the policy's backbone (shared) or on a separate GPT initialised from π0 (separate).", DefaultValueFactory = _ => "shared" };

    public static OnlineOptions Create() => new();

    public void AddTo(Command command)
    {
        foreach (Option o in new Option[] { RewardModel, PairSource, Eta, MaxNewTokens, Epochs, Minibatches, Lambda, ClipRange, ValueCoefficient, ValueClip, NoWhiten, MissingEndPenalty, Entropy, ValueModel })
            command.Options.Add(o);
    }

    public sealed record Values(FileInfo? RewardModel, PairSource PairSource, double Eta, int MaxNewTokens, int Epochs, int Minibatches, double Lambda,
                                double ClipRange, double ValueCoefficient, double ValueClip, bool Whiten, float? MissingEndPenalty, EntropyBonus Entropy,
                                bool SeparateValueModel);

    public Values Read(ParseResult parse)
    {
        var source = parse.GetValue(PairSource)!.ToLowerInvariant() switch
        {
            "policy" => Alignment.Objectives.PairSource.Policy,
            "reference" => Alignment.Objectives.PairSource.Reference,
            "dataset" => Alignment.Objectives.PairSource.Dataset,
            var other => throw new CliUsageException($"--pair-source must be policy, reference or dataset (got '{other}')"),
        };
        var entropy = parse.GetValue(Entropy)!.ToLowerInvariant() switch
        {
            "in-reward" => EntropyBonus.InReward,
            "exact" => EntropyBonus.Exact,
            var other => throw new CliUsageException($"--entropy must be in-reward or exact (got '{other}')"),
        };
        bool separate = parse.GetValue(ValueModel)!.ToLowerInvariant() switch
        {
            "shared" => false,
            "separate" => true,
            var other => throw new CliUsageException($"--value-model must be shared or separate (got '{other}')"),
        };
        return new Values(parse.GetValue(RewardModel), source, parse.GetValue(Eta), CliErrors.Positive(parse.GetValue(MaxNewTokens), "--max-new-tokens"),
            CliErrors.Positive(parse.GetValue(Epochs), "--ppo-epochs"), CliErrors.Positive(parse.GetValue(Minibatches), "--minibatches"),
            parse.GetValue(Lambda), parse.GetValue(ClipRange), parse.GetValue(ValueCoefficient), parse.GetValue(ValueClip), !parse.GetValue(NoWhiten),
            parse.GetValue(MissingEndPenalty), entropy, separate);
    }
}

/// <summary>
/// <c>distalign align --objective distill|rebel|rlhf|rkl</c>: the on-policy objectives, scored by a reward model. distill and REBEL
/// run in the alignment trainer (a step = one minibatch of prompts with two responses each); rlhf and rkl run PPO (a step = one
/// rollout of --batch prompts, then --ppo-epochs × --minibatches optimizer steps). Prompts are the data file's.
/// With <c>--device cuda</c> (or auto with a usable GPU) π, π0 and a separate value model are <see cref="GptPolicy"/>s (scores,
/// gradients, clipping and AdamW on the device; value heads on the host; responses decoded on the device by GptPolicy.Sample, the draws
/// on the host), and R̂'s backbone runs on a GPU engine (its scalar head on the host); rkl's
/// <c>--entropy exact</c> takes its entropies and their gradient from the fused LM head on the device.
/// </summary>
internal static class OnlineAlign
{
    public static int Run(FileInfo modelFile, FileInfo dataFile, string outDir, CommonTrainingOptions.Values common, AlignCommand.AlignSettings s,
                          OnlineOptions.Values o, GpuTrainingOptions.Values gpuOptions)
    {
        string objective = s.Objective.ToLowerInvariant();
        if (o.RewardModel is null) throw new CliUsageException($"--objective {objective} needs --reward-model (train one with `distalign reward`)");
        if (!o.RewardModel.Exists) throw new CliUsageException($"--reward-model {o.RewardModel.FullName}: no such file");
        if (objective != "distill" && s.KlBeta != 0) throw new CliUsageException("--kl-beta goes with --objective pmle or distill (rlhf and rkl take --beta)");

        bool ppo = objective is "rlhf" or "rkl";
        if (s.Train.Frozen && ppo && o.SeparateValueModel)
            throw new CliUsageException($"--train {s.Train.Name} takes the value head on the frozen features (--value-model shared), not a separate value model");
        var (gpt, tok, pairs, dataHash, policyFile) = CliData.LoadModelAndPairs(modelFile, dataFile, common, s.Train.Frozen);
        if (s.Zero1) gpt = Ranks.WithShardedOptimizer(gpt);
        var train = TiltAlign.Resolve(s.Train, policyFile, modelFile.FullName, gpt);
        if (Ranks.Group.Size > 1 && o.SeparateValueModel)
            throw new CliUsageException("across ranks, PPO keeps its value head on the policy (--value-model shared); a separate value model runs in one process");
        // --device cuda (or auto with a usable GPU): π, π0, a separate value model and R̂'s backbone on GPU engines;
        // `gpt` is the host mirror that checkpoints save and restore.
        using var device = train.Frozen ? null : GpuTrainingOptions.OpenIfChosen(gpuOptions, gpt);
        var adamW = new AdamWSettings(WeightDecay: s.WeightDecay);
        var models = device?.Models ?? GptDevice.Cpu;
        GptPolicy NewPolicy(Gpt model, bool withValueHead) => new(model, adamW, ownsModel: true, withValueHead: withValueHead, models);
        using var backbone = train.Frozen ? gpt : null;   // a tilt policy shares its frozen backbone; a GPT policy owns its model
        using IValuePolicy policy = train.Frozen ? TiltAlign.Policy(gpt, policyFile, train, adamW, pairs, withValueHead: ppo, common.Seed)
                                                 : NewPolicy(gpt, ppo && !o.SeparateValueModel);
        string modelHash = ModelHash.Of(policy);
        using var reference = policy.Snapshot();
        GptPolicy? valueModel = null;
        if (ppo && o.SeparateValueModel)
        {
            var valueGpt = new Gpt(gpt.Config);
            gpt.Parameters.CopyTo(valueGpt.Parameters);
            valueModel = NewPolicy(valueGpt, withValueHead: true);
        }
        using var valueModelOwner = valueModel;
        IValuePolicy valuePolicy = valueModel is null ? policy : new PolicyWithValueModel(policy, valueModel);
        var loaded = Alignment.Reward.RewardModel.Load(o.RewardModel.FullName, new AdamWSettings(), device: models);
        using var rewardModel = loaded.Model;
        if (device is not null)
            Console.WriteLine($"training on {device.Description} (π, π0{(valueModel is null ? "" : ", the value model")} and " +
                              "R̂'s backbone on the device; responses decoded on the device, drawn on the host)");
        if (loaded.TokenizerSpec is { } spec && spec != tok.Spec)
            throw new CheckpointMismatchException($"{o.RewardModel.FullName}: the reward model uses tokenizer '{spec}', the policy '{tok.Spec}'");
        string rewardHash = Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(o.RewardModel.FullName)))[..16];
        int context = gpt.Config.MaxSequenceLength;
        int longestPrompt = pairs.Max(p => p.Prompt.Length);
        int maxNew = Math.Min(o.MaxNewTokens, context - longestPrompt);
        if (maxNew < 1) throw new CliUsageException($"prompts of up to {longestPrompt} tokens leave no room to sample in the context of {context}");
        var sampling = new SamplingOptions(maxNew, EndOfText: tok.EndOfText);

        CheckpointedRun run;
        Func<int> completed;
        int steps;
        string progressMetric;
        string headline;
        if (ppo)
        {
            var prompts = OfflinePreferenceObjective.DistinctPrompts(pairs.Select(p => p.Prompt));
            var options = new PpoOptions
            {
                Objective = objective == "rlhf" ? PpoObjective.Rlhf : PpoObjective.ReverseKl,
                Beta = s.Beta, Gamma = objective == "rkl" ? s.Gamma : 0, Entropy = o.Entropy, Steps = common.Steps,
                PromptsPerIteration = common.Batch, Epochs = o.Epochs, Minibatches = Math.Min(o.Minibatches, common.Batch), Lambda = o.Lambda,
                ClipRange = o.ClipRange, ValueCoefficient = o.ValueCoefficient, ValueClip = o.ValueClip, WhitenAdvantages = o.Whiten,
                MissingEndPenalty = o.MissingEndPenalty, Sampling = sampling, LearningRate = common.LearningRate, WarmupSteps = common.Warmup,
                GradientClip = common.Clip, Seed = common.Seed,
            }.Validate();
            var trainer = new PpoTrainer(valuePolicy, reference, rewardModel, prompts, options, Ranks.Settings);
            string identity = JsonSerializer.Serialize(new
            {
                objective, options.Beta, options.Gamma, entropy = options.Entropy.ToString(), options.Steps, options.PromptsPerIteration, options.Epochs,
                options.Minibatches, options.Lambda, options.ClipRange, options.ValueCoefficient, options.ValueClip, options.WhitenAdvantages,
                options.MissingEndPenalty, value_model = o.SeparateValueModel ? "separate" : "shared", max_new_tokens = maxNew, options.LearningRate, options.WarmupSteps, options.GradientClip, options.Seed,
                s.WeightDecay, common.MaxPromptTokens, common.MaxResponseTokens, model_hash = modelHash, reward_hash = rewardHash, data_hash = dataHash,
                train = train.Name, adapter_rank = train.AdapterRank,
            });
            run = new PpoRun(trainer, valuePolicy, outDir, tok.Spec, identity, s.CheckpointEvery) { WritesFiles = Ranks.IsRoot };
            completed = () => trainer.Step;
            steps = options.Steps;
            progressMetric = "objective/scores";
            headline = $"align {objective} (PPO, β {options.Beta.ToString(CultureInfo.InvariantCulture)}" +
                       (objective == "rkl" ? $", γ {options.Gamma.ToString(CultureInfo.InvariantCulture)}, entropy {o.Entropy}" : "") +
                       (o.SeparateValueModel ? ", separate value model" : "") +
                       $") · {gpt.Config}{TiltAlign.Describe(policy)} · {prompts.Count} prompts · {options.Steps} iterations of {options.PromptsPerIteration}";
        }
        else
        {
            var loss = objective == "distill" ? new PairwiseLossSettings(PairwiseLossVariant.Distillation, Gamma: s.Gamma)
                                              : new PairwiseLossSettings(PairwiseLossVariant.Rebel, Eta: o.Eta);
            KlRegularizer? kl = s.KlBeta > 0 ? new KlRegularizer(s.KlBeta, s.KlSamples, CliErrors.Positive(s.KlMaxTokens, "--kl-max-tokens"), tok.EndOfText) : null;
            if (kl is not null && s.KlSamples < 2) throw new CliUsageException($"--kl-samples must be at least 2 (got {s.KlSamples})");
            var options = new AlignmentTrainingOptions
            {
                Objective = AlignmentObjective.OnPolicy, Loss = loss, Kl = kl, PairSource = objective == "rebel" ? PairSource.Policy : o.PairSource,
                Sampling = sampling, Steps = common.Steps, BatchPairs = common.Batch, GradientAccumulation = s.GradientAccumulation,
                LearningRate = common.LearningRate, WarmupSteps = common.Warmup, GradientClip = common.Clip, EvalFraction = common.EvalFraction,
                EvaluateEvery = common.EvalEvery, Seed = common.Seed,
            }.Validate();
            var trainer = new AlignmentTrainer(policy, reference, pairs, null, options, rewardModel, Ranks.Settings);
            string identity = JsonSerializer.Serialize(new
            {
                objective, variant = loss.Variant.ToString(), loss.Gamma, loss.Eta, pair_source = options.PairSource.ToString(), kl_beta = kl?.Beta ?? 0,
                kl_samples = kl?.SamplesPerPrompt ?? 0, kl_max_tokens = kl?.MaxNewTokens ?? 0, max_new_tokens = maxNew, options.Steps, options.BatchPairs,
                options.GradientAccumulation, options.LearningRate, options.WarmupSteps, options.GradientClip, options.EvalFraction, options.EvaluateEvery,
                options.Seed, s.WeightDecay, common.MaxPromptTokens, common.MaxResponseTokens, model_hash = modelHash, reward_hash = rewardHash, data_hash = dataHash,
                train = train.Name, adapter_rank = train.AdapterRank,
            });
            run = new AlignmentRun(trainer, policy, outDir, tok.Spec, identity, s.CheckpointEvery) { WritesFiles = Ranks.IsRoot };
            completed = () => trainer.Step;
            steps = options.Steps;
            progressMetric = "objective/scores";
            headline = $"align {objective} ({options.PairSource} pairs) · {gpt.Config}{TiltAlign.Describe(policy)} · {trainer.TrainPairs} train / {trainer.EvalPairs} eval pairs · {options.Steps} steps";
        }

        if (run.Start(s.Resume) is { } latest) Console.WriteLine($"resumed from {latest} at step {completed()}");
        else if (s.Resume) Console.WriteLine($"no checkpoint in {outDir}: starting from step 0");
        Console.WriteLine(headline);

        AlignmentStepReport? last = null;
        var lastEval = new Dictionary<string, double>();
        CliProgress.Run(steps, completed(), task => run.RunToEnd(report =>
        {
            last = report;
            foreach (var (k, v) in report.Metrics) if (k.StartsWith("eval_", StringComparison.Ordinal)) lastEval[k] = v;
            task.Description = CliProgress.Compact(report, progressMetric);
            task.Value = report.Step;
        }));

        string modelPath = Path.Combine(outDir, GptCheckpoint.ModelFileName);
        if (Ranks.IsRoot) PolicyCheckpoint.SaveModel(policy, modelPath, tok.Spec);   // a GPU policy's trained weights are copied from the device first
        CliProgress.Summary(last, lastEval, run.MetricsPath, modelPath);
        return 0;
    }
}
