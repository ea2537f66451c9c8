using DistAlign.Transformer.Devices;
using DistAlign.Alignment.Benchmarks;
using DistAlign.Alignment.Experiments;
using DistAlign.Alignment.Policies;
using DistAlign.Kernels.Gpu;
using DistAlign.Tests.Alignment;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The demo's known-target experiment on a device (<see cref="GptDevice"/>: π0's pretraining on GpuGpt, the reward model's backbone
/// on GpuGpt, every policy and π0 copy on GpuGptPolicy, decoding on GpuGptDecoder, entropies from the device's LM head) against the
/// same experiment on the CPU, at <see cref="DemoSettings.Smoke"/>, small enough for ILGPU's CPU simulator. The draws are the CPU's (same Philox streams), so the
/// two runs see the same samples and every number agrees up to fp32 summation order: π0's loss, the reward model's loss, each
/// method's loss curve and every evaluation estimate within 1e-4·max(1, |cpu|) (the simulator sees about 5e-7).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class DemoOnDeviceTests(string backend) : TemporaryRunFixture
{
    private const double Tolerance = 1e-4;

    [Test]
    public void TheExperimentOnTheDeviceFollowsTheCpuRun()
    {
        var settings = DemoSettings.Smoke.Validate();
        var accelerator = GpuBackend.Get(backend);
        var gemm = GpuContext.CreateGemm(accelerator);
        try
        {
            var device = new GptDevice(accelerator, gemm, null, $"{accelerator.Name} (test)");
            using var onCpu = DemoExperiment.Prepare(settings, Path.Combine(RunDirectory, "cpu"));
            using var onDevice = DemoExperiment.Prepare(settings, Path.Combine(RunDirectory, "device"), device: device);
            Assert.That(onDevice.Device, Is.SameAs(device));
            static string CacheKey(DemoExperiment e) => Path.GetFileName(Path.GetDirectoryName(e.Pi0.Path))!;
            Assert.That(CacheKey(onDevice), Is.Not.EqualTo(CacheKey(onCpu)), "a π0 pretrained on a device has a cache key of its own");

            var cpu = onCpu.RunAtSize(settings.Pairs);
            var gpu = onDevice.RunAtSize(settings.Pairs);
            var differences = DemoComparison.Differences(onDevice, gpu, onCpu, cpu).ToList();
            foreach (var d in differences)
                Assert.That(d.Relative, Is.LessThanOrEqualTo(Tolerance), $"{d.Name}: device {d.Actual:R}, cpu {d.Expected:R}");
            var worst = differences.MaxBy(d => d.Relative)!;
            TestContext.Out.WriteLine($"[{backend}] {differences.Count} numbers; worst {worst.Name}: device {worst.Actual:G7}, cpu {worst.Expected:G7} ({worst.Relative:E2})");
            foreach (var m in gpu.Methods)
                TestContext.Out.WriteLine($"[{backend}] {m.Name}: loss {m.LossCurve[^1].Loss:G6}, KL(π*‖π̂) {m.Evaluation.ForwardKl.Mean:G6}, entropy {m.Evaluation.TokenEntropy:G6}");
            Assert.That(differences.Count(d => d.Name.EndsWith("token_entropy", StringComparison.Ordinal)), Is.EqualTo(8), "π0, π* and six methods' entropies");
            Assert.That(cpu.Methods.Select(m => m.Evaluation.ForwardKl.Mean).Distinct().Count(), Is.GreaterThan(1), "the methods moved π differently");
        }
        finally
        {
            (gemm as IDisposable)?.Dispose();
        }
    }
}
