using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Objectives;
using DistAlign.Alignment.Data;
using DistAlign.Alignment.Reward;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Tests.Cuda;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// Reward-model training with the backbone on a <see cref="GpuGpt"/> (fp32 GEMMs; on ILGPU's CPU simulator here, on CUDA
/// where there is one): the losses and gradient norms follow the CPU run's, a run checkpointed at step 2 and resumed to 4
/// is bit-identical to an uninterrupted 4-step run (metrics, checkpoint files, the final reward-model file; its first two
/// steps, run from scratch twice, show the repeat is bit-identical too), and the saved file holds the trained backbone.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
[NonParallelizable]
public class RewardModelGpuTests(string backend)
{
    private string directory = "", modelPath = "";
    private int savedThreads;
    private List<PreferencePair> pairs = [];

    // Relative tolerance of GPU against CPU metrics after up to 4 AdamW steps (fp32, different summation orders; the simulator
    // measured ≤ 1e-7).
    private const double RelativeTolerance = 1e-5;

    // Small enough for ILGPU's CPU simulator (every simulated thread costs host time): 2 pairs a step, 4 sequences of
    // 3–4 tokens packed two to a row of T = 8.
    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 29, MaxSequenceLength: 8);

    [SetUp]
    public void SetUp()
    {
        savedThreads = CpuParallel.Threads;
        GpuBackend.Get(backend);   // skips the CUDA case, with the reason, where there is no GPU
        directory = Directory.CreateTempSubdirectory("distalign-rm-gpu-").FullName;
        CpuParallel.Threads = 2;
        modelPath = Path.Combine(directory, "pi0.safetensors");
        using (var model = new Gpt(Config))
        {
            model.InitializeGpt2(7);
            GptCheckpoint.SaveModel(modelPath, model, TinyAlignmentSetup.TokenizerSpec);
        }
        // pair i: prompt (i, i + 1), chosen an even token, rejected an odd one (two tokens for every third pair)
        pairs = [.. Enumerable.Range(0, 8).Select(i => new PreferencePair([1 + i, 2 + i], [2 * (i % 7) + 2], i % 3 == 0 ? [2 * i + 1, 3] : [2 * i + 1]))];
    }

    [TearDown]
    public void TearDown()
    {
        CpuParallel.Threads = savedThreads;
        if (directory.Length > 0) Directory.Delete(directory, recursive: true);
    }

    private static readonly RewardTrainingOptions Small = new()
    {
        Loss = new PairwiseLossSettings(PairwiseLossVariant.RewardModel, Margin: 0.1, Centring: 0.01),
        Steps = 4, BatchPairs = 2, LearningRate = 3e-3f, WarmupSteps = 1, EvalFraction = 0.25, EvaluateEvery = 2, Seed = 11,
    };

    /// <summary>Runs the 4-step run up to <paramref name="stopAfter"/> into <paramref name="outDir"/> (checkpoints every 2 steps), on the GPU
    /// backend or the CPU; writes rm.safetensors at the end.</summary>
    private void Run(string outDir, int stopAfter, bool resume, bool onGpu)
    {
        var (gpt, _) = GptCheckpoint.LoadModel(modelPath);
        var accelerator = onGpu ? GpuBackend.Get(backend) : null;
        var gemm = accelerator is null ? null : GpuContext.CreateGemm(accelerator);
        using var gemmOwner = gemm as IDisposable;
        var device = accelerator is null ? null : new GptDevice(accelerator, gemm!, null, "test");
        using var rm = new RewardModel(gpt, new AdamWSettings(WeightDecay: 0.1f), ownsBackbone: true, device);
        var trainer = new RewardModelTrainer(rm, pairs, Small);
        var run = new RewardModelRun(trainer, outDir, TinyAlignmentSetup.TokenizerSpec, "{\"run\":1}", checkpointEvery: 2);
        run.Start(resume);
        while (trainer.Step < stopAfter) run.Step();
        rm.Save(Path.Combine(outDir, "rm.safetensors"), TinyAlignmentSetup.TokenizerSpec);
    }

    private static byte[] Bytes(string dir, params string[] parts) => File.ReadAllBytes(Path.Combine([dir, .. parts]));

    [Test]
    public void FollowsTheCpuRunAndResumesBitIdentically()
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        string cpu = Path.Combine(directory, "cpu"), straight = Path.Combine(directory, "straight"), split = Path.Combine(directory, "split");
        Run(cpu, 4, resume: false, onGpu: false);
        Run(straight, 4, resume: false, onGpu: true);
        Run(split, 2, resume: false, onGpu: true);
        Run(split, 4, resume: true, onGpu: true);
        TestContext.Out.WriteLine($"[{backend}] 4 CPU + 8 GPU steps with evaluations: {clock.Elapsed.TotalSeconds:F1} s");

        var expected = AlignmentRun.ReadMetrics(Path.Combine(cpu, AlignmentTrainer.MetricsFileName));
        var actual = AlignmentRun.ReadMetrics(Path.Combine(straight, AlignmentTrainer.MetricsFileName));
        Assert.That(actual.Select(r => r["step"]), Is.EqualTo(new double?[] { 1, 2, 3, 4 }));
        foreach (var (e, a) in expected.Zip(actual))
        {
            TestContext.Out.WriteLine($"[{backend}] step {a["step"]}: loss cpu {e["loss"]:R} gpu {a["loss"]:R}; grad_norm cpu {e["grad_norm"]:R} gpu {a["grad_norm"]:R}" +
                                      (a.ContainsKey("eval_loss") ? $"; eval_loss cpu {e["eval_loss"]:R} gpu {a["eval_loss"]:R}" : ""));
            foreach (var key in new[] { "loss", "margin", "mean_reward", "grad_norm", "eval_loss" })
            {
                if (!e.ContainsKey(key)) continue;
                double x = e[key]!.Value, y = a[key]!.Value;
                Assert.That(y, Is.EqualTo(x).Within(RelativeTolerance * Math.Max(Math.Abs(x), 1e-2)), $"step {a["step"]} {key}");
            }
            Assert.That(a["accuracy"], Is.EqualTo(e["accuracy"]), $"step {a["step"]} accuracy");
            Assert.That(a["lr"], Is.EqualTo(e["lr"]));
        }
        Assert.That(expected[3]["loss"], Is.Not.EqualTo(expected[0]["loss"]), "the run must train");

        var resumed = AlignmentRun.ReadMetrics(Path.Combine(split, AlignmentTrainer.MetricsFileName));
        Assert.That(TinyAlignmentSetup.DeterministicColumns(resumed), Is.EqualTo(TinyAlignmentSetup.DeterministicColumns(actual)),
                    "steps 1–2 run twice from scratch, 3–4 after a resume: bit-identical metrics");
        Assert.That(Bytes(split, "rm.safetensors"), Is.EqualTo(Bytes(straight, "rm.safetensors")), "final reward model");
        foreach (var file in new[] { GptCheckpoint.ModelFileName, GptCheckpoint.StateFileName })
            Assert.That(Bytes(split, "step-00000004", file), Is.EqualTo(Bytes(straight, "step-00000004", file)), file);

        // the saved file holds the trained backbone (downloaded from the device), close to the CPU run's and unlike π0
        var fromGpu = RewardModel.Load(Path.Combine(straight, "rm.safetensors"), new AdamWSettings());
        var fromCpu = RewardModel.Load(Path.Combine(cpu, "rm.safetensors"), new AdamWSettings());
        var (pi0, _) = GptCheckpoint.LoadModel(modelPath);
        using (fromGpu.Model)
        using (fromCpu.Model)
        using (pi0)
        {
            var g = fromGpu.Model.Backbone.Parameters;
            var c = fromCpu.Model.Backbone.Parameters;
            var p = pi0.Parameters;
            double moved = 0, apart = 0;
            for (int i = 0; i < g.Length; i++)
            {
                moved = Math.Max(moved, Math.Abs(g[i] - p[i]));
                apart = Math.Max(apart, Math.Abs(g[i] - c[i]));
            }
            TestContext.Out.WriteLine($"[{backend}] backbone: max |gpu − π0| = {moved:E2}, max |gpu − cpu| = {apart:E2}");
            Assert.That(moved, Is.GreaterThan(1e-3), "4 AdamW steps at lr 3e-3 move the backbone");
            Assert.That(apart, Is.LessThan(1e-4), "GPU and CPU backbones agree");
            Assert.That(fromGpu.Model.HeadWeight.ToArray(), Is.EqualTo(fromCpu.Model.HeadWeight.ToArray()).Within(1e-4));
        }
    }
}
