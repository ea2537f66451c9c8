using System.CommandLine;
using System.Text.Json;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Data;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Tokenization;
using DistAlign.Transformer.Training;
using Spectre.Console;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign pretrain</c>: trains a GPT from scratch on the shipped corpus (or a text file) with
/// next-token prediction, writing atomic checkpoints it can resume from bit-identically.
/// </summary>
internal static class PretrainCommand
{
    public static Command Create()
    {
        var output = new Option<DirectoryInfo>("--out") { Description = "Checkpoint folder (created; holds step-N/ folders, 'latest' and model.safetensors).", Required = true };
        var text = new Option<FileInfo?>("--text") { Description = "UTF-8 text to train on (default: the shipped Moby-Dick corpus)." };
        var tokenizer = new Option<string>("--tokenizer") { Description = "gpt2 (50,257 tokens) or gpt2-k<K> (first K merges).", DefaultValueFactory = _ => "gpt2-k2000" };
        var layers = new Option<int>("--layers") { DefaultValueFactory = _ => 4, Description = "Transformer blocks." };
        var heads = new Option<int>("--heads") { DefaultValueFactory = _ => 4, Description = "Attention heads." };
        var channels = new Option<int>("--channels") { DefaultValueFactory = _ => 128, Description = "Model width." };
        var context = new Option<int>("--context") { DefaultValueFactory = _ => 128, Description = "Context length (position embeddings)." };
        var steps = new Option<int>("--steps") { DefaultValueFactory = _ => 500, Description = "Optimizer steps." };
        var batch = new Option<int>("--batch") { DefaultValueFactory = _ => 8, Description = "Rows per micro-batch, over all ranks under mpirun (each of N ranks takes batch/N)." };
        var seq = new Option<int>("--seq") { DefaultValueFactory = _ => 64, Description = "Tokens per row." };
        var accumulation = new Option<int>("--grad-accum") { DefaultValueFactory = _ => 1, Description = "Micro-batches per optimizer step." };
        var lr = new Option<float>("--lr") { DefaultValueFactory = _ => 3e-3f, Description = "Peak learning rate." };
        var warmup = new Option<int>("--warmup") { DefaultValueFactory = _ => 50, Description = "Linear warmup steps (then cosine decay to 10%)." };
        var weightDecay = new Option<float>("--weight-decay") { DefaultValueFactory = _ => 0.1f, Description = "AdamW decoupled weight decay (matrices only)." };
        var clip = new Option<float>("--clip") { DefaultValueFactory = _ => 1f, Description = "Global gradient-norm clip (0 = off)." };
        var evalEvery = new Option<int>("--eval-every") { DefaultValueFactory = _ => 100, Description = "Validation loss every N steps." };
        var checkpointEvery = new Option<int>("--checkpoint-every") { DefaultValueFactory = _ => 100, Description = "Training checkpoint every N steps (and at the end)." };
        var seed = new Option<ulong>("--seed") { DefaultValueFactory = _ => 1UL, Description = "Seed for initialisation and data order." };
        var threads = new Option<int>("--threads") { DefaultValueFactory = _ => Environment.ProcessorCount, Description = "CPU threads (results are bit-identical for a given count)." };
        var resume = new Option<bool>("--resume") { Description = "Continue from the latest checkpoint in --out." };
        var gpuOptions = GpuTrainingOptions.Create();
        var memoryBudget = new Option<string?>("--memory-budget") { Description = "Refuse, before allocating, a model + activations that need more per rank (e.g. 2GiB, 512MiB; default: the memory this process may use)." };
        var zero1 = new Option<bool>("--zero1") { Description = "Under mpirun: shard the AdamW moments over the ranks (ZeRO-1); each rank updates its shard, then the weights are all-gathered." };

        var command = new Command("pretrain", "Pretrain a GPT on the shipped corpus (or --text) with next-token prediction.")
        {
            output, text, tokenizer, layers, heads, channels, context, steps, batch, seq, accumulation, lr, warmup,
            weightDecay, clip, evalEvery, checkpointEvery, seed, threads, resume, memoryBudget, zero1,
        };
        gpuOptions.AddTo(command);
        command.SetAction(parse =>
        {
            CpuParallel.Threads = CliErrors.Positive(parse.GetValue(threads), "--threads");
            var tok = Gpt2Tokenizer.FromSpec(parse.GetValue(tokenizer)!);
            var config = new GptConfig(parse.GetValue(layers), parse.GetValue(heads), parse.GetValue(channels), tok.VocabSize, parse.GetValue(context)).Validate();
            var options = new LanguageModelTrainingOptions
            {
                Steps = parse.GetValue(steps), Rows = parse.GetValue(batch), Length = parse.GetValue(seq),
                GradientAccumulation = parse.GetValue(accumulation), LearningRate = parse.GetValue(lr),
                WarmupSteps = parse.GetValue(warmup), GradientClip = parse.GetValue(clip),
                AdamW = new AdamWSettings(WeightDecay: parse.GetValue(weightDecay)),
                EvaluateEvery = parse.GetValue(evalEvery), Seed = parse.GetValue(seed),
            }.Validate();
            if (options.Length > config.MaxSequenceLength)
                throw new CliUsageException($"--seq {options.Length} exceeds --context {config.MaxSequenceLength}");
            var textFile = parse.GetValue(text);
            // Without the flag, the budget is the physical memory (or container limit) the runtime sees, so a run that
            // cannot fit is refused with a message instead of dying in the allocator or swapping for hours.
            long budget = CliErrors.Bytes(parse.GetValue(memoryBudget), "--memory-budget") ?? GC.GetGCMemoryInfo().TotalAvailableMemoryBytes;
            // Refused before anything is read, tokenized or allocated: bytes needed and the largest arena in the message.
            int ranks = Ranks.Group.Size, optimizerShards = parse.GetValue(zero1) ? ranks : 1;
            if (options.Rows % ranks != 0)
                throw new CliUsageException($"--batch {options.Rows} must be a multiple of the {ranks} ranks (each rank takes an equal share of the rows)");
            Gpt.PlanTraining(config, options.Rows / ranks, options.Length, optimizerShards).EnsureFits(budget);
            var gpu = gpuOptions.Read(parse);
            gpu.CheckFits(config);
            if (optimizerShards > 1 && DeviceOption.Chosen == "cuda")
                throw new CliUsageException("--zero1 shards the CPU engine's AdamW state; on a GPU run data-parallel without it");
            return Run(parse.GetValue(output)!.FullName, textFile, tok, config, options,
                CliErrors.Positive(parse.GetValue(checkpointEvery), "--checkpoint-every"), parse.GetValue(resume), budget, gpu, optimizerShards);
        });
        return command;
    }

    /// <summary>One JSON line per step in --out: the exact loss (round-trip digits), gradient norm, learning rate and throughput.</summary>
    public const string MetricsFileName = "metrics.jsonl";

    private static string MetricsLine(StepReport report, double tokensPerSecond)
    {
        var line = new Dictionary<string, double>
        {
            ["step"] = report.Step, ["loss"] = report.Loss, ["grad_norm"] = report.GradientNorm,
            ["lr"] = report.LearningRate, ["tokens_per_second"] = tokensPerSecond,
        };
        if (report.ValidationLoss is float v) line["eval_loss"] = v;
        return JsonSerializer.Serialize(line);
    }

    private static int Run(string outDir, FileInfo? textFile, Gpt2Tokenizer tok, GptConfig config,
                           LanguageModelTrainingOptions options, int checkpointEvery, bool resume, long memoryBudget,
                           GpuTrainingOptions.Values gpuOptions, int optimizerShards)
    {
        CliErrors.EnsureWritableFolder(outDir, "--out"); // before hours of training that could not be saved
        TextSplit split;
        if (textFile is null) split = ShippedData.SplitMobyDick();
        else
        {
            if (!textFile.Exists) throw new CliUsageException($"--text {textFile.FullName}: no such file");
            split = TextSplit.AtParagraph(CliErrors.ReadUtf8Text(textFile.FullName, "--text"), ShippedData.DefaultTrainFraction);
        }
        var train = tok.Encode(split.Train);
        var validation = tok.Encode(split.HeldOut);
        AnsiConsole.MarkupLine($"[bold]pretrain[/] {config} · tokenizer {tok.Spec} · train {train.Length:N0} tokens, validation {validation.Length:N0}");

        int ranks = Ranks.Group.Size;
        var plan = Gpt.PlanTraining(config, options.Rows / ranks, options.Length, optimizerShards);
        string perRank = ranks > 1 ? $" per rank: {options.Rows / ranks} of the {options.Rows} rows" +
                                     (optimizerShards > 1 ? $", AdamW moments sharded over {optimizerShards} ranks (ZeRO-1)" : ", AdamW moments replicated") : "";
        AnsiConsole.MarkupLine($"memory plan: {plan.TotalBytes / (1024.0 * 1024.0):F1} MiB ({config.ParameterCount:N0} parameters){perRank}");
        using var model = new Gpt(config, memoryBudget, optimizerShards > 1 ? Ranks.Group : null);
        // --device cuda (or auto with a usable GPU): steps and evaluation on a GPU engine, cuBLAS GEMMs at --gpu-precision,
        // attention per --gpu-attention; `model` stays the host copy that is initialised, restored and saved.
        using var device = GpuTrainingOptions.OpenIfChosen(gpuOptions, config);
        if (device is not null && optimizerShards > 1)
            throw new CliUsageException("--zero1 shards the CPU engine's AdamW state; on a GPU run data-parallel without it (or --device cpu)");
        using var gpu = device?.Models.EngineFor(model);   // null on the CPU: the trainer runs on `model` itself
        if (device is not null) AnsiConsole.MarkupLine($"training on {Markup.Escape(device.Description)}");
        var trainer = new LanguageModelTrainer(model, train, validation, options, gpu, Ranks.Settings);
        string optionsJson = JsonSerializer.Serialize(new { config, options, tokenizer = tok.Spec });

        string metricsPath = Path.Combine(outDir, MetricsFileName);
        string? latest = resume ? GptCheckpoint.LatestTraining(outDir) : null;
        if (resume && latest is null) AnsiConsole.MarkupLine($"[yellow]no checkpoint in {Markup.Escape(outDir)}: starting from scratch[/]");
        if (latest is not null)
        {
            var (state, savedOptions) = GptCheckpoint.LoadTraining(latest, model);
            if (savedOptions != optionsJson)
                throw new CliUsageException($"{latest} was written with different settings; resume with the same flags:\n  saved: {savedOptions}\n  now:   {optionsJson}");
            trainer.Restore(state);
            if (Ranks.IsRoot) MetricsLog.TruncateAfter(metricsPath, state.Step);   // steps redone after the checkpoint are not listed twice
            AnsiConsole.MarkupLine($"resumed from {Markup.Escape(latest)} at step {state.Step}");
        }
        else
        {
            if (GptCheckpoint.LatestTraining(outDir) is { } existing)
                throw new CliUsageException($"{outDir} already holds a run ({existing}); pass --resume to continue it or choose another --out");
            model.InitializeGpt2(options.Seed);
            if (Ranks.IsRoot) File.WriteAllText(metricsPath, "");
        }
        trainer.UploadModel();

        float? lastValidation = null;
        float lastLoss = float.NaN;
        AnsiConsole.Progress()
            .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask("training", maxValue: options.Steps);
                task.Value = trainer.Step;
                while (trainer.Step < options.Steps)
                {
                    var report = trainer.TrainStep();
                    lastLoss = report.Loss;
                    lastValidation = report.ValidationLoss ?? lastValidation;
                    double tokensPerSecond = report.Tokens / (report.Milliseconds / 1000.0);
                    task.Description = $"step {report.Step}/{options.Steps} loss {report.Loss:F3}" +
                                       (lastValidation is float v ? $" val {v:F3}" : "") +
                                       $" | {tokensPerSecond:N0} tok/s";
                    task.Value = report.Step;
                    if (Ranks.IsRoot) File.AppendAllText(metricsPath, MetricsLine(report, tokensPerSecond) + "\n");
                    if (report.ValidationLoss is float vl) Console.WriteLine($"step {report.Step}: train loss {report.Loss:F4}, validation loss {vl:F4}, {tokensPerSecond:N0} tok/s");
                    if (report.Step % checkpointEvery == 0 || report.Step == options.Steps)
                    {
                        // Every rank takes part in gathering a sharded AdamW state; rank 0 alone writes.
                        var moments = model.OptimizerShard is null ? ((float[], float[])?)null : model.GatherMoments();
                        trainer.DownloadModel();
                        if (Ranks.IsRoot) GptCheckpoint.SaveTraining(outDir, model, tok.Spec, trainer.State, optionsJson, moments: moments);
                    }
                }
            });
        string modelPath = Path.Combine(outDir, GptCheckpoint.ModelFileName);
        trainer.DownloadModel();
        if (Ranks.IsRoot) GptCheckpoint.SaveModel(modelPath, model, tok.Spec);
        Console.WriteLine($"done: {trainer.Step} steps, last train loss {lastLoss:F4}" +
                          (lastValidation is float fv ? $", validation loss {fv:F4}" : "") + $"; model written to {modelPath}");
        return 0;
    }
}
