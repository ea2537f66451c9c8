using DistAlign.Kernels.Gpu;
using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>The tiled ILGPU GEMM against an fp64 triple loop (tolerance 1e-5 + 1e-5·|ref|: fp32 sums of k ≤ 40 terms).</summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuGemmTests(string backend) : GpuFixture(backend)
{
    private static double[] Reference(bool ta, bool tb, int m, int n, int k, double alpha, float[] a, int lda, float[] b, int ldb,
                                      double beta, float[] c, int ldc, float[]? bias)
    {
        var r = new double[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0;
                for (int e = 0; e < k; e++)
                    acc += (double)(ta ? a[e * lda + i] : a[i * lda + e]) * (tb ? b[j * ldb + e] : b[e * ldb + j]);
                r[i * n + j] = alpha * acc + (beta == 0 ? 0 : beta * c[i * ldc + j]) + (bias?.Length > 0 ? bias[j] : 0);
            }
        return r;
    }

    private static float[] Compact(float[] c, int m, int n, int ldc)
    {
        var r = new float[m * n];
        for (int i = 0; i < m; i++) Array.Copy(c, i * ldc, r, i * n, n);
        return r;
    }

    [TestCase(false, false, 5, 7, 3)]
    [TestCase(false, true, 9, 6, 11)]
    [TestCase(true, false, 13, 5, 17)]
    [TestCase(true, true, 6, 9, 40)]
    [TestCase(false, false, 1, 1, 1)]
    [TestCase(true, true, 17, 3, 1)]
    public void AllTransposeCasesMatchReference(bool ta, bool tb, int m, int n, int k)
    {
        int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;   // padded leading dimensions
        var a = RandomFloats((ta ? k : m) * lda, 1);
        var b = RandomFloats((tb ? n : k) * ldb, 2);
        var c0 = RandomFloats(m * ldc, 3);
        var bias = RandomFloats(n, 4);
        const float alpha = 0.75f, beta = 0.5f;
        var expected = Reference(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c0, ldc, bias);
        float[] Run()
        {
            using var da = Up(a);
            using var db = Up(b);
            using var dc = Up(c0);
            using var dbias = Up(bias);
            Ops.Gemm.Multiply(ta, tb, m, n, k, alpha, V(da, a), lda, V(db, b), ldb, beta, V(dc, c0), ldc, V(dbias, bias));
            var c = Down(dc, c0.Length);
            AssertClose(Compact(c, m, n, ldc), expected, 1e-5, 1e-5, "C");
            for (int i = 0; i < m; i++)
                for (int j = n; j < ldc; j++)
                    Assert.That(c[i * ldc + j], Is.EqualTo(c0[i * ldc + j]), "padding between rows is untouched");
            return c;
        }
        AssertBitIdentical(Run(), Run(), "gemm rerun");
    }

    [Test]
    public void BetaZeroDoesNotReadC()
    {
        const int m = 3, n = 5, k = 4;
        var a = RandomFloats(m * k, 1);
        var b = RandomFloats(k * n, 2);
        var c = Enumerable.Repeat(float.NaN, m * n).ToArray();
        using var da = Up(a);
        using var db = Up(b);
        using var dc = Up(c);
        Ops.Gemm.Multiply(false, false, m, n, k, 1f, V(da, a), k, V(db, b), n, 0f, V(dc, c), n);
        AssertClose(Down(dc, m * n), Reference(false, false, m, n, k, 1, a, k, b, n, 0, c, n, null), 1e-5, 1e-5, "C");
    }

    [Test]
    public void KZeroScalesCAndEmptyShapesAreNoOps()
    {
        var c = RandomFloats(6, 1);
        using var dc = Up(c);
        using var empty = Up(Array.Empty<float>());
        Ops.Gemm.Multiply(false, false, 2, 3, 0, 1f, V(empty, 0), 1, V(empty, 0), 3, 2f, V(dc, c), 3);
        AssertClose(Down(dc, 6), D(c).Select(x => 2 * x).ToArray(), 0, 1e-7, "C = βC");
        Ops.Gemm.Multiply(false, false, 0, 3, 4, 1f, V(empty, 0), 4, V(empty, 0), 3, 0f, V(empty, 0), 3);
        Assert.Throws<ArgumentException>(() => Ops.Gemm.Multiply(false, false, 2, 3, 1, 1f, V(dc, 1), 1, V(dc, 3), 3, 0f, V(dc, 6), 3));
    }

    [Test]
    public void StridedBatchedMatchesPerMatrixProducts()
    {
        const int batch = 3, m = 5, n = 4, k = 7;
        long sa = m * k + 1, sb = k * n + 2, sc = m * n + 3;
        var a = RandomFloats((int)(batch * sa), 1);
        var b = RandomFloats((int)(batch * sb), 2);
        var c = RandomFloats((int)(batch * sc), 3);
        using var da = Up(a);
        using var db = Up(b);
        using var dc = Up(c);
        Ops.Gemm.MultiplyStridedBatched(false, true, m, n, k, 1f, V(da, a), k, sa, V(db, b), k, sb, 1f, V(dc, c), n, sc, batch);
        var result = Down(dc, c.Length);
        for (int i = 0; i < batch; i++)
        {
            var expected = Reference(false, true, m, n, k, 1, a[(int)(i * sa)..], k, b[(int)(i * sb)..], k, 1, c[(int)(i * sc)..], n, null);
            AssertClose(result.AsSpan((int)(i * sc), m * n), expected, 1e-5, 1e-5, $"matrix {i}");
        }
    }

    [Test]
    public void TheTileFitsTheAccelerator()
    {
        var gemm = (GpuTiledGemm)Ops.Gemm;
        Assert.That(gemm.Tile * gemm.Tile, Is.LessThanOrEqualTo(Accelerator.MaxNumThreadsPerGroup));
        Assert.That(gemm.Tile, Is.GreaterThan(1), "tiles of one element would not exercise the shared-memory staging");
    }
}
