using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Engine.Distributed;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;
using Spectre.Console;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign align</c>: offline alignment of a GPT to a preference JSONL file with SFT, the DPO family / IPO, or PMLE
/// (optionally with a sampled KL to π0), writing metrics.jsonl, resumable checkpoints and DIR/model.safetensors.
/// </summary>
internal static class AlignCommand
{
    public static Command Create()
    {
        var objective = new Option<string>("--objective") { Description = "sft, dpo, pmle (offline); distill, rebel, rlhf, rkl (on-policy, need --reward-model).", Required = true };
        var model = new Option<FileInfo>("--model") { Description = "π0: the model to start from (and the DPO reference).", Required = true };
        var data = new Option<FileInfo>("--data") { Description = "Preference pairs, JSONL with prompt/chosen/rejected.", Required = true };
        var output = new Option<DirectoryInfo>("--out") { Description = "Output folder (metrics.jsonl, step-N/ checkpoints, cache/, model.safetensors).", Required = true };
        var variant = new Option<string>("--variant") { Description = "DPO loss: sigmoid, conservative, robust, hinge or ipo.", DefaultValueFactory = _ => "sigmoid" };
        var beta = new Option<double>("--beta") { Description = "β of the DPO family / IPO; the KL weight of rlhf and rkl.", DefaultValueFactory = _ => 0.1 };
        var gamma = new Option<double>("--gamma") { Description = "γ of PMLE and distillation; rkl's entropy weight.", DefaultValueFactory = _ => 1.0 };
        var epsilon = new Option<double>("--epsilon") { Description = "ε: label smoothing (conservative) or flip rate (robust).", DefaultValueFactory = _ => 0.0 };
        var klBeta = new Option<double>("--kl-beta") { Description = "PMLE and distillation: weight of KL(π ‖ π0) from samples (0 = off).", DefaultValueFactory = _ => 0.0 };
        var klSamples = new Option<int>("--kl-samples") { Description = "PMLE: samples per prompt for the KL estimate (≥ 2).", DefaultValueFactory = _ => 2 };
        var klTokens = new Option<int>("--kl-max-tokens") { Description = "PMLE: most tokens per KL sample.", DefaultValueFactory = _ => 16 };
        var options = CommonTrainingOptions.Create(defaultLr: 1e-4f);
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Training checkpoint every N steps (and at the end).", DefaultValueFactory = _ => 50 };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay.", DefaultValueFactory = _ => 0f };
        var gradAccum = new Option<int>("--grad-accum") { Description = "Micro-batches per optimizer step.", DefaultValueFactory = _ => 1 };
        var resume = new Option<bool>("--resume") { Description = "Continue from the latest checkpoint in --out." };
        var zero1 = new Option<bool>("--zero1") { Description = "Under mpirun, --train full on the CPU: shard the AdamW moments over the ranks (ZeRO-1)." };
        var train = new Option<string>("--train")
        {
            Description = "What trains: full (every weight of π0's copy), tilt (π0 frozen, a per-token logit offset b trained: π_b ∝ π0·exp(b); " +
                          "the model file keeps b as 'logit_offset') or head-lora (tilt plus a rank-r update A·Bᵀ of the LM head over π0's frozen features). " +
                          "tilt and head-lora run on the CPU.",
            DefaultValueFactory = _ => "full",
        };
        train.AcceptOnlyFromAmong("full", "tilt", "head-lora");
        var adapterRank = new Option<int?>("--adapter-rank") { Description = "r of --train head-lora's adapter (default 4, or the --model file's)." };
        var online = OnlineOptions.Create();
        var gpuOptions = GpuTrainingOptions.Create();

        var command = new Command("align",
            "Align a GPT to preference pairs: SFT, DPO (sigmoid/conservative/robust/hinge/IPO), PMLE (+KL), preference distillation, REBEL, RLHF (PPO) or reverse KL (PPO).")
        {
            objective, model, data, output, train, adapterRank, variant, beta, gamma, epsilon, klBeta, klSamples, klTokens, gradAccum, weightDecay, checkpointEvery, resume, zero1,
        };
        options.AddTo(command);
        online.AddTo(command);
        gpuOptions.AddTo(command);
        command.SetAction(parse =>
        {
            var common = options.Read(parse);
            var settings = new AlignSettings(
                parse.GetValue(objective)!, parse.GetValue(variant)!, parse.GetValue(beta), parse.GetValue(gamma), parse.GetValue(epsilon),
                parse.GetValue(klBeta), parse.GetValue(klSamples), parse.GetValue(klTokens),
                CliErrors.Positive(parse.GetValue(gradAccum), "--grad-accum"), parse.GetValue(weightDecay),
                CliErrors.Positive(parse.GetValue(checkpointEvery), "--checkpoint-every"), parse.GetValue(resume), TrainedClass.Parse(parse.GetValue(train)!, parse.GetValue(adapterRank)),
                parse.GetValue(zero1));
            if (settings.Zero1 && (settings.Train.Frozen || DeviceOption.Chosen == "cuda"))
                throw new CliUsageException("--zero1 shards the AdamW state of a fully trained GPT on the CPU: use it with --train full and --device cpu");
            if (settings.Train.Frozen && DeviceOption.Chosen == "cuda")
                throw new CliUsageException($"--train {settings.Train.Name} runs on the CPU (a step is one GEMM over cached features): use --device cpu, or --train full on the GPU");
            string name = settings.Objective.ToLowerInvariant();
            if (name is "distill" or "rebel" or "rlhf" or "rkl")
                return OnlineAlign.Run(parse.GetValue(model)!, parse.GetValue(data)!, parse.GetValue(output)!.FullName, common, settings, online.Read(parse),
                                       gpuOptions.Read(parse));
            if (parse.GetResult(online.RewardModel) is not null) throw new CliUsageException("--reward-model goes with --objective distill, rebel, rlhf or rkl");
            return Run(parse.GetValue(model)!, parse.GetValue(data)!, parse.GetValue(output)!.FullName, common, settings, gpuOptions.Read(parse));
        });
        return command;
    }

    internal sealed record AlignSettings(string Objective, string Variant, double Beta, double Gamma, double Epsilon, double KlBeta, int KlSamples,
                                         int KlMaxTokens, int GradientAccumulation, float WeightDecay, int CheckpointEvery, bool Resume, TrainedClass Train,
                                         bool Zero1 = false);

    private static PairwiseLossVariant VariantOf(string name) => name.ToLowerInvariant() switch
    {
        "sigmoid" => PairwiseLossVariant.DpoSigmoid,
        "conservative" => PairwiseLossVariant.DpoConservative,
        "robust" => PairwiseLossVariant.DpoRobust,
        "hinge" => PairwiseLossVariant.DpoHinge,
        "ipo" => PairwiseLossVariant.Ipo,
        _ => throw new CliUsageException($"--variant must be sigmoid, conservative, robust, hinge or ipo (got '{name}')"),
    };

    private static int Run(FileInfo modelFile, FileInfo dataFile, string outDir, CommonTrainingOptions.Values common, AlignSettings s,
                           GpuTrainingOptions.Values gpuOptions)
    {
        var objective = s.Objective.ToLowerInvariant() switch
        {
            "sft" => AlignmentObjective.Sft,
            "dpo" or "pmle" => AlignmentObjective.Preference,
            _ => throw new CliUsageException($"--objective must be sft, dpo, pmle, distill, rebel, rlhf or rkl (got '{s.Objective}')"),
        };
        bool pmle = s.Objective.Equals("pmle", StringComparison.OrdinalIgnoreCase);
        if (!pmle && s.KlBeta != 0) throw new CliUsageException("--kl-beta goes with --objective pmle");
        var loss = pmle ? new PairwiseLossSettings(PairwiseLossVariant.Pmle, Gamma: s.Gamma)
                        : new PairwiseLossSettings(VariantOf(s.Variant), Beta: s.Beta, Epsilon: s.Epsilon);

        var (gpt, tok, pairs, dataHash, loaded) = CliData.LoadModelAndPairs(modelFile, dataFile, common, s.Train.Frozen);
        if (s.Zero1) gpt = Ranks.WithShardedOptimizer(gpt);
        var train = TiltAlign.Resolve(s.Train, loaded, modelFile.FullName, gpt);
        // --device cuda (or auto with a usable GPU): π and the reference π0 on GptPolicy (scores, gradients, clipping and
        // AdamW on the device; KL samples decoded on the device); `gpt` is the host copy that checkpoints save and restore.
        using var device = train.Frozen ? null : GpuTrainingOptions.OpenIfChosen(gpuOptions, gpt);
        var adamW = new AdamWSettings(WeightDecay: s.WeightDecay);
        using var backbone = train.Frozen ? gpt : null;   // a tilt policy shares its frozen backbone; a GPT policy owns its model
        using IPolicy policy = train.Frozen ? TiltAlign.Policy(gpt, loaded, train, adamW, pairs, withValueHead: false, common.Seed)
                                            : new GptPolicy(gpt, adamW, ownsModel: true, device: device?.Models);
        if (device is not null) Console.WriteLine($"training on {device.Description} (π and π0 on the device: scores, gradients, clipping, AdamW, reference log-probs)");
        string modelHash = ModelHash.Of(policy);
        KlRegularizer? kl = pmle && s.KlBeta > 0
            ? new KlRegularizer(s.KlBeta, s.KlSamples, CliErrors.Positive(s.KlMaxTokens, "--kl-max-tokens"), tok.EndOfText) : null;
        if (kl is not null && s.KlSamples < 2) throw new CliUsageException($"--kl-samples must be at least 2 (got {s.KlSamples})");
        var options = new AlignmentTrainingOptions
        {
            Objective = objective, Loss = loss, Kl = kl, Steps = common.Steps, BatchPairs = common.Batch,
            GradientAccumulation = s.GradientAccumulation, LearningRate = common.LearningRate, WarmupSteps = common.Warmup,
            GradientClip = common.Clip, EvalFraction = common.EvalFraction, EvaluateEvery = common.EvalEvery, Seed = common.Seed,
        }.Validate();

        using var reference = policy.Snapshot(); // π0, taken before any checkpoint is loaded
        float[]? refs = null;
        if (options.UsesReferenceLogProbs)
        {
            // Rank 0 computes (or reads) the cache; the other ranks receive its values.
            refs = Ranks.IsRoot ? ReferenceLogProbs.Get(reference, pairs, Path.Combine(outDir, "cache"), Console.WriteLine, out _) : new float[2 * pairs.Count];
            Ranks.Group.Broadcast<float>(refs, root: 0, "reference log-probs");
        }

        var trainer = new AlignmentTrainer(policy, reference, pairs, refs, options, parallel: Ranks.Settings);
        string identity = JsonSerializer.Serialize(new
        {
            objective = s.Objective.ToLowerInvariant(), variant = options.Loss.Variant.ToString(), options.Loss.Beta, options.Loss.Gamma,
            options.Loss.Epsilon, kl_beta = kl?.Beta ?? 0, kl_samples = kl?.SamplesPerPrompt ?? 0, kl_max_tokens = kl?.MaxNewTokens ?? 0,
            options.Steps, options.BatchPairs, options.GradientAccumulation, options.LearningRate, options.WarmupSteps, options.GradientClip,
            options.EvalFraction, options.EvaluateEvery, options.Seed, s.WeightDecay, common.MaxPromptTokens, common.MaxResponseTokens,
            model_hash = modelHash, data_hash = dataHash, train = train.Name, adapter_rank = train.AdapterRank,
        });
        var run = new AlignmentRun(trainer, policy, outDir, tok.Spec, identity, s.CheckpointEvery) { WritesFiles = Ranks.IsRoot };
        if (run.Start(s.Resume) is { } latest) Console.WriteLine($"resumed from {latest} at step {trainer.Step}");
        else if (s.Resume) Console.WriteLine($"no checkpoint in {outDir}: starting from step 0");
        Console.WriteLine($"align {s.Objective.ToLowerInvariant()}" + (objective == AlignmentObjective.Preference ? $" ({options.Loss.Variant})" : "") +
                          $" · {gpt.Config}{TiltAlign.Describe(policy)} · {trainer.TrainPairs} train / {trainer.EvalPairs} eval pairs · {options.Steps} steps");

        AlignmentStepReport? last = null;
        var lastEval = new Dictionary<string, double>();
        CliProgress.Run(options.Steps, trainer.Step, task => run.RunToEnd(report =>
        {
            last = report;
            foreach (var (k, v) in report.Metrics) if (k.StartsWith("eval_", StringComparison.Ordinal)) lastEval[k] = v;
            task.Description = CliProgress.Compact(report, objective == AlignmentObjective.Sft ? "mean_token_logp" : pmle ? "accuracy" : "rewards/accuracies");
            task.Value = report.Step;
        }));

        string modelPath = Path.Combine(outDir, GptCheckpoint.ModelFileName);
        if (Ranks.IsRoot) PolicyCheckpoint.SaveModel(policy, modelPath, tok.Spec);   // a GPU policy's trained weights are copied from the device first
        CliProgress.Summary(last, lastEval, run.MetricsPath, modelPath);
        return 0;
    }
}

/// <summary>What <c>align --train</c> trains: every weight (full), or over the frozen π0 a logit offset (tilt) and a head adapter (head-lora).</summary>
internal sealed record TrainedClass(string Name, int AdapterRank)
{
    /// <summary>The adapter rank --train head-lora takes when neither --adapter-rank nor the model file gives one.</summary>
    public const int DefaultAdapterRank = 4;

    /// <summary>π0 stays frozen (tilt, head-lora): the policy is a <see cref="TiltPolicy"/>.</summary>
    public bool Frozen => Name != "full";

    /// <param name="rank">--adapter-rank (null when not given; 0 means "take the model file's, or the default")</param>
    public static TrainedClass Parse(string name, int? rank)
    {
        if (rank is not null && name != "head-lora") throw new CliUsageException("--adapter-rank goes with --train head-lora");
        if (rank is < 1) throw new CliUsageException($"--adapter-rank must be at least 1 (got {rank})");
        return new TrainedClass(name, rank ?? 0);
    }
}

/// <summary>
/// <c>align --train tilt|head-lora</c>: the policy class π ∝ π0·exp(b (+ (h·A)·Bᵀ)) over the frozen π0 of <c>--model</c>
/// (<see cref="TiltPolicy"/>), starting from the file's <c>logit_offset</c> (and adapter) when it is such a model already (else b = 0, B = 0).
/// The final hidden states of the data's pairs are computed once (<see cref="FrozenFeatureCache"/>), so a step is one
/// [tokens × C]·[C × V] GEMM; the model file written at the end is π0's weights plus θ, marked <c>distalign.trained</c>.
/// </summary>
internal static class TiltAlign
{
    /// <summary>Most floats of features kept for the data's pairs (1 GiB); past it, features are recomputed when a batch needs them.</summary>
    public const long MaxPinnedFloats = 1L << 28;

    /// <summary>The resolved class: head-lora's rank from --adapter-rank, the file, or the default; a file's adapter is never dropped.</summary>
    /// <param name="model">the loaded GPT, disposed when the class is refused</param>
    public static TrainedClass Resolve(TrainedClass train, GptCheckpoint.LoadedModel loaded, string modelPath, Gpt model)
    {
        try
        {
            return ResolveOrThrow(train, loaded, modelPath);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    private static TrainedClass ResolveOrThrow(TrainedClass train, GptCheckpoint.LoadedModel loaded, string modelPath)
    {
        if (!train.Frozen) return train;
        if (train.Name == "tilt")
        {
            if (loaded.AdapterRank > 0)
                throw new CliUsageException($"--model {modelPath} is a head-lora model (rank {loaded.AdapterRank}): --train tilt would drop its adapter; use --train head-lora");
            return train;
        }
        if (loaded.AdapterRank > 0 && train.AdapterRank > 0 && train.AdapterRank != loaded.AdapterRank)
            throw new CliUsageException($"--adapter-rank {train.AdapterRank}: --model {modelPath} has a rank-{loaded.AdapterRank} adapter");
        int rank = train.AdapterRank > 0 ? train.AdapterRank : loaded.AdapterRank > 0 ? loaded.AdapterRank : TrainedClass.DefaultAdapterRank;
        return train with { AdapterRank = rank };
    }

    /// <param name="seed">A's initial draw when the file has no adapter</param>
    public static TiltPolicy Policy(Gpt backbone, GptCheckpoint.LoadedModel loaded, TrainedClass train, AdamWSettings adamW,
                                    IReadOnlyList<PreferencePair> pairs, bool withValueHead, ulong seed)
    {
        var cache = new FrozenFeatureCache(backbone, MaxPinnedFloats);
        cache.Add(OfflinePreferenceObjective.Sequences(pairs));
        var policy = new TiltPolicy(cache, adamW, loaded.LogitOffset, withValueHead, train.AdapterRank, adapterSeed: seed);
        if (loaded.AdapterRank > 0)
        {
            loaded.AdapterA.CopyTo(policy.AdapterA);
            loaded.AdapterB.CopyTo(policy.AdapterB);
        }
        string start = loaded.LogitOffset is null ? "from π0" : loaded.AdapterRank > 0 ? "from the model's offset and adapter" : "from the model's logit_offset";
        string what = train.AdapterRank > 0 ? $"b ∈ ℝ^{backbone.Config.VocabSize} and a rank-{train.AdapterRank} head adapter" : $"b ∈ ℝ^{backbone.Config.VocabSize}";
        Console.WriteLine(FormattableString.Invariant(
            $"{train.Name}: π0 frozen, {what} trained {start}; features of {cache.Count} sequences cached ({cache.Bytes / 1048576.0:F1} MiB)"));
        return policy;
    }

    /// <summary>What trains, for the run's headline.</summary>
    public static string Describe(IPolicy policy) => policy switch
    {
        TiltPolicy { AdapterRank: > 0 } t => $" (head-lora: π0 frozen, logit offset and rank-{t.AdapterRank} head adapter trained)",
        TiltPolicy => " (tilt: π0 frozen, logit offset trained)",
        _ => "",
    };
}

/// <summary>The flags align and reward share, with their defaults.</summary>
internal sealed class CommonTrainingOptions
{
    public readonly Option<int> Steps = new("--steps") { Description = "Optimizer steps.", DefaultValueFactory = _ => 200 };
    public readonly Option<int> Batch = new("--batch") { Description = "Pairs per micro-batch.", DefaultValueFactory = _ => 8 };
    public readonly Option<float> Lr;
    public readonly Option<int> Warmup = new("--warmup") { Description = "Linear warmup steps (then cosine decay to 10%).", DefaultValueFactory = _ => 10 };
    public readonly Option<float> Clip = new("--clip") { Description = "Global gradient-norm clip (0 = off).", DefaultValueFactory = _ => 1f };
    public readonly Option<double> EvalFraction = new("--eval-fraction") { Description = "Share of pairs held out for evaluation.", DefaultValueFactory = _ => 0.1 };
    public readonly Option<int> EvalEvery = new("--eval-every") { Description = "Evaluate every N steps (0 = never).", DefaultValueFactory = _ => 50 };
    public readonly Option<int> MaxPrompt = new("--max-prompt-tokens") { Description = "Most prompt tokens, start token included (0 = half the model's context).", DefaultValueFactory = _ => 0 };
    public readonly Option<int> MaxResponse = new("--max-response-tokens") { Description = "Most tokens per response, end-of-text included (0 = the rest of the context).", DefaultValueFactory = _ => 0 };
    public readonly Option<ulong> Seed = new("--seed") { Description = "Seed for the split, the data order and KL samples.", DefaultValueFactory = _ => 1UL };
    public readonly Option<int> Threads = new("--threads") { Description = "CPU threads (results are bit-identical for a given count).", DefaultValueFactory = _ => Environment.ProcessorCount };

    private CommonTrainingOptions(float defaultLr) =>
        Lr = new Option<float>("--lr") { Description = "Peak learning rate.", DefaultValueFactory = _ => defaultLr };

    public static CommonTrainingOptions Create(float defaultLr) => new(defaultLr);

    public void AddTo(Command command)
    {
        foreach (Option o in new Option[] { Steps, Batch, Lr, Warmup, Clip, EvalFraction, EvalEvery, MaxPrompt, MaxResponse, Seed, Threads })
            command.Options.Add(o);
    }

    public sealed record Values(int Steps, int Batch, float LearningRate, int Warmup, float Clip, double EvalFraction, int EvalEvery,
                                int MaxPromptTokens, int MaxResponseTokens, ulong Seed);

    public Values Read(ParseResult parse)
    {
        CpuParallel.Threads = CliErrors.Positive(parse.GetValue(Threads), "--threads");
        double fraction = parse.GetValue(EvalFraction);
        if (!(fraction >= 0 && fraction < 1)) throw new CliUsageException($"--eval-fraction must lie in [0, 1) (got {fraction})");
        return new Values(CliErrors.NonNegative(parse.GetValue(Steps), "--steps"), CliErrors.Positive(parse.GetValue(Batch), "--batch"),
            parse.GetValue(Lr), CliErrors.NonNegative(parse.GetValue(Warmup), "--warmup"), parse.GetValue(Clip), fraction,
            CliErrors.NonNegative(parse.GetValue(EvalEvery), "--eval-every"), CliErrors.NonNegative(parse.GetValue(MaxPrompt), "--max-prompt-tokens"),
            CliErrors.NonNegative(parse.GetValue(MaxResponse), "--max-response-tokens"), parse.GetValue(Seed));
    }
}

/// <summary>Loading π0 and the preference file, with the CLI's error conventions.</summary>
internal static class CliData
{
    /// <param name="tilt">the run keeps π0 frozen (tilt, head-lora): a tilt model's offset and adapter come back in the loaded model;
    /// otherwise a tilt model is refused, since training its backbone would drop them</param>
    public static (Gpt Model, Gpt2Tokenizer Tokenizer, List<PreferencePair> Pairs, string DataHash, GptCheckpoint.LoadedModel Loaded) LoadModelAndPairs(
        FileInfo modelFile, FileInfo dataFile, CommonTrainingOptions.Values common, bool tilt = false)
    {
        if (!modelFile.Exists) throw new CliUsageException($"--model {modelFile.FullName}: no such file");
        if (!dataFile.Exists) throw new CliUsageException($"--data {dataFile.FullName}: no such file");
        List<PreferenceExample> examples;
        try
        {
            examples = PreferenceJsonl.Load(dataFile.FullName);
        }
        catch (DatasetFormatException e)
        {
            throw new CliUsageException($"{e.Message} [{e.Rule}]");
        }
        var loaded = GptCheckpoint.LoadModel(modelFile.FullName, withLogitOffset: tilt);
        var (gpt, spec) = loaded;
        try
        {
            var tok = Gpt2Tokenizer.FromSpec(spec ?? Gpt2Tokenizer.FullSpec);
            if (tok.VocabSize != gpt.Config.VocabSize)
                throw new CheckpointMismatchException($"{modelFile.FullName}: the model has {gpt.Config.VocabSize} tokens, its tokenizer '{tok.Spec}' {tok.VocabSize}");
            int context = gpt.Config.MaxSequenceLength;
            int maxPrompt = common.MaxPromptTokens > 0 ? common.MaxPromptTokens : Math.Max(1, context / 2);
            int maxResponse = common.MaxResponseTokens > 0 ? common.MaxResponseTokens : Math.Max(1, context + 1 - maxPrompt);
            if (maxPrompt + maxResponse - 1 > context)
                throw new CliUsageException($"--max-prompt-tokens {maxPrompt} + --max-response-tokens {maxResponse} − 1 exceeds the model's context of {context}");
            TokenizedDataset<TokenizedPreference> tokenized;
            try
            {
                tokenized = PreferenceTokenizer.Tokenize(examples, tok,
                    new TruncationOptions { MaxPromptTokens = maxPrompt, MaxResponseTokens = maxResponse }, dataFile.FullName);
            }
            catch (DatasetFormatException e)
            {
                throw new CliUsageException($"{e.Message} [{e.Rule}]");
            }
            Console.WriteLine($"data: {dataFile.Name}: {tokenized.Report}");
            if (tokenized.Examples.Count == 0) throw new CliUsageException($"--data {dataFile.FullName}: no usable pairs");
            var pairs = tokenized.Examples.Select(e => new PreferencePair(e.PromptIds, e.ChosenIds, e.RejectedIds)).ToList();
            return (gpt, tok, pairs, DatasetHash.Of(pairs), loaded);
        }
        catch
        {
            gpt.Dispose();
            throw;
        }
    }
}

/// <summary>Progress bar, compact metrics line and the summary table.</summary>
internal static class CliProgress
{
    public static void Run(int steps, int done, Action<ProgressTask> body) =>
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: Math.Max(1, steps));
                task.Value = done;
                body(task);
            });

    public static string Compact(AlignmentStepReport r, string extra) =>
        FormattableString.Invariant($"step {r.Step} loss {r["loss"]:F4}") +
        (r.Has(extra) ? FormattableString.Invariant($" {extra} {r[extra]:F3}") : "") +
        (r.Has("eval_loss") ? FormattableString.Invariant($" eval {r["eval_loss"]:F4}") : "") +
        FormattableString.Invariant($" |g| {r["grad_norm"]:F2} lr {r["lr"]:G3}");

    public static void Summary(AlignmentStepReport? last, IReadOnlyDictionary<string, double> eval, string metricsPath, string modelPath)
    {
        var table = new Table().AddColumn("metric").AddColumn(new TableColumn("value").RightAligned());
        if (last is not null)
        {
            table.AddRow("step", last.Step.ToString(CultureInfo.InvariantCulture));
            foreach (var (k, v) in last.Metrics)
                if (!k.StartsWith("eval_", StringComparison.Ordinal)) table.AddRow(Markup.Escape(k), v.ToString("G5", CultureInfo.InvariantCulture));
        }
        foreach (var (k, v) in eval) table.AddRow(Markup.Escape(k), v.ToString("G5", CultureInfo.InvariantCulture));
        AnsiConsole.Write(table);
        Console.WriteLine($"done: metrics in {metricsPath}; model written to {modelPath}");
    }
}
