using System.CommandLine;
using System.Text.Json;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign reward</c>: trains a Bradley–Terry reward model (the GPT backbone of --model plus a zero-initialised scalar
/// head) on preference pairs through <see cref="RewardModelTrainer"/>; writes metrics.jsonl, resumable step-N/ checkpoints and
/// DIR/reward_model.safetensors (loadable with RewardModel.Load). With <c>--device cuda</c> (or auto with a usable GPU) the
/// backbone's forward, backward, clip and AdamW run on a GPU engine (GEMM precision and attention from the shared
/// <c>--gpu-precision</c> / <c>--gpu-attention</c>), the scalar head and the data on the host; checkpoints are written from the
/// downloaded weights, in the CPU format.
/// </summary>
internal static class RewardCommand
{
    public const string RewardModelFileName = "reward_model.safetensors";

    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "The GPT whose backbone the reward model starts from.", Required = true };
        var data = new Option<FileInfo>("--data") { Description = "Preference pairs, JSONL with prompt/chosen/rejected.", Required = true };
        var output = new Option<DirectoryInfo>("--out") { Description = "Output folder (metrics.jsonl, step-N/ checkpoints, reward_model.safetensors).", Required = true };
        var margin = new Option<double>("--margin") { Description = "Margin m in −ln σ(R⁺ − R⁻ − m).", DefaultValueFactory = _ => 0.0 };
        var centring = new Option<double>("--centring") { Description = "Centring coefficient c of c·(R⁺ + R⁻)².", DefaultValueFactory = _ => 0.01 };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay.", DefaultValueFactory = _ => 0f };
        var checkpointEvery = new Option<int>("--checkpoint-every") { Description = "Training checkpoint every N steps (and at the end).", DefaultValueFactory = _ => 50 };
        var resume = new Option<bool>("--resume") { Description = "Continue from the latest checkpoint in --out." };
        var options = CommonTrainingOptions.Create(defaultLr: 1e-4f);
        var gpuOptions = GpuTrainingOptions.Create();
        var command = new Command("reward", "Train a Bradley–Terry reward model on preference pairs.")
        {
            model, data, output, margin, centring, weightDecay, checkpointEvery, resume,
        };
        options.AddTo(command);
        gpuOptions.AddTo(command);
        command.SetAction(parse =>
        {
            var common = options.Read(parse);
            var settings = new PairwiseLossSettings(PairwiseLossVariant.RewardModel, Margin: parse.GetValue(margin), Centring: parse.GetValue(centring));
            try { settings.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new CliUsageException(e.Message); }
            if (!(common.LearningRate > 0)) throw new CliUsageException($"--lr must be positive (got {common.LearningRate})");
            return Run(parse.GetValue(model)!, parse.GetValue(data)!, parse.GetValue(output)!.FullName, common, settings, parse.GetValue(weightDecay),
                       CliErrors.Positive(parse.GetValue(checkpointEvery), "--checkpoint-every"), parse.GetValue(resume), gpuOptions.Read(parse));
        });
        return command;
    }

    private static int Run(FileInfo modelFile, FileInfo dataFile, string outDir, CommonTrainingOptions.Values common,
                           PairwiseLossSettings settings, float weightDecay, int checkpointEvery, bool resume, GpuTrainingOptions.Values gpuOptions)
    {
        var (gpt, tok, pairs, dataHash, _) = CliData.LoadModelAndPairs(modelFile, dataFile, common);
        string modelHash = ModelHash.Of(gpt); // of the starting backbone, before any checkpoint is loaded
        // --device cuda (or auto with a usable GPU): the backbone on a GPU engine (features forward and backward, clip, AdamW on the
        // device); the scalar head stays on the host, and `gpt` is the host mirror that checkpoints are written from.
        using var device = GpuTrainingOptions.OpenIfChosen(gpuOptions, gpt);
        using var rm = new RewardModel(gpt, new AdamWSettings(WeightDecay: weightDecay), ownsBackbone: true, device?.Models);
        Console.WriteLine(device is null ? "training on the CPU" : $"training on {device.Description} (backbone on the device; scalar head on the host)");
        var options = new RewardTrainingOptions
        {
            Loss = settings, Steps = common.Steps, BatchPairs = common.Batch, LearningRate = common.LearningRate, WarmupSteps = common.Warmup,
            GradientClip = common.Clip, EvalFraction = common.EvalFraction, EvaluateEvery = common.EvalEvery, Seed = common.Seed,
        }.Validate();
        var trainer = new RewardModelTrainer(rm, pairs, options, Ranks.Settings);
        string identity = JsonSerializer.Serialize(new
        {
            objective = "reward", settings.Margin, settings.Centring, options.Steps, options.BatchPairs, options.LearningRate, options.WarmupSteps,
            options.MinLearningRateFraction, options.GradientClip, options.EvalFraction, options.EvaluateEvery, options.Seed, weight_decay = weightDecay,
            common.MaxPromptTokens, common.MaxResponseTokens, model_hash = modelHash, data_hash = dataHash,
        });
        var run = new RewardModelRun(trainer, outDir, tok.Spec, identity, checkpointEvery) { WritesFiles = Ranks.IsRoot };
        if (run.Start(resume) is { } latest) Console.WriteLine($"resumed from {latest} at step {trainer.Step}");
        else if (resume) Console.WriteLine($"no checkpoint in {outDir}: starting from step 0");
        Console.WriteLine($"reward model · {gpt.Config} · {trainer.TrainPairs} train / {trainer.EvalPairs} eval pairs · {options.Steps} steps");

        AlignmentStepReport? last = null;
        var lastEval = new Dictionary<string, double>();
        CliProgress.Run(options.Steps, trainer.Step, task => run.RunToEnd(report =>
        {
            last = report;
            foreach (var (k, v) in report.Metrics) if (k.StartsWith("eval_", StringComparison.Ordinal)) lastEval[k] = v;
            task.Description = CliProgress.Compact(report, "accuracy");
            task.Value = report.Step;
        }));
        string path = Path.Combine(outDir, RewardModelFileName);
        if (Ranks.IsRoot) rm.Save(path, tok.Spec);
        CliProgress.Summary(last, lastEval, run.MetricsPath, path);
        return 0;
    }
}
