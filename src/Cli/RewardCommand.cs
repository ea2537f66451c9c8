using System.CommandLine;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Engine.Random;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Training;

namespace DistAlign.Cli;

/// <summary>
/// <c>distalign reward</c>: trains a Bradley–Terry reward model (the GPT backbone of --model plus a zero-initialised scalar
/// head) on preference pairs; writes metrics.jsonl and DIR/reward_model.safetensors (loadable with RewardModel.Load).
/// </summary>
internal static class RewardCommand
{
    public const string RewardModelFileName = "reward_model.safetensors";

    public static Command Create()
    {
        var model = new Option<FileInfo>("--model") { Description = "The GPT whose backbone the reward model starts from.", Required = true };
        var data = new Option<FileInfo>("--data") { Description = "Preference pairs, JSONL with prompt/chosen/rejected.", Required = true };
        var output = new Option<DirectoryInfo>("--out") { Description = "Output folder (metrics.jsonl, reward_model.safetensors).", Required = true };
        var margin = new Option<double>("--margin") { Description = "Margin m in −ln σ(R⁺ − R⁻ − m).", DefaultValueFactory = _ => 0.0 };
        var centring = new Option<double>("--centring") { Description = "Centring coefficient c of c·(R⁺ + R⁻)².", DefaultValueFactory = _ => 0.01 };
        var weightDecay = new Option<float>("--weight-decay") { Description = "AdamW decoupled weight decay.", DefaultValueFactory = _ => 0f };
        var options = CommonTrainingOptions.Create(defaultLr: 1e-4f);
        var command = new Command("reward", "Train a Bradley–Terry reward model on preference pairs.") { model, data, output, margin, centring, weightDecay };
        options.AddTo(command);
        command.SetAction(parse =>
        {
            var common = options.Read(parse);
            var settings = new PairwiseLossSettings(PairwiseLossVariant.RewardModel, Margin: parse.GetValue(margin), Centring: parse.GetValue(centring));
            try { settings.Validate(); }
            catch (ArgumentOutOfRangeException e) { throw new CliUsageException(e.Message); }
            if (!(common.LearningRate > 0)) throw new CliUsageException($"--lr must be positive (got {common.LearningRate})");
            return Run(parse.GetValue(model)!, parse.GetValue(data)!, parse.GetValue(output)!.FullName, common, settings, parse.GetValue(weightDecay));
        });
        return command;
    }

    private static int Run(FileInfo modelFile, FileInfo dataFile, string outDir, CommonTrainingOptions.Values common,
                           PairwiseLossSettings settings, float weightDecay)
    {
        var (gpt, tok, pairs, _) = CliData.LoadModelAndPairs(modelFile, dataFile, common);
        using var rm = new RewardModel(gpt, new AdamWSettings(WeightDecay: weightDecay), ownsBackbone: true);
        var (trainIdx, evalIdx) = AlignmentTrainer.Split(pairs.Count, common.EvalFraction, common.Seed);
        if (trainIdx.Length == 0) throw new CliUsageException("no training pairs left after the eval split");
        var train = trainIdx.Select(i => pairs[i]).ToList();
        var eval = evalIdx.Select(i => pairs[i]).ToList();
        Console.WriteLine($"reward model · {gpt.Config} · {train.Count} train / {eval.Count} eval pairs · {common.Steps} steps");

        Directory.CreateDirectory(outDir);
        string metricsPath = Path.Combine(outDir, AlignmentTrainer.MetricsFileName);
        File.WriteAllText(metricsPath, "");
        var schedule = new LearningRateSchedule(common.LearningRate, common.Warmup, common.Steps);
        int epoch = 0, index = 0;
        int[] order = Order(train.Count, common.Seed, epoch);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        AlignmentStepReport? last = null;
        var lastEval = new Dictionary<string, double>();
        CliProgress.Run(common.Steps, 0, task =>
        {
            for (int step = 0; step < common.Steps; step++)
            {
                var batch = new List<PreferencePair>(common.Batch);
                for (int i = 0; i < common.Batch; i++)
                {
                    if (index == order.Length) { epoch++; index = 0; order = Order(train.Count, common.Seed, epoch); }
                    batch.Add(train[order[index++]]);
                }
                float lr = schedule.At(step);
                var started = clock.Elapsed.TotalSeconds;
                RewardStepMetrics m;
                try { m = rm.TrainStep(batch, settings, step + 1, lr, common.Clip); }
                catch (InvalidOperationException e) { throw new NonFiniteValueException(step + 1, $"the reward-model loss or gradient ({e.Message})"); }
                double seconds = clock.Elapsed.TotalSeconds - started;
                long tokens = batch.Sum(p => 2L * p.Prompt.Length + p.Chosen.Length + p.Rejected.Length);
                var metrics = m.Pairwise.Named().Select(kv => new KeyValuePair<string, double>(kv.Name, kv.Value)).ToList();
                metrics.Add(new("lr", lr));
                metrics.Add(new("grad_norm", m.GradientNorm));
                metrics.Add(new("tokens_per_second", seconds > 0 ? tokens / seconds : 0));
                metrics.Add(new("elapsed_seconds", clock.Elapsed.TotalSeconds));
                int done = step + 1;
                if (eval.Count > 0 && common.EvalEvery > 0 && (done % common.EvalEvery == 0 || done == common.Steps))
                    foreach (var (k, v) in Evaluate(rm, eval, settings, common.Batch)) metrics.Add(new("eval_" + k, v));
                var report = new AlignmentStepReport(done, metrics);
                File.AppendAllText(metricsPath, AlignmentTrainer.ToJsonLine(report) + "\n");
                last = report;
                foreach (var (k, v) in metrics) if (k.StartsWith("eval_", StringComparison.Ordinal)) lastEval[k] = v;
                task.Description = CliProgress.Compact(report, "accuracy");
                task.Value = done;
            }
        });
        string path = Path.Combine(outDir, RewardModelFileName);
        rm.Save(path, tok.Spec);
        CliProgress.Summary(last, lastEval, metricsPath, path);
        return 0;
    }

    private static List<(string, double)> Evaluate(RewardModel rm, List<PreferencePair> eval, PairwiseLossSettings settings, int batch)
    {
        var sums = new Dictionary<string, double>();
        var names = new List<string>();
        for (int start = 0; start < eval.Count; start += batch)
        {
            var chunk = eval.GetRange(start, Math.Min(batch, eval.Count - start));
            foreach (var (k, v) in rm.Loss(chunk, settings, withGradient: false).Named())
            {
                if (!sums.ContainsKey(k)) { sums[k] = 0; names.Add(k); }
                sums[k] += v * chunk.Count;
            }
        }
        return [.. names.Select(k => (k, sums[k] / eval.Count))];
    }

    private static int[] Order(int count, ulong seed, int epoch) => new PhiloxStream(seed, (ulong)epoch + 1).Permutation(count);
}
