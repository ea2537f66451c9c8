using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// <see cref="GpuGptDecoder"/> against the CPU <see cref="GptDecoder"/> on the same weights, at an odd shape (2 layers,
/// 3 heads of 8, C = 24, V = 37, context 16; 3 rows): the logits after every step within the GPU-vs-CPU tolerance
/// (max |gpu − cpu| ≤ 1e-5 + 1e-4·max |cpu| per step, fp32 GEMMs); sampling on either decoder gives the same tokens and
/// log-probs within 1e-4; Reset, a full decoder and bad tokens. On the simulator and (skipped here with the reason) on CUDA.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuGptDecoderTests(string backend)
{
    private static readonly GptConfig Config = new(Layers: 2, Heads: 3, Channels: 24, VocabSize: 37, MaxSequenceLength: 16);

    private static Gpt CpuModel()
    {
        var model = new Gpt(Config);
        model.InitializeGpt2(5);
        // larger weights than GPT-2's initialisation (and perturbed biases and LayerNorm parameters): peaked, row-dependent
        // distributions, so the sampling comparison is not decided by near-ties
        var noise = RandomFloats((int)model.Layout.TotalElements, 6, 0.2);
        var p = model.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
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

    private static int[][] TokenRows(int rows, int length, int seed)
    {
        var random = new Random(seed);
        return [.. Enumerable.Range(0, rows).Select(_ => Enumerable.Range(0, length).Select(_ => random.Next(Config.VocabSize)).ToArray())];
    }

    [Test]
    public void LogitsAfterEveryStepMatchTheCpuDecoder()
    {
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gemm;
        using var __ = gpu;
        const int rows = 3, length = 12;
        var cpuDecoder = new GptDecoder(cpu, rows, length);
        using var gpuDecoder = new GpuGptDecoder(gpu, rows, length);
        var tokens = TokenRows(rows, length, 7);
        var feed = new int[rows];
        double worst = 0;
        for (int t = 0; t < length; t++)
        {
            for (int r = 0; r < rows; r++) feed[r] = tokens[r][t];
            cpuDecoder.Step(feed);
            gpuDecoder.Step(feed);
            Assert.That(gpuDecoder.Position, Is.EqualTo(t + 1));
            worst = Math.Max(worst, GpuVersusCpu.AssertTensorClose(backend, gpuDecoder.Logits, cpuDecoder.Logits, $"logits after step {t}"));
        }
        Assert.That(GpuVersusCpu.MaxAbs(cpuDecoder.Logits), Is.GreaterThan(1f), "the logits must not be near zero (the check would have no teeth)");
        TestContext.Out.WriteLine($"[{backend}] worst max|Δ|/max|cpu| over {length} steps: {worst:E2}");
    }

    [Test]
    public void SamplingOnTheGpuDecoderDrawsTheCpuSamplersTokens()
    {
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gemm;
        using var __ = gpu;
        var prompts = new List<int[]> { new[] { 1, 2, 3 }, new[] { 4 }, new[] { 5, 6, 7, 8, 9 } };
        foreach (var options in new[] { new SamplingOptions(MaxNewTokens: 9, Temperature: 1f, EndOfText: 36),
                                        new SamplingOptions(MaxNewTokens: 9, Temperature: 0.8f, TopK: 5, TopP: 0.9f) })
        {
            var expected = Sampler.Generate(cpu, prompts, options, seed: 17);
            var actual = Sampler.Generate(gpu, prompts, options, seed: 17);
            Assert.That(actual.Select(c => c.Tokens), Is.EqualTo(expected.Select(c => c.Tokens)), $"tokens ({options})");
            Assert.That(actual.Select(c => c.Ended), Is.EqualTo(expected.Select(c => c.Ended)));
            for (int r = 0; r < prompts.Count; r++)
                AssertClose(actual[r].LogProbs, ToDouble(expected[r].LogProbs), 1e-4, 1e-4, $"row {r} log-probs ({options})");
            TestContext.Out.WriteLine($"[{backend}] {options}: {string.Join(" | ", actual.Select(c => string.Join(' ', c.Tokens)))}");
        }
        Assert.That(Sampler.Generate(cpu, prompts, new SamplingOptions(9), seed: 17).Select(c => c.Tokens),
                    Is.Not.EqualTo(Sampler.Generate(cpu, prompts, new SamplingOptions(9), seed: 18).Select(c => c.Tokens)),
                    "another seed draws other tokens (the comparison is not of constant output)");
    }

    [Test]
    public void ResetRestartsAtPositionZeroAndAFullDecoderOrABadTokenIsRefused()
    {
        using var cpu = CpuModel();
        var (gpu, gemm) = GpuModel(cpu);
        using var _ = gemm;
        using var __ = gpu;
        const int rows = 2, length = 4;
        using var decoder = new GpuGptDecoder(gpu, rows, length);
        var tokens = TokenRows(rows, length, 9);
        float[][] Run()
        {
            var logits = new float[length][];
            for (int t = 0; t < length; t++)
            {
                decoder.Step([tokens[0][t], tokens[1][t]]);
                logits[t] = decoder.Logits.ToArray();
            }
            return logits;
        }
        var first = Run();
        Assert.That(() => decoder.Step([1, 2]), Throws.InvalidOperationException.With.Message.Contains("the decoder is full: 4 positions"));
        decoder.Reset();
        Assert.That(decoder.Position, Is.Zero);
        Assert.That(Run(), Is.EqualTo(first), "after Reset the same tokens give the same logits, bit for bit");

        decoder.Reset();
        Assert.That(() => decoder.Step([1]), Throws.ArgumentException.With.Message.Contains("one token per row (2) expected, got 1"));
        Assert.That(() => decoder.Step([1, 37]), Throws.ArgumentException.With.Message.Contains("token id 37 is outside the vocabulary [0, 37)"));
        Assert.That(decoder.Position, Is.Zero, "a refused step does not advance");
        Assert.That(() => new GpuGptDecoder(gpu, rows, 17), Throws.ArgumentException.With.Message.Contains("exceeds the model's context of 16"));
    }
}
