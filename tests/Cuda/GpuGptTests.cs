using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// <see cref="GpuGpt"/> against the CPU <see cref="Gpt"/> at a tiny odd shape (2 layers, 2 heads, C = 12,
/// V = 37, T = 9, B = 2, row 0 packing two segments, some targets −1): log-probs, every gradient tensor,
/// the clipped gradient norm and one AdamW step. On the simulator and (skipped here with the reason) on CUDA.
/// Tolerance: per tensor, max |gpu − cpu| ≤ 1e-5 + 1e-4·max|cpu| (fp32; the GPU sums in other orders:
/// tiled GEMM k-blocks, tree reductions, attention through GEMMs instead of the CPU's fused loops).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuGptTests(string backend)
{
    private static readonly GptConfig Config = new(Layers: 2, Heads: 2, Channels: 12, VocabSize: 37, MaxSequenceLength: 16);
    private const double RelativeTolerance = GpuVersusCpu.RelativeTolerance;

    private static GptBatch Batch()
    {
        var batch = new GptBatch(2, 9);
        var random = new Random(7);
        for (int i = 0; i < batch.TokenCount; i++)
        {
            batch.Tokens[i] = random.Next(Config.VocabSize);
            batch.Targets[i] = random.Next(Config.VocabSize);
        }
        // row 0: segments of 4 and 5 positions; row 1: one segment whose first three positions have no target
        for (int t = 0; t < 9; t++)
        {
            batch.Segments[t] = t < 4 ? 0 : 1;
            batch.Positions[t] = t < 4 ? t : t - 4;
        }
        for (int t = 0; t < 3; t++) batch.Targets[9 + t] = -1;
        batch.Validate(Config);
        return batch;
    }

    private static Gpt CpuModel()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(11);
        // perturb everything (biases and LayerNorm parameters too) so every gradient term is exercised
        var noise = RandomFloats((int)model.Layout.TotalElements, 12, 0.05);
        var p = model.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return model;
    }

    private static float[] LogProbGradient(GptBatch batch) =>
        RandomFloats(batch.TokenCount, 13).Select((d, i) => batch.Targets[i] < 0 ? 0f : d).ToArray();

    private (GpuGpt Gpu, IGemm Gemm) GpuModel(Gpt cpu)
    {
        var accelerator = GpuBackend.Get(backend);
        var gemm = GpuContext.CreateGemm(accelerator);
        var gpu = new GpuGpt(accelerator, Config, gemm);
        gpu.CopyStateFrom(cpu);
        return (gpu, gemm);
    }

    /// <summary>
    /// Up to <see cref="GpuGpt.ActivationShapesKept"/> batch shapes keep their device buffers. Alternating between two
    /// shapes (A, B, A) gives A the same log-probs and gradients, bit for bit, as A alone, and a backward is refused
    /// once another shape's forward came in between (its activations are not the last forward's).
    /// </summary>
    [Test]
    public void AlternatingBatchShapesKeepTheirBuffersAndResults()
    {
        var a = Batch();
        var b = new GptBatch(1, 5);
        for (int i = 0; i < b.TokenCount; i++) { b.Tokens[i] = (3 * i + 1) % Config.VocabSize; b.Targets[i] = (5 * i + 2) % Config.VocabSize; b.Positions[i] = i; }
        b.Validate(Config);
        var dA = LogProbGradient(a);
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm as IDisposable;

        var first = new float[a.TokenCount];
        gpu.ZeroGradients();
        gpu.ForwardBackward(a, dA, first);
        using var alone = new Gpt(Config);
        gpu.CopyStateTo(alone);

        gpu.Forward(b, new float[b.TokenCount]);
        Assert.That(() => gpu.Backward(a, dA), Throws.InvalidOperationException, "A's activations were not the last forward's");
        var again = new float[a.TokenCount];
        gpu.ZeroGradients();
        gpu.Forward(a, again);
        gpu.Backward(a, dA);
        using var alternated = new Gpt(Config);
        gpu.CopyStateTo(alternated);
        Assert.That(again, Is.EqualTo(first), "log-probs of A after B");
        Assert.That(alternated.Gradients.ToArray(), Is.EqualTo(alone.Gradients.ToArray()), "gradients of A after B");
    }

    [Test]
    public void ForwardBackwardMatchesTheCpuModelThenOneClippedAdamWStepDoes()
    {
        var batch = Batch();
        var dLogProbs = LogProbGradient(batch);
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm as IDisposable;

        var cpuLogProbs = new float[batch.TokenCount];
        var gpuLogProbs = new float[batch.TokenCount];
        cpu.ZeroGradients();
        cpu.ForwardBackward(batch, dLogProbs, cpuLogProbs);
        gpu.ZeroGradients();
        gpu.ForwardBackward(batch, dLogProbs, gpuLogProbs);
        using var fromGpu = new Gpt(Config);
        gpu.CopyStateTo(fromGpu);
        AssertTensorClose(gpuLogProbs, cpuLogProbs, "log-probs");
        AssertEveryGradientClose(cpu, fromGpu);

        // clipping active (the norm is well above 0.05), then AdamW with weight decay on the matrices
        var cpuClip = GradientNorm.ClipByGlobalNorm(cpu.Gradients, 0.05f);
        var gpuClip = gpu.ClipGradients(0.05f);
        TestContext.Out.WriteLine($"[{backend}] gradient norm: cpu {cpuClip.Norm:R}, gpu {gpuClip.Norm:R}; scale cpu {cpuClip.Scale:R}, gpu {gpuClip.Scale:R}");
        Assert.That(cpuClip.Scale, Is.LessThan(1f), "the test must exercise clipping");
        Assert.That(gpuClip.Norm, Is.EqualTo(cpuClip.Norm).Within(RelativeTolerance * cpuClip.Norm));
        Assert.That(gpuClip.Scale, Is.EqualTo(cpuClip.Scale).Within(RelativeTolerance * cpuClip.Scale));
        var settings = new AdamWSettings();
        cpu.AdamWStep(1, 1e-3f, settings);
        gpu.AdamWStep(1, 1e-3f, settings);
        gpu.CopyStateTo(fromGpu);
        // after step 1, m̂/√v̂ = ±1 wherever |g| ≫ ε: parameters move by lr per element, so compare the updates
        AssertTensorClose(fromGpu.AdamM, cpu.AdamM, "AdamW m");
        AssertTensorClose(fromGpu.AdamV, cpu.AdamV, "AdamW v");
        AssertTensorClose(fromGpu.Parameters, cpu.Parameters, "parameters after one AdamW step");
    }

    [Test]
    public void ForwardThenBackwardMatchesTheCpuModel()
    {
        var batch = Batch();
        var dLogProbs = LogProbGradient(batch);
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm as IDisposable;

        var cpuLogProbs = new float[batch.TokenCount];
        var gpuLogProbs = new float[batch.TokenCount];
        cpu.ZeroGradients();
        cpu.Forward(batch, cpuLogProbs);
        cpu.Backward(batch, dLogProbs);
        gpu.ZeroGradients();
        gpu.Forward(batch, gpuLogProbs);
        gpu.Backward(batch, dLogProbs);
        using var fromGpu = new Gpt(Config);
        gpu.CopyStateTo(fromGpu);
        AssertTensorClose(gpuLogProbs, cpuLogProbs, "log-probs");
        AssertEveryGradientClose(cpu, fromGpu);
        Assert.That(gpuLogProbs.Where((_, i) => batch.Targets[i] < 0), Is.All.EqualTo(0f), "no target, log-prob 0");
    }

    [Test]
    public void TheStepBenchmarkTrainsAndReportsConsistentFigures()
    {
        var config = new GptConfig(Layers: 1, Heads: 2, Channels: 8, VocabSize: 29, MaxSequenceLength: 8);
        var accelerator = GpuBackend.Get(backend);
        var gemm = GpuContext.CreateGemm(accelerator, GemmPrecision.Float32);
        using var gemmOwner = gemm as IDisposable;
        var workload = new StepWorkload("tiny", config, Rows: 2, Length: 8);
        var r = StepBenchmark.Run(new GptDevice(accelerator, gemm, null, $"test {backend}"), workload, StepSettings.Pretraining, warmupSteps: 1, timedSteps: 1);
        TestContext.Out.WriteLine($"[{backend}] {r}");
        Assert.That(r.LastLoss, Is.LessThan(r.FirstLoss), "the same batch every step: the loss must fall");
        Assert.That(r.FirstLoss, Is.EqualTo(MathF.Log(29)).Within(0.1), "GPT-2 initialisation: loss ≈ ln V");
        Assert.That(r.MedianMilliseconds, Is.GreaterThan(0));
        Assert.That(r.TokensPerSecond, Is.EqualTo(16 / (r.MedianMilliseconds * 1e-3)).Within(1e-9).Percent);
        Assert.That(r.Mfu(1e12), Is.EqualTo(workload.FlopsPerStep / (r.MedianMilliseconds * 1e-3) / 1e12).Within(1e-9).Percent);
        Assert.That(r.OpMillisecondsPerStep.Select(x => x.Op), Does.Contain("matmul fwd").And.Contain("adamw"), "one profiled step: the per-op breakdown");
    }

    [Test]
    public void ThePretrainingTrainerOnTheGpuModelFollowsTheCpuTrainer()
    {
        var config = new GptConfig(Layers: 1, Heads: 2, Channels: 8, VocabSize: 23, MaxSequenceLength: 8);
        var tokens = Enumerable.Range(0, 200).Select(i => (i * 7 + i / 5) % 23).ToArray();
        var options = new LanguageModelTrainingOptions
        {
            Steps = 2, Rows = 2, Length = 8, GradientAccumulation = 2, LearningRate = 1e-2f, WarmupSteps = 0,
            GradientClip = 0.5f, EvaluateEvery = 2, EvaluationBatches = 1, Seed = 3,
        };
        using var cpuModel = new Gpt(config);
        cpuModel.InitializeGpt2(5);
        var cpuTrainer = new LanguageModelTrainer(cpuModel, tokens, tokens, options);
        var accelerator = GpuBackend.Get(backend);
        var gemm = GpuContext.CreateGemm(accelerator);
        using var gemmOwner = gemm as IDisposable;
        using var gpu = new GpuGpt(accelerator, config, gemm);
        using var hostModel = new Gpt(config);
        hostModel.InitializeGpt2(5);
        var gpuTrainer = new LanguageModelTrainer(hostModel, tokens, tokens, options, gpu);
        gpuTrainer.UploadModel();
        for (int step = 0; step < options.Steps; step++)
        {
            var expected = cpuTrainer.TrainStep();
            var actual = gpuTrainer.TrainStep();
            TestContext.Out.WriteLine($"[{backend}] step {actual.Step}: loss cpu {expected.Loss:R} gpu {actual.Loss:R}, norm cpu {expected.GradientNorm:R} gpu {actual.GradientNorm:R}, validation cpu {expected.ValidationLoss} gpu {actual.ValidationLoss}");
            Assert.That(actual.Step, Is.EqualTo(expected.Step));
            Assert.That(actual.Tokens, Is.EqualTo(expected.Tokens));
            Assert.That(actual.LearningRate, Is.EqualTo(expected.LearningRate));
            Assert.That(actual.Loss, Is.EqualTo(expected.Loss).Within(RelativeTolerance * expected.Loss));
            Assert.That(actual.GradientNorm, Is.EqualTo(expected.GradientNorm).Within(RelativeTolerance * expected.GradientNorm));
            Assert.That(expected.GradientNorm, Is.GreaterThan(options.GradientClip), "clipping must be active");
        }
        Assert.That(gpuTrainer.State, Is.EqualTo(cpuTrainer.State), "same data cursor");
        var last = gpuTrainer.Evaluate();
        Assert.That(last, Is.EqualTo(cpuTrainer.Evaluate()).Within(RelativeTolerance * last));
        gpuTrainer.DownloadModel();
        AssertTensorClose(hostModel.Parameters, cpuModel.Parameters, "parameters after two steps");
        AssertTensorClose(hostModel.AdamV, cpuModel.AdamV, "AdamW v after two steps");
    }

    private void AssertEveryGradientClose(Gpt cpu, Gpt fromGpu) => GpuVersusCpu.AssertEveryGradientClose(backend, cpu, fromGpu);

    private double AssertTensorClose(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, string what) =>
        GpuVersusCpu.AssertTensorClose(backend, actual, expected, what);
}

/// <summary>The FLOP count behind the step benchmark's MFU (no accelerator needed).</summary>
public class GpuGptFlopTests
{
    [Test]
    public void TrainingFlopsCountSixPerParameterPerTokenPlusAttention()
    {
        var gpt2 = new GptConfig(Layers: 12, Heads: 12, Channels: 768, VocabSize: 50257, MaxSequenceLength: 1024);
        long parameters = ParameterLayout.For(gpt2).TotalElements;
        Assert.That(parameters, Is.EqualTo(124_439_808), "GPT-2 124M with the tied head, V = 50,257");
        Assert.That(gpt2.ParameterCount, Is.EqualTo(parameters));
        Assert.That(new StepWorkload("GPT-2", gpt2, 16, 1024).FlopsPerStep, Is.EqualTo(16.0 * 1024 * (6.0 * parameters + 6.0 * 12 * 768 * 1024)), "llm.c's count");
        Assert.That(new StepWorkload("GPT-2", gpt2, 16, 1024).NanoGptFlopsPerStep, Is.EqualTo(16.0 * 1024 * (6.0 * parameters + 12.0 * 12 * 768 * 1024)), "nanoGPT's count");
    }
}
