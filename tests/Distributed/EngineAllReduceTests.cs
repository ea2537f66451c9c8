using DistAlign.Engine.Cuda;
using DistAlign.Engine.Distributed;
using DistAlign.Kernels.Gpu;
using DistAlign.Tests.Cuda;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Distributed;

/// <summary>
/// The engines' gradient exchange against a pretend job of two identical ranks (its all-reduce doubles every value, as
/// the sum of two equal gradients would): the CPU engine sums in place, the GPU engine on ILGPU's CPU simulator through
/// host memory, and both give exactly 2·g. Where NCCL is missing, joining a CUDA job says so and names the files tried.
/// </summary>
public class EngineAllReduceTests
{
    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 16, VocabSize: 41, MaxSequenceLength: 8);

    [Test]
    public void CpuAndSimulatorEnginesSumTheirGradientsOverTheRanks()
    {
        using var cpu = new Gpt(Config);
        cpu.InitializeGpt2(5);
        var batch = new GptBatch(2, 8);
        var window = Enumerable.Range(0, 17).Select(i => (i * 7) % Config.VocabSize).ToArray();
        batch.SetLanguageModelling(window);
        var dLogProbs = Enumerable.Repeat(-1f / 16, 16).ToArray();
        cpu.ForwardBackward(batch, dLogProbs, new float[16]);
        var single = cpu.Gradients.ToArray();

        var accelerator = GpuBackend.Get("simulator");
        var gemm = GpuContext.CreateGemm(accelerator);
        using var gpu = new GpuGpt(accelerator, Config, gemm);
        gpu.CopyStateFrom(cpu);
        gpu.ForwardBackward(batch, dLogProbs, new float[16]);
        using var host = new Gpt(Config);
        gpu.CopyStateTo(host);
        var gpuSingle = host.Gradients.ToArray();

        var twoEqualRanks = new DoublingGroup();
        cpu.AllReduceGradients(twoEqualRanks, "test");
        gpu.AllReduceGradients(twoEqualRanks, "test");
        gpu.CopyStateTo(host);
        Assert.That(cpu.Gradients.ToArray(), Is.EqualTo(single.Select(g => 2 * g).ToArray()), "CPU engine");
        Assert.That(host.Gradients.ToArray(), Is.EqualTo(gpuSingle.Select(g => 2 * g).ToArray()), "GPU engine on the simulator, through host memory");

        cpu.AllReduceGradients(SingleProcessGroup.Instance, "test");   // one rank: nothing changes
        Assert.That(cpu.Gradients.ToArray(), Is.EqualTo(single.Select(g => 2 * g).ToArray()));
    }

    [Test]
    public void WithoutNcclJoiningADeviceJobNamesTheFilesTried()
    {
        if (CudaLibraries.Nccl.IsAvailable) Assert.Ignore($"NCCL is installed here ({CudaLibraries.Nccl.LoadedFrom}); this checks a machine without it");
        var e = Assert.Throws<CudaUnavailableException>(() => NcclCommunicator.Create(SingleProcessGroup.Instance));
        Assert.That(e!.Message, Is.EqualTo("no NCCL library found: tried libnccl.so.2, libnccl.so"));
    }

    /// <summary>Rank 0 of a pretend two-rank job whose other rank holds the same values: an all-reduce doubles them.</summary>
    private sealed class DoublingGroup : IProcessGroup
    {
        public int Rank => 0;
        public int Size => 2;
        public string Description => "pretend, 2 equal ranks";
        public void Barrier(string purpose) { }
        public void Broadcast(Span<byte> data, int root, string purpose) { }
        public void AllReduceSum(Span<float> data, string purpose) { foreach (ref float x in data) x *= 2; }
        public void AllReduceSum(Span<double> data, string purpose) { foreach (ref double x in data) x *= 2; }
        public void AllGather(ReadOnlySpan<float> mine, Span<float> all, string purpose) => throw new NotSupportedException();
        public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all, string purpose) => throw new NotSupportedException();
        public void AllGatherInPlace(Span<float> all, string purpose) => throw new NotSupportedException();
        public void ReduceScatterSum(ReadOnlySpan<float> all, Span<float> mine, string purpose) => throw new NotSupportedException();
        public void Dispose() { }
    }
}
