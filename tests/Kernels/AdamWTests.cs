using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

public class AdamWTests
{
    [TestCase(0, 0.0f)]
    [TestCase(1, 0.1f)]
    [TestCase(13, 0.0f)]
    [TestCase(77, 0.1f)]
    [TestCase(1000, 0.01f)]
    public void SeveralStepsMatchReferenceIncludingBiasCorrection(int n, float weightDecay)
    {
        const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
        var p = RandomFloats(n, 1);
        var m = new float[n];
        var v = new float[n];
        var rp = D(p);
        var rm = new double[n];
        var rv = new double[n];
        for (int t = 1; t <= 5; t++)
        {
            var g = RandomFloats(n, 10 + t);
            if (n > 0) g[0] = 0f;   // a zero gradient: the update must stay finite (ε)
            AdamW.Step(p, g, m, v, t, lr, beta1, beta2, eps, weightDecay);
            ReferenceAdamW.Step(rp, D(g), rm, rv, t, lr, beta1, beta2, eps, weightDecay);
            AssertClose(p, rp, 1e-6, 1e-5, $"p after step {t}");
            AssertClose(m, rm, 1e-7, 1e-5, $"m after step {t}");
            AssertClose(v, rv, 1e-7, 1e-5, $"v after step {t}");
        }
    }

    [Test]
    public void FirstStepMovesEveryParameterByTheLearningRate()
    {
        // With bias correction, m̂/√v̂ = g/|g| = ±1 at t = 1: |Δp| = lr (no decay).
        var p = new float[37];
        var g = RandomFloats(37, 1);
        AdamW.Step(p, g, new float[37], new float[37], 1, 0.5f);
        for (int i = 0; i < p.Length; i++) Assert.That(p[i], Is.EqualTo(-0.5f * MathF.Sign(g[i])).Within(1e-5f), $"p[{i}]");
    }

    [TestCase(0)]
    [TestCase(-3)]
    public void StepNumberIsOneBased(int step) =>
        Assert.That(() => AdamW.Step(new float[2], new float[2], new float[2], new float[2], step, 1e-3f),
            Throws.InstanceOf<ArgumentOutOfRangeException>());

    [Test]
    public void ResultsDoNotDependOnThreadCount()
    {
        const int n = 200_003;
        var g = RandomFloats(n, 2);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var p = RandomFloats(n, 1);
                var m = new float[n];
                var v = new float[n];
                AdamW.Step(p, g, m, v, 1, 1e-3f, weightDecay: 0.1f);
                AdamW.Step(p, g, m, v, 2, 1e-3f, weightDecay: 0.1f);
                var all = p.Concat(m).Concat(v).ToArray();
                if (first == null) first = all; else AssertBitIdentical(first, all, $"{threads} threads");
            });
    }
}
