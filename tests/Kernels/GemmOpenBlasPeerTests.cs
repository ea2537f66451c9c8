using DistAlign.Engine.Native;
using DistAlign.Kernels.Cpu;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>
/// The OpenBLAS binding used as the benchmark peer: it loads (or says why not) and computes the same GEMM as
/// ours, so benchmark ratios compare equal work. Ignored where OpenBLAS is not installed.
/// </summary>
public class GemmOpenBlasPeerTests
{
    [Test]
    public void UnavailableReasonIsGivenExactlyWhenNotLoadable()
    {
        if (OpenBlas.IsAvailable) Assert.That(OpenBlas.UnavailableReason, Is.Null);
        else Assert.That(OpenBlas.UnavailableReason, Does.Contain("libopenblas"));
    }

    [TestCase(false, false)]
    [TestCase(false, true)]
    [TestCase(true, false)]
    [TestCase(true, true)]
    public void SgemmAgreesWithGemm(bool transA, bool transB)
    {
        if (!OpenBlas.IsAvailable) Assert.Ignore(OpenBlas.UnavailableReason ?? "OpenBLAS is not available.");
        const int m = 37, n = 45, k = 29;
        float[] a = RandomFloats(m * k, 1), b = RandomFloats(k * n, 2), c0 = RandomFloats(m * n, 3);
        int lda = transA ? m : k, ldb = transB ? k : n;
        float[] theirs = (float[])c0.Clone(), ours = (float[])c0.Clone();

        OpenBlas.Sgemm(transA, transB, m, n, k, 0.5f, a, lda, b, ldb, 2f, theirs, n);
        Gemm.Multiply(transA ? Transpose.Yes : Transpose.No, transB ? Transpose.Yes : Transpose.No,
            m, n, k, 0.5f, a, lda, b, ldb, 2f, ours, n);

        // Both are fp32 with different summation orders: |x| ~ 1, k = 29 terms ⇒ differences ~1e-6.
        AssertClose(ours, ToDouble(theirs), atol: 1e-5, rtol: 1e-5, "ours vs OpenBLAS");
    }
}
