using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using DistAlign.Tests.Reference;
using ILGPU;
using ILGPU.Runtime;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// The ILGPU pairwise loss, held to the fp64 reference (same tolerances as the CPU kernel) and to the CPU kernel: bit for bit
/// on ILGPU's CPU accelerator (it runs the kernel's IL as .NET code, so the per-pair fp64 code, Math.Exp/Log included, and the
/// ordered sums are the CPU kernel's own); on a CUDA device within <see cref="CudaParity"/> (absolute, and relative to the
/// CPU's value), because there the fp64 exp/log are ILGPU's device implementations and ptxas may contract a multiply and an
/// add into one FMA, so values differ from the CPU's in the last fp64 bits and fp32 outputs by an ulp or so.
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuPairwiseBradleyTerryLossTests(string backend) : GpuFixture(backend)
{
    private const double CudaParity = 1e-6;

    private GpuPairwiseBradleyTerryLoss? _loss;

    /// <summary>0 on the simulator (bit for bit), <see cref="CudaParity"/> on CUDA.</summary>
    private double ParityTolerance => Backend == "cuda" ? CudaParity : 0;

    private void AssertMatchesTheCpuKernel(float[] cpu, float[] gpu, string what)
    {
        if (ParityTolerance == 0) KernelTest.AssertBitIdentical(cpu, gpu, what);
        else AssertClose(gpu, KernelTest.D(cpu), ParityTolerance, ParityTolerance, what);
    }

    private void AssertMatchesTheCpuKernel(PairwiseLossMetrics cpu, PairwiseLossMetrics gpu)
    {
        if (ParityTolerance == 0) Assert.That(gpu, Is.EqualTo(cpu), "metrics vs CPU");
        else PairwiseBradleyTerryLossTests.AssertMetricsMatchReference(gpu, cpu.Named().ToDictionary(m => m.Name, m => m.Value), ParityTolerance);
    }

    [SetUp]
    public void CreateLoss() => _loss ??= new GpuPairwiseBradleyTerryLoss(GpuTest.Accelerator);

    [OneTimeTearDown]
    public void TearDown() => _loss?.Dispose();

    private static IEnumerable<TestCaseData> Variants() =>
        PairwiseLossCase.AllSettings().Select(s => new TestCaseData(s).SetArgDisplayNames(s.Variant.ToString()));

    private (float[] Losses, PairwiseLossMetrics Metrics, float[] Gradient) RunGpu(PairwiseLossSettings s, PairwiseLossCase c, float[] before)
    {
        var a = GpuTest.Accelerator;
        using var logps = a.Allocate1D(c.Logps);
        using var refLogps = a.Allocate1D(c.RefLogps);
        using var tokens = a.Allocate1D(c.TokenCounts);
        using var rewards = a.Allocate1D(c.Rewards);
        using var chosen = a.Allocate1D(c.Chosen.Length == 0 ? [0] : c.Chosen);
        using var rejected = a.Allocate1D(c.Rejected.Length == 0 ? [0] : c.Rejected);
        using var labels = a.Allocate1D(c.Labels.Length == 0 ? [0f] : c.Labels);
        using var losses = a.Allocate1D<float>(Math.Max(1, c.Pairs));
        using var gradient = a.Allocate1D(before);
        int p = c.Pairs;
        var batch = new GpuPairwiseLossBatch
        {
            Logps = logps.View, RefLogps = refLogps.View, TokenCounts = tokens.View, Rewards = rewards.View,
            Chosen = chosen.View.SubView(0, p), Rejected = rejected.View.SubView(0, p), Labels = labels.View.SubView(0, p),
        };
        var lossView = losses.View.SubView(0, p);
        var metrics = s.DifferentiatesRewards
            ? _loss!.ForwardBackward(s, batch, lossView, default, gradient.View)
            : _loss!.ForwardBackward(s, batch, lossView, gradient.View, default);
        a.Synchronize();
        return (losses.GetAsArray1D()[..p], metrics, gradient.GetAsArray1D());
    }

    [TestCaseSource(nameof(Variants))]
    public void MatchesReferenceAndTheCpuKernel(PairwiseLossSettings s)
    {
        var c = new PairwiseLossCase();
        var before = RandomFloats(c.Sequences, 7);
        var (losses, metrics, gradient) = RunGpu(s, c, before);
        AssertClose(losses, ReferencePairwiseLosses.PairLosses(s, c.Reference), 1e-6, 1e-6, "per-pair loss");
        PairwiseBradleyTerryLossTests.AssertMetricsMatchReference(metrics, ReferencePairwiseLosses.Metrics(s, c.Reference), 1e-9);
        AssertClose(gradient, KernelTest.Plus(before, c.FiniteDifferenceGradientOfMean(s)), 1e-6, 1e-5, "gradient (accumulated)");

        var cpu = PairwiseBradleyTerryLossTests.Run(s, c, before);
        AssertMatchesTheCpuKernel(cpu.Losses, losses, "losses vs CPU");
        AssertMatchesTheCpuKernel(cpu.Gradient, gradient, "gradient vs CPU");
        AssertMatchesTheCpuKernel(cpu.Metrics, metrics);
    }

    [TestCaseSource(nameof(Variants))]
    public void RandomBatchMatchesTheCpuKernel(PairwiseLossSettings s)
    {
        var c = PairwiseLossCase.Random(12, 60, 300);
        var before = RandomFloats(c.Sequences, 9);
        var gpu = RunGpu(s, c, before);
        var cpu = PairwiseBradleyTerryLossTests.Run(s, c, before);
        AssertMatchesTheCpuKernel(cpu.Losses, gpu.Losses, "losses vs CPU");
        AssertMatchesTheCpuKernel(cpu.Gradient, gpu.Gradient, "gradient vs CPU");
        AssertMatchesTheCpuKernel(cpu.Metrics, gpu.Metrics);
        // The scratch buffers grow for the larger P; a smaller call afterwards still uses the right prefix.
        var small = new PairwiseLossCase();
        AssertMatchesTheCpuKernel(PairwiseBradleyTerryLossTests.Run(s, small, before[..small.Sequences]).Metrics, RunGpu(s, small, before[..small.Sequences]).Metrics);
    }

    [TestCaseSource(nameof(Variants))]
    public void SingleAndNoPairs(PairwiseLossSettings s)
    {
        var one = new PairwiseLossCase().Take(1);
        var r1 = RunGpu(s, one, new float[one.Sequences]);
        AssertClose(r1.Losses, ReferencePairwiseLosses.PairLosses(s, one.Reference), 1e-6, 1e-6, "P = 1 loss");
        AssertClose(r1.Gradient, one.FiniteDifferenceGradientOfMean(s), 1e-6, 1e-5, "P = 1 gradient");

        var none = new PairwiseLossCase().Take(0);
        var before = RandomFloats(none.Sequences, 3);
        var r0 = RunGpu(s, none, before);
        Assert.That(r0.Metrics.Loss, Is.Zero);
        Assert.That(r0.Metrics.Named().All(m => m.Value == 0.0), "all metrics 0");
        Assert.That(r0.Gradient, Is.EqualTo(before), "P = 0: gradient untouched");
    }

    [TestCaseSource(nameof(Variants))]
    public void ExtremeLogitsMatchTheCpuKernel(PairwiseLossSettings s)
    {
        foreach (float delta in new[] { 1e5f, -1e5f })
        {
            var c = new PairwiseLossCase();
            var values = c.Differentiated(s);
            values[0] = values[1] + delta;
            var gpu = RunGpu(s, c, new float[c.Sequences]);
            var cpu = PairwiseBradleyTerryLossTests.Run(s, c, new float[c.Sequences]);
            KernelTest.AssertAllFinite(gpu.Losses, "loss");
            KernelTest.AssertAllFinite(gpu.Gradient, "gradient");
            AssertMatchesTheCpuKernel(cpu.Losses, gpu.Losses, "losses vs CPU");
            AssertMatchesTheCpuKernel(cpu.Gradient, gpu.Gradient, "gradient vs CPU");
        }
    }

    [Test]
    public void DpoAtPolicyEqualToReferenceIsExactlyLn2WithZeroRewards()
    {
        var c = new PairwiseLossCase();
        c.RefLogps = (float[])c.Logps.Clone();
        var (losses, metrics, _) = RunGpu(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid), c, new float[c.Sequences]);
        float ln2 = (float)Math.Log(2.0);   // softplus(0), through the device's fp64 log on CUDA
        Assert.That(losses, Is.All.EqualTo(ln2).Within(ParityTolerance));
        Assert.That((float)metrics.Loss, Is.EqualTo(ln2).Within(ParityTolerance));
        Assert.That(metrics.RewardsChosen, Is.Zero);
        Assert.That(metrics.RewardsRejected, Is.Zero);
        Assert.That(metrics.RewardsMargins, Is.Zero);
    }

    [Test]
    public void InvalidPairsAreReportedBeforeAnyGradientIsWritten()
    {
        var c = new PairwiseLossCase();
        c.Chosen[3] = 9;
        var before = RandomFloats(c.Sequences, 4);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => RunGpu(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid), c, before));
        Assert.That(e!.Message, Does.Contain("Pair 3"));

        c = new PairwiseLossCase();
        c.Labels[2] = -0.5f;
        Assert.That(() => RunGpu(new PairwiseLossSettings(PairwiseLossVariant.Distillation), c, before),
            Throws.InstanceOf<ArgumentException>().With.Message.Contains("soft label"));

        c = new PairwiseLossCase();
        c.TokenCounts[4] = 0;
        Assert.That(() => RunGpu(new PairwiseLossSettings(PairwiseLossVariant.Ipo), c, before),
            Throws.InstanceOf<ArgumentException>().With.Message.Contains("token count"));

        // The kernel still works after a rejected call.
        var ok = new PairwiseLossCase();
        var s = new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid);
        AssertMatchesTheCpuKernel(PairwiseBradleyTerryLossTests.Run(s, ok, before).Gradient, RunGpu(s, ok, before).Gradient, "gradient after a rejected call");
    }

    [Test]
    public void GradientIsUntouchedWhenAPairIsInvalid()
    {
        var a = GpuTest.Accelerator;
        var c = new PairwiseLossCase();
        c.Rejected[1] = -2;
        var before = RandomFloats(c.Sequences, 4);
        using var logps = a.Allocate1D(c.Logps);
        using var refLogps = a.Allocate1D(c.RefLogps);
        using var chosen = a.Allocate1D(c.Chosen);
        using var rejected = a.Allocate1D(c.Rejected);
        using var losses = a.Allocate1D<float>(c.Pairs);
        using var gradient = a.Allocate1D(before);
        var batch = new GpuPairwiseLossBatch { Logps = logps.View, RefLogps = refLogps.View, Chosen = chosen.View, Rejected = rejected.View };
        Assert.That(() => _loss!.ForwardBackward(new PairwiseLossSettings(PairwiseLossVariant.DpoSigmoid), batch, losses.View, gradient.View, default),
            Throws.InstanceOf<ArgumentException>().With.Message.Contains("rejected"));
        a.Synchronize();
        Assert.That(gradient.GetAsArray1D(), Is.EqualTo(before));
    }
}
