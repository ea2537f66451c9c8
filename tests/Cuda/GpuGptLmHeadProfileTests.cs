using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// <see cref="GpuGpt.Profile"/> charges the LM head's steps (<see cref="GpuSequenceLogProbs.Profiler"/>) separately:
/// on the simulator with the fp32 tiled GEMM (no bf16 conversion step), on CUDA with cuBLAS bf16 (bf16 operands, so a
/// conversion step too; skipped with the reason where there is no CUDA device).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuGptLmHeadProfileTests(string backend)
{
    [Test]
    public void TheProfileSplitsTheLmHeadIntoItsSteps()
    {
        var accelerator = GpuBackend.Get(backend);
        var config = new GptConfig(Layers: 1, Heads: 2, Channels: 8, VocabSize: 37, MaxSequenceLength: 8);
        bool bf16 = backend == "cuda";
        var gemm = GpuContext.CreateGemm(accelerator, bf16 ? GemmPrecision.BFloat16 : GemmPrecision.Float32);
        using var gemmOwner = gemm as IDisposable;
        using var cpu = new Gpt(config);
        cpu.InitializeGpt2(3);
        using var gpu = new GpuGpt(accelerator, config, gemm);
        gpu.CopyStateFrom(cpu);
        var batch = new GptBatch(1, 8);
        batch.SetLanguageModelling(Enumerable.Range(0, batch.TokenCount + 1).Select(i => i * 5 % config.VocabSize).ToArray());
        var dLogProbs = Enumerable.Repeat(-1f / batch.TokenCount, batch.TokenCount).ToArray();
        var logProbs = new float[batch.TokenCount];

        gpu.ForwardBackward(batch, dLogProbs, logProbs);   // unprofiled: the hook is a no-op without a Profile
        var profile = new OpProfile();
        gpu.Profile = profile;
        gpu.ForwardBackward(batch, dLogProbs, logProbs);
        gpu.Profile = null;
        var ops = profile.Totals().Select(t => t.Op).ToHashSet();
        Assert.That(ops, Is.SupersetOf(new[] { "lm head gemm fwd", "lm head softmax fwd", "lm head softmax bwd", "lm head gemm dh", "lm head gemm dE" }));
        Assert.That(ops.Contains("lm head convert"), Is.EqualTo(bf16), "bf16 copies of E and h only with bf16 operands");
        Assert.That(logProbs.All(float.IsFinite));
    }
}
