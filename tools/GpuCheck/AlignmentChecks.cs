using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using ILGPU.Runtime;

namespace DistAlign.GpuCheck;

/// <summary>
/// Offline alignment on the accelerator (<c>align --device cuda</c>): three DPO steps through <see cref="AlignmentTrainer"/> with
/// GPU <see cref="GptPolicy"/> (reference log-probs, scores, gradients, clipping and AdamW on the device) against the same steps
/// with the CPU <see cref="GptPolicy"/>, from the same weights and pairs (2 layers, 2 heads, C = 12, V = 37, T = 16, packed rows,
/// one-token responses). Compared per step: the loss and the gradient norm; at the end, each tensor's weight update
/// (w₃ − w₀), which AdamW makes about lr per element whatever the gradient's size.
/// </summary>
/// <remarks>
/// Tolerances. fp32 GEMMs: step metrics within 1e-4·(1 + |cpu|) (the simulator tests see about 1e-6); updates within
/// 1e-2 of the tensor's largest CPU update. bf16 GEMMs (operands rounded to 8 bits of mantissa): step metrics within
/// 2e-2·(1 + |cpu|); updates within 0.25 of the tensor's largest CPU update, since AdamW's m̂/√v̂ turns a small gradient error into a
/// change of step direction where a gradient is near zero.
/// <para>
/// On-policy alignment (<c>align --objective rlhf --device cuda</c>): one PPO iteration (a rollout of 6 prompts sampled on the host
/// mirror, 2 epochs × 2 minibatches) with π and π0 on GPU <see cref="GptPolicy"/> (value head on the host) and R̂'s backbone on a
/// <see cref="GpuGpt"/>, against CPU policies and a CPU reward model from the same weights. The rollout is sampled from π0 on
/// both sides, so its tokens agree exactly; compared: the iteration's loss, scores, policy and value losses, approximate KL and gradient
/// norm (same tolerances as DPO's metrics), and the update of the weights and value head as one vector,
/// ‖u_gpu − u_cpu‖₂ ≤ tol·‖u_cpu‖₂ (tol 1e-2 fp32, 0.25 bf16; the simulator tests see about 1e-4).
/// </para>
/// </remarks>
internal sealed class AlignmentChecks(Accelerator accelerator, Report report)
{
    private static readonly GptConfig Config = new(Layers: 2, Heads: 2, Channels: 12, VocabSize: 37, MaxSequenceLength: 16);
    private const int Steps = 3;

    public void CompareDpoStepsWithTheCpuPolicy(GemmPrecision precision)
    {
        string what = $"align dpo, GPU GptPolicy ({precision} GEMMs) vs CPU GptPolicy";
        try { Compare(what, precision); }
        catch (Exception e) { report.Add(new CheckResult(what, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    public void ComparePpoIterationWithTheCpuPolicy(GemmPrecision precision)
    {
        string what = $"align rlhf (PPO), GPU GptPolicy + value head and GPU R̂ ({precision} GEMMs) vs CPU";
        try { ComparePpo(what, precision); }
        catch (Exception e) { report.Add(new CheckResult(what, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    private static List<PreferencePair> Pairs()
    {
        var random = new Random(9);
        int[] Tokens(int n) => [.. Enumerable.Range(0, n).Select(_ => random.Next(Config.VocabSize))];
        var pairs = new List<PreferencePair>();
        for (int i = 0; i < 12; i++) pairs.Add(new PreferencePair(Tokens(1 + i % 4), Tokens(1 + i % 5), Tokens(1 + (i * 3) % 6)));
        return pairs;
    }

    private static Gpt StartingModel()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(11);
        var noise = KernelChecks.RandomFloats((int)model.Layout.TotalElements, 12, 0.05f);
        var p = model.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return model;
    }

    private static List<AlignmentStepReport> Train(IPolicy policy, List<PreferencePair> pairs, AlignmentTrainingOptions options)
    {
        using var reference = policy.Snapshot();
        var refs = OfflinePreferenceObjective.ReferenceLogProbs(reference, pairs);
        var trainer = new AlignmentTrainer(policy, reference, pairs, refs, options);
        var reports = new List<AlignmentStepReport>();
        while (trainer.Step < options.Steps) reports.Add(trainer.TrainStep());
        return reports;
    }

    private void Compare(string what, GemmPrecision precision)
    {
        bool fp32 = precision == GemmPrecision.Float32;
        double metricTolerance = fp32 ? 1e-4 : 2e-2, updateTolerance = fp32 ? 1e-2 : 0.25;
        var pairs = Pairs();
        var options = new AlignmentTrainingOptions
        {
            Loss = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid, Beta: 0.5), Steps = Steps, BatchPairs = 3, GradientAccumulation = 2,
            LearningRate = 1e-2f, WarmupSteps = 1, GradientClip = 0.5f, EvalFraction = 0.25, EvaluateEvery = Steps, Seed = 4,
        };
        using var start = StartingModel();
        var gemm = GpuContext.CreateGemm(accelerator, precision);
        using var gemmOwner = gemm as IDisposable;
        using var cpu = new GptPolicy(StartingModel(), new AdamWSettings(), ownsModel: true);
        using var gpu = new GptPolicy(StartingModel(), new AdamWSettings(), ownsModel: true, device: new GptDevice(accelerator, gemm, null, $"{precision} GEMMs"));
        var expected = Train(cpu, pairs, options);
        var actual = Train(gpu, pairs, options);

        foreach (string metric in new[] { "loss", "grad_norm", "eval_loss" })
        {
            var e = expected.Where(r => r.Has(metric)).Select(r => (float)r[metric]).ToArray();
            var a = actual.Where(r => r.Has(metric)).Select(r => (float)r[metric]).ToArray();
            report.Compare($"{what}: {metric} per step ({string.Join(", ", e.Select(x => x.ToString("F5", System.Globalization.CultureInfo.InvariantCulture)))})",
                           a, e, metricTolerance, metricTolerance);
        }
        gpu.CopyToHost();
        var cpuUpdate = new float[start.Parameters.Length];
        var gpuUpdate = new float[start.Parameters.Length];
        for (int i = 0; i < cpuUpdate.Length; i++)
        {
            cpuUpdate[i] = cpu.Model.Parameters[i] - start.Parameters[i];
            gpuUpdate[i] = gpu.Model.Parameters[i] - start.Parameters[i];
        }
        // one line for all tensors: each tensor's update against its own largest CPU update; the worst tensor is named
        double worst = 0, worstAbs = 0;
        string worstTensor = "";
        foreach (var tensor in start.Layout.Tensors)
        {
            var e = cpuUpdate.AsSpan((int)tensor.Offset, (int)tensor.Length);
            var a = gpuUpdate.AsSpan((int)tensor.Offset, (int)tensor.Length);
            double scale = 0, err = 0;
            for (int i = 0; i < e.Length; i++)
            {
                scale = Math.Max(scale, Math.Abs(e[i]));
                double d = Math.Abs((double)a[i] - e[i]);
                err = double.IsNaN(d) ? double.PositiveInfinity : Math.Max(err, d);
            }
            double ratio = err / (updateTolerance * Math.Max(scale, 1e-30));
            if (!(ratio <= worst)) (worst, worstAbs, worstTensor) = (ratio, err, tensor.Name);
        }
        report.Add(new CheckResult($"{what}: weight updates after {Steps} steps, every tensor (worst: {worstTensor})", cpuUpdate.Length, worstAbs, worst,
                                   $"per tensor {updateTolerance:G2} × its largest CPU update"));
    }

    private void ComparePpo(string what, GemmPrecision precision)
    {
        bool fp32 = precision == GemmPrecision.Float32;
        double metricTolerance = fp32 ? 1e-4 : 2e-2, updateTolerance = fp32 ? 1e-2 : 0.25;
        var random = new Random(9);
        var prompts = Enumerable.Range(0, 6).Select(i => Enumerable.Range(0, 1 + i % 4).Select(_ => random.Next(Config.VocabSize)).ToArray()).ToList();
        var options = new PpoOptions
        {
            Objective = PpoObjective.Rlhf, Beta = 0.05, Steps = 1, PromptsPerIteration = 6, Epochs = 2, Minibatches = 2,
            Sampling = new SamplingOptions(5), LearningRate = 1e-2f, GradientClip = 0.5f, Seed = 13,
        }.Validate();
        var gemm = GpuContext.CreateGemm(accelerator, precision);
        using var gemmOwner = gemm as IDisposable;
        var head = KernelChecks.RandomFloats(Config.Channels, 32, 1f);

        (AlignmentStepReport Report, float[] Update) Iterate(GptPolicy policy, RewardModel reward)
        {
            head.CopyTo(reward.HeadWeight);
            using var reference = policy.Snapshot();
            float[] start = [.. policy.Model.Parameters.ToArray(), .. policy.ValueHead!.Parameters];
            var r = new PpoTrainer(policy, reference, reward, prompts, options).TrainStep();
            policy.CopyToHost();
            float[] end = [.. policy.Model.Parameters.ToArray(), .. policy.ValueHead.Parameters];
            for (int i = 0; i < end.Length; i++) end[i] -= start[i];
            return (r, end);
        }
        using var cpu = new GptPolicy(StartingModel(), new AdamWSettings(), ownsModel: true, withValueHead: true);
        using var cpuReward = new RewardModel(StartingModel(), new AdamWSettings(), ownsBackbone: true);
        var (expected, cpuUpdate) = Iterate(cpu, cpuReward);
        var device = new GptDevice(accelerator, gemm, null, $"{precision} GEMMs");
        using var gpu = new GptPolicy(StartingModel(), new AdamWSettings(), ownsModel: true, withValueHead: true, device);
        using var gpuReward = new RewardModel(StartingModel(), new AdamWSettings(), ownsBackbone: true, device);
        var (actual, gpuUpdate) = Iterate(gpu, gpuReward);

        string[] metrics = ["loss", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/approxkl_avg", "grad_norm"];
        var e = metrics.Select(m => (float)expected[m]).ToArray();
        var a = metrics.Select(m => (float)actual[m]).ToArray();
        var inv = System.Globalization.CultureInfo.InvariantCulture;
        report.Compare($"{what}: {string.Join(", ", metrics.Select((m, i) => $"{m} {e[i].ToString("G5", inv)}"))}", a, e, metricTolerance, metricTolerance);
        double norm = 0, apart = 0;
        for (int i = 0; i < cpuUpdate.Length; i++)
        {
            norm += (double)cpuUpdate[i] * cpuUpdate[i];
            apart += Math.Pow((double)gpuUpdate[i] - cpuUpdate[i], 2);
        }
        (norm, apart) = (Math.Sqrt(norm), Math.Sqrt(apart));
        double ratio = double.IsFinite(apart) ? apart / (updateTolerance * Math.Max(norm, 1e-30)) : double.PositiveInfinity;
        report.Add(new CheckResult($"{what}: update of weights and value head over {options.OptimizerStepsPerIteration} steps, ‖u_gpu − u_cpu‖₂ (‖u_cpu‖₂ = {norm.ToString("G4", inv)})",
                                   cpuUpdate.Length, apart, ratio, $"{updateTolerance:G2} × ‖u_cpu‖₂"));
    }
}
