using DistAlign.Cli;
using DistAlign.Transformer.Model;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cli;

/// <summary>
/// <c>sample --device cuda</c> decodes on GpuGptDecoder. Without a GPU the CUDA path is driven through its seams
/// (<see cref="DeviceOption.Probe"/> pretends an H200 is there, <see cref="GpuTrainingOptions.OpenAccelerator"/> opens ILGPU's
/// CPU simulator), so the code a GPU run takes — upload into a GpuGpt, the device decoder, the host sampler — runs end to end.
/// </summary>
public class SampleCudaCliTests : CliTestBase
{
    // byte-level tokenizer (V = 257), one layer, C = 12, 3 heads of 4
    private static readonly GptConfig TinyConfig = new(Layers: 1, Heads: 3, Channels: 12, VocabSize: 257, MaxSequenceLength: 32);
    private string modelPath = "";

    [SetUp]
    public void WriteModel()
    {
        modelPath = Path.Combine(TestDirectory, "model.safetensors");
        using var model = new Gpt(TinyConfig);
        model.InitializeGpt2(3);
        var noise = RandomFloats(model.Parameters.Length, 4, 0.3);   // peaked, prompt-dependent distributions
        var p = model.Parameters;
        for (int i = 0; i < p.Length; i++) p[i] += noise[i];
        GptCheckpoint.SaveModel(modelPath, model, "gpt2-k0");
    }

    private string Sample(string device)
    {
        Output.GetStringBuilder().Clear();
        int code = Program.Main(["sample", "--model", modelPath, "--prompt", "Call me", "--prompt", "It was", "--samples", "2",
                                 "--max-tokens", "12", "--temperature", "0.9", "--seed", "5", "--threads", "1", "--device", device]);
        Assert.That(code, Is.EqualTo(0), Error.ToString());
        return Output.ToString();
    }

    [Test]
    public void SampleOnTheCudaPathPrintsTheCpuContinuationsForASeed()
    {
        PretendAnH200(onSimulator: true);
        string gpu = Sample("cuda");
        string cpu = Sample("cpu");
        TestContext.Out.WriteLine(gpu);
        Assert.That(gpu, Does.StartWith("device: cuda (NVIDIA H200").And.Contain("decoding on CPUAccelerator (KV caches and logits on the device"));
        Assert.That(cpu, Does.StartWith("device: cpu (requested)").And.Not.Contain("decoding on"));
        static string[] Samples(string output) => output.Split('\n').SkipWhile(line => !line.StartsWith("--- sample")).ToArray();
        var (gpuSamples, cpuSamples) = (Samples(gpu), Samples(cpu));
        Assert.That(gpuSamples.Count(l => l.StartsWith("--- sample")), Is.EqualTo(4));
        Assert.That(gpuSamples, Is.EqualTo(cpuSamples), "the same continuations (and ln p to 2 decimals) on both devices");
        Assert.That(cpuSamples[1], Is.Not.EqualTo(cpuSamples[3]), "two samples of one prompt differ (the draws are not constant)");
    }
}
