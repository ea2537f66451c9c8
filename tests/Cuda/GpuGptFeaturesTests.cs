using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// <see cref="GpuGpt"/>'s backbone-only API (a reward model's or a value head's) against the CPU <see cref="Gpt"/>:
/// <see cref="GpuGpt.ForwardFeatures"/> + <see cref="GpuGpt.CopyFeaturesToHost(ReadOnlySpan{int}, Span{float})"/> vs
/// <see cref="Gpt.ForwardFeatures"/>, <see cref="GpuGpt.BackwardFeatures"/> vs <see cref="Gpt.BackwardFeatures"/> on every
/// gradient tensor, and the LM-head backward with a second head's ∂L/∂h vs <see cref="Gpt.Backward(GptBatch, ReadOnlySpan{float}, ReadOnlySpan{float}, ReadOnlySpan{float})"/>'s dFeatures.
/// Tiny odd shape: 2 layers, 3 heads, C = 15, V = 41, B = 2, T = 11 (not a power of two), row 0 packing three segments,
/// row 1 two. Tolerance (fp32 GEMMs; the GPU sums in other orders): max |gpu − cpu| ≤ 1e-5 + 1e-4·max|cpu| per tensor.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuGptFeaturesTests(string backend)
{
    private static readonly GptConfig Config = new(Layers: 2, Heads: 3, Channels: 15, VocabSize: 41, MaxSequenceLength: 16);
    private const int Rows = 2, Length = 11;


    private static GptBatch Batch()
    {
        var batch = new GptBatch(Rows, Length);
        var random = new Random(3);
        for (int i = 0; i < batch.TokenCount; i++)
        {
            batch.Tokens[i] = random.Next(Config.VocabSize);
            batch.Targets[i] = i % 4 == 1 ? -1 : random.Next(Config.VocabSize);
        }
        int[] starts0 = [0, 3, 7], starts1 = [0, 6];   // row 0: segments of 3, 4, 4; row 1: 6 and 5
        for (int t = 0; t < Length; t++)
        {
            int s0 = starts0.Count(s => s <= t) - 1, s1 = starts1.Count(s => s <= t) - 1;
            batch.Segments[t] = s0;
            batch.Positions[t] = t - starts0[s0];
            batch.Segments[Length + t] = s1;
            batch.Positions[Length + t] = t - starts1[s1];
        }
        batch.Validate(Config);
        return batch;
    }

    private static Gpt CpuModel()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(17);
        var noise = RandomFloats((int)model.Layout.TotalElements, 18, 0.05);
        var p = model.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];   // biases and LayerNorm parameters away from 0 and 1
        return model;
    }

    private (GpuGpt Gpu, IDisposable? Gemm) GpuModel(Gpt cpu)
    {
        var accelerator = GpuBackend.Get(backend);
        var gemm = GpuContext.CreateGemm(accelerator);
        var gpu = new GpuGpt(accelerator, Config, gemm);
        gpu.CopyStateFrom(cpu);
        return (gpu, gemm as IDisposable);
    }

    [Test]
    public void FeaturesForwardMatchesTheCpuModelAndTheGatheredRowsAreTheFullRows()
    {
        var batch = Batch();
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm;
        float[] expected = cpu.ForwardFeatures(batch).ToArray();
        gpu.ForwardFeatures(batch);
        var all = new float[batch.TokenCount * Config.Channels];
        gpu.CopyFeaturesToHost(all);
        double worst = AssertClose(all, expected, "h = ln_f(x)");
        TestContext.Out.WriteLine($"[{backend}] features: max|Δ|/max|cpu| = {worst:E2}");

        int[] positions = [10, 0, 21, 13, 10];   // any order, repeats allowed
        var rows = new float[positions.Length * Config.Channels];
        gpu.CopyFeaturesToHost(positions, rows);
        for (int i = 0; i < positions.Length; i++)
            Assert.That(rows.AsSpan(i * Config.Channels, Config.Channels).ToArray(),
                        Is.EqualTo(all.AsSpan(positions[i] * Config.Channels, Config.Channels).ToArray()), $"gathered row {i}");
        Assert.Throws<ArgumentOutOfRangeException>(() => gpu.CopyFeaturesToHost([batch.TokenCount], new float[Config.Channels]));
        Assert.Throws<InvalidOperationException>(() => gpu.Backward(batch, new float[batch.TokenCount]),
                                                 "no LM-head state after a features-only forward");
    }

    [Test]
    public void FeaturesBackwardMatchesTheCpuModelOnEveryTensor()
    {
        var batch = Batch();
        var dFeatures = RandomFloats(batch.TokenCount * Config.Channels, 19);
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm;
        cpu.ZeroGradients();
        cpu.ForwardFeatures(batch);
        cpu.BackwardFeatures(batch, dFeatures);
        gpu.ZeroGradients();
        gpu.ForwardFeatures(batch);
        gpu.BackwardFeatures(batch, dFeatures);
        using var fromGpu = new Gpt(Config);
        gpu.CopyStateTo(fromGpu);
        AssertEveryGradientClose(cpu, fromGpu, "features backward");

        // accumulates: a second backward on the same forward doubles every gradient (exactly, on both sides)
        gpu.BackwardFeatures(batch, dFeatures);
        using var twice = new Gpt(Config);
        gpu.CopyStateTo(twice);
        var once = fromGpu.Gradients.ToArray();
        var doubled = twice.Gradients.ToArray();
        for (int i = 0; i < once.Length; i++)
            Assert.That(doubled[i], Is.EqualTo(2 * once[i]).Within(1e-6 + 1e-5 * Math.Abs(once[i])), $"gradient {i} accumulates");
    }

    [Test]
    public void TheRowsBackwardIsTheDenseBackwardOfTheScatteredRows()
    {
        var batch = Batch();
        int c = Config.Channels;
        int[] positions = [4, 12, 21, 0];
        var dRows = RandomFloats(positions.Length * c, 22);
        var dense = new float[batch.TokenCount * c];
        for (int i = 0; i < positions.Length; i++) dRows.AsSpan(i * c, c).CopyTo(dense.AsSpan(positions[i] * c, c));
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm;
        gpu.ZeroGradients();
        gpu.ForwardFeatures(batch);
        gpu.BackwardFeatures(batch, dense);
        using var fromDense = new Gpt(Config);
        gpu.CopyStateTo(fromDense);
        gpu.ZeroGradients();
        gpu.ForwardFeatures(batch);
        gpu.BackwardFeatureRows(batch, positions, dRows);
        using var fromRows = new Gpt(Config);
        gpu.CopyStateTo(fromRows);
        Assert.That(fromRows.Gradients.ToArray(), Is.EqualTo(fromDense.Gradients.ToArray()), "same ∂L/∂h on the device: bit-identical gradients");
        Assert.Throws<ArgumentException>(() => gpu.BackwardFeatureRows(batch, [3, 3], new float[2 * c]), "rows are written once");
    }

    [Test]
    public void LanguageModelBackwardWithASecondHeadMatchesTheCpuModel()
    {
        var batch = Batch();
        var dFeatures = RandomFloats(batch.TokenCount * Config.Channels, 20);
        var dLogProbs = RandomFloats(batch.TokenCount, 21).Select((d, i) => batch.Targets[i] < 0 ? 0f : d).ToArray();
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gpu;
        using var __ = gemm;
        var cpuLogProbs = new float[batch.TokenCount];
        var gpuLogProbs = new float[batch.TokenCount];
        cpu.ZeroGradients();
        cpu.Forward(batch, cpuLogProbs);
        var cpuFeatures = cpu.LastFeatures(batch).ToArray();
        cpu.Backward(batch, dLogProbs, default, dFeatures);
        gpu.ZeroGradients();
        gpu.Forward(batch, gpuLogProbs);
        var gpuFeatures = new float[cpuFeatures.Length];
        gpu.CopyFeaturesToHost(gpuFeatures);
        gpu.Backward(batch, dLogProbs, default, Enumerable.Range(0, batch.TokenCount).ToArray(), dFeatures);   // every row
        using var fromGpu = new Gpt(Config);
        gpu.CopyStateTo(fromGpu);
        AssertClose(gpuLogProbs, cpuLogProbs, "log-probs");
        AssertClose(gpuFeatures, cpuFeatures, "h after an LM-head forward");
        AssertEveryGradientClose(cpu, fromGpu, "LM head + second head backward");
    }

    private void AssertEveryGradientClose(Gpt cpu, Gpt fromGpu, string what) => GpuVersusCpu.AssertEveryGradientClose(backend, cpu, fromGpu, what);

    private double AssertClose(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, string what) =>
        GpuVersusCpu.AssertTensorClose(backend, actual, expected, what);
}
