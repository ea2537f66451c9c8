using DistAlign.Alignment.Benchmarks;
using DistAlign.Transformer.Devices;
using DistAlign.Transformer.Model;

namespace DistAlign.Tests.Alignment;

/// <summary>
/// The one step benchmark on the CPU engine (tests/Cuda/GpuGptTests runs the same harness on the simulated GPU): the step
/// learns, the figures agree with each other, and the profiled steps give a per-op breakdown.
/// </summary>
public class StepBenchmarkTests
{
    private static readonly StepWorkload Tiny = new("tiny", new GptConfig(Layers: 1, Heads: 2, Channels: 8, VocabSize: 29, MaxSequenceLength: 8), Rows: 2, Length: 7);

    [Test]
    public void APretrainingStepLearnsAndReportsConsistentFigures()
    {
        var r = StepBenchmark.Run(GptDevice.Cpu, Tiny, StepSettings.Pretraining, warmupSteps: 2, timedSteps: 3, profiledSteps: 2);
        Assert.That(r.Device, Is.EqualTo("the CPU"));
        Assert.That(r.StepMilliseconds, Has.Length.EqualTo(3).And.All.GreaterThan(0));
        Assert.That(r.LastLoss, Is.LessThan(r.FirstLoss), "the same batch every step: the loss must fall");
        Assert.That(r.FirstLoss, Is.EqualTo(MathF.Log(29)).Within(0.1), "GPT-2 initialisation: loss ≈ ln V");
        Assert.That(double.IsFinite(r.LastGradientNorm) && r.LastGradientNorm > 0, "a clipping step reports the norm");
        Assert.That(r.TokensPerSecond, Is.EqualTo(14 / (r.MedianMilliseconds * 1e-3)).Within(1e-9).Percent);
        Assert.That(r.Mfu(1e12), Is.EqualTo(Tiny.FlopsPerStep / (r.MedianMilliseconds * 1e-3) / 1e12).Within(1e-9).Percent);
        Assert.That(r.NanoGptMfu(1e12), Is.EqualTo(Tiny.NanoGptFlopsPerStep / (r.MedianMilliseconds * 1e-3) / 1e12).Within(1e-9).Percent);
        Assert.That(r.OpMillisecondsPerStep.Select(x => x.Op), Does.Contain("matmul fwd").And.Contain("lm head fwd+bwd").And.Contain("adamw").And.Contain("gradient clip"));
        Assert.That(r.DeviceBytesInUse, Is.Null, "the CPU reports no device memory");
    }

    [Test]
    public void ThePeersStepDoesNotClipAndTakesNoNorm()
    {
        var r = StepBenchmark.Run(GptDevice.Cpu, Tiny, StepSettings.Peer, warmupSteps: 1, timedSteps: 1, profiledSteps: 0);
        Assert.That(r.LastGradientNorm, Is.NaN);
        Assert.That(r.OpMillisecondsPerStep, Is.Empty, "nothing profiled");
        Assert.That(r.LastLoss, Is.LessThan(r.FirstLoss));
    }

    [Test]
    public void FlopCountsFollowLlmCsConventions()
    {
        var w = StepWorkload.Gpt2;
        long n = w.Config.ParameterCount, l = w.Config.Layers, c = w.Config.Channels, t = w.Length;
        Assert.That(w.FlopsPerStep, Is.EqualTo(w.Tokens * (6.0 * n + 6.0 * l * c * t)), "causal attention counted as half the T×T products");
        Assert.That(w.NanoGptFlopsPerStep, Is.EqualTo(w.Tokens * (6.0 * n + 12.0 * l * c * t)), "nanoGPT's MFU count: the full T×T");
    }
}
