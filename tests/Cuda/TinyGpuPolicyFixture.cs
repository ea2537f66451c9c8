using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Policies;
using DistAlign.Tests.Alignment;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// What the GPU <see cref="GptPolicy"/> fixtures share: the tiny odd shape (1 layer, 2 heads, C = 12, V = 37, T = 16), a host
/// model with every parameter perturbed (biases and LayerNorm parameters too, so every gradient term is exercised), copies of
/// it, and the backend's GEMM, created per test.
/// </summary>
public abstract class TinyGpuPolicyFixture(string backend) : TemporaryRunFixture
{
    protected static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 12, VocabSize: 37, MaxSequenceLength: 16);
    protected const double RelativeTolerance = GpuVersusCpu.RelativeTolerance;

    /// <summary>"simulator" or "cuda" (see <see cref="GpuBackend"/>).</summary>
    protected string Backend { get; } = backend;

    /// <summary>The backend's GEMM for the current test.</summary>
    protected IGemm? Gemm { get; private set; }

    [SetUp]
    public void CreateGemm() => Gemm = GpuContext.CreateGemm(GpuBackend.Get(Backend));

    /// <summary>The backend's accelerator and GEMM as a device to build engines on.</summary>
    protected GptDevice Device => new(GpuBackend.Get(Backend), Gemm!, null, $"test {Backend}");

    [TearDown]
    public void DisposeGemm() => (Gemm as IDisposable)?.Dispose();

    protected static Gpt HostModel(int seed = 11)
    {
        var model = new Gpt(Config);
        model.InitializeGpt2((ulong)seed);
        var noise = RandomFloats((int)model.Layout.TotalElements, seed + 1, 0.05);
        var p = model.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        return model;
    }

    protected static Gpt CopyOf(Gpt model)
    {
        var copy = new Gpt(model.Config);
        model.Parameters.CopyTo(copy.Parameters);
        return copy;
    }
}
