using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Policies;
using DistAlign.Alignment.Training;
using DistAlign.Kernels.Gpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// <see cref="PpoIterationBenchmark"/> (<c>distalign bench ppo</c>, <c>--device cuda</c>) on each engine at a tiny shape: the phases of
/// every timed iteration are measured (positive, and adding up to the iteration), and the counts it reports are the run's.
/// What a PPO iteration on the device computes is checked against the CPU in <see cref="GpuOnPolicyTests"/>.
/// </summary>
public class PpoIterationBenchmarkTests
{
    private static readonly GptConfig Config = new(Layers: 1, Heads: 2, Channels: 8, VocabSize: 41, MaxSequenceLength: 12);

    [TestCase("cpu")]
    [TestCase("simulator")]
    [TestCase("cuda")]
    public void ATimedIterationIsSplitIntoSamplingScoringAndTraining(string backend)
    {
        IGemm? gemm = null;
        try
        {
            var device = GptDevice.Cpu;
            if (backend != "cpu")
            {
                var accelerator = GpuBackend.Get(backend);
                gemm = GpuContext.CreateGemm(accelerator);
                device = new GptDevice(accelerator, gemm, null, $"{accelerator.Name} (test)");
            }
            var m = PpoIterationBenchmark.Run("tiny", Config, prompts: 3, promptTokens: 4, responseTokens: 5, warmup: 1, iterations: 2,
                                              epochs: 2, minibatches: 1, device: device);
            Assert.That(m.ResponseTokens, Is.EqualTo(15));
            Assert.That(m.OptimizerSteps, Is.EqualTo(2));
            Assert.That(m.IterationMilliseconds, Has.Length.EqualTo(2));
            Assert.That(new[] { m.SamplingMilliseconds, m.ScoringMilliseconds, m.TrainingMilliseconds }, Is.All.GreaterThan(0));
            Assert.That(m.TotalMilliseconds, Is.InRange(m.IterationMilliseconds.Min() * 0.999, m.IterationMilliseconds.Max() * 1.001),
                        "the medians of the phases add up to a typical iteration");
            Assert.That(PpoIterationBenchmark.Table([m]).Last(), Does.StartWith("| tiny | 1 layers, width 8, vocab 41"));
        }
        finally
        {
            (gemm as IDisposable)?.Dispose();
        }
    }
}
