using DistAlign.Engine.Cuda;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Cuda;

/// <summary>
/// The row-major → cuBLAS mapping, checked without a GPU: the arguments <see cref="CublasGemmCall"/> computes
/// are fed to a plain column-major GEMM written as cuBLAS documents it, and the result must equal the CPU
/// row-major GEMM on the same buffers, for all four transpose cases, padded leading dimensions, and batches.
/// </summary>
public class CublasGemmCallTests
{
    /// <summary>cuBLAS semantics: column-major C[m×n] = α·op(A)·op(B) + β·C, op(X)[i, l] = X[i + l·ld] or X[l + i·ld] when transposed.</summary>
    private static void ColumnMajorGemm(int transa, int transb, int m, int n, int k, float alpha, float[] a, long offsetA, int lda,
                                        float[] b, long offsetB, int ldb, float beta, float[] c, long offsetC, int ldc)
    {
        for (int j = 0; j < n; j++)
            for (int i = 0; i < m; i++)
            {
                double acc = 0;
                for (int l = 0; l < k; l++)
                {
                    float x = transa == Cublas.OpN ? a[offsetA + i + (long)l * lda] : a[offsetA + l + (long)i * lda];
                    float y = transb == Cublas.OpN ? b[offsetB + l + (long)j * ldb] : b[offsetB + j + (long)l * ldb];
                    acc += (double)x * y;
                }
                long at = offsetC + i + (long)j * ldc;
                c[at] = (float)(alpha * acc + (beta == 0 ? 0 : beta * c[at]));
            }
    }

    [TestCase(false, false, 5, 7, 3)]
    [TestCase(false, true, 9, 6, 11)]
    [TestCase(true, false, 13, 5, 17)]
    [TestCase(true, true, 6, 9, 40)]
    [TestCase(false, true, 1, 8, 2)]
    public void TheCallArgumentsReproduceTheRowMajorProduct(bool ta, bool tb, int m, int n, int k)
    {
        int lda = (ta ? m : k) + 2, ldb = (tb ? k : n) + 1, ldc = n + 3;
        var a = RandomFloats((ta ? k : m) * lda, 1);
        var b = RandomFloats((tb ? n : k) * ldb, 2);
        var c0 = RandomFloats(m * ldc, 3);
        const float alpha = 0.75f, beta = 0.5f;

        var cpu = (float[])c0.Clone();
        Gemm.Multiply(ta ? Transpose.Yes : Transpose.No, tb ? Transpose.Yes : Transpose.No, m, n, k, alpha, a, lda, b, ldb, beta, cpu, ldc);

        var call = CublasGemmCall.FromRowMajor(ta, tb, m, n, k, lda, ldb, ldc);
        Assert.That((call.M, call.N, call.K), Is.EqualTo((n, m, k)));
        Assert.That((call.TransA, call.TransB), Is.EqualTo((tb ? Cublas.OpT : Cublas.OpN, ta ? Cublas.OpT : Cublas.OpN)));
        // cuBLAS's own argument checks: lda ≥ rows of its stored A, and so on.
        Assert.That(call.Lda, Is.GreaterThanOrEqualTo(call.TransA == Cublas.OpN ? call.M : call.K));
        Assert.That(call.Ldb, Is.GreaterThanOrEqualTo(call.TransB == Cublas.OpN ? call.K : call.N));
        Assert.That(call.Ldc, Is.GreaterThanOrEqualTo(call.M));
        var gpu = (float[])c0.Clone();
        Assert.That(CublasGemmCall.OperandsSwapped, Is.True);
        ColumnMajorGemm(call.TransA, call.TransB, call.M, call.N, call.K, alpha, b, 0, call.Lda, a, 0, call.Ldb, beta, gpu, 0, call.Ldc);
        AssertClose(gpu, D(cpu), 1e-5, 1e-5, "column-major call vs row-major CPU GEMM");
    }

    [Test]
    public void StridedBatchesKeepTheirStridesWithTheirOperands()
    {
        const int batch = 3, m = 4, n = 5, k = 6;
        int lda = m, ldb = k, ldc = n;   // A transposed (k×m), B transposed (n×k)
        long sa = k * lda + 3, sb = n * ldb + 1, sc = m * ldc + 2;
        var a = RandomFloats((int)(batch * sa), 4);
        var b = RandomFloats((int)(batch * sb), 5);
        var c = RandomFloats((int)(batch * sc), 6);
        var call = CublasGemmCall.FromRowMajor(true, true, m, n, k, lda, ldb, ldc);
        var gpu = (float[])c.Clone();
        for (int i = 0; i < batch; i++)   // what cublasGemmStridedBatchedEx does, with (B, strideB) first
            ColumnMajorGemm(call.TransA, call.TransB, call.M, call.N, call.K, 1f, b, i * sb, call.Lda, a, i * sa, call.Ldb, 0f, gpu, i * sc, call.Ldc);
        for (int i = 0; i < batch; i++)
        {
            var expected = new float[m * ldc];
            Gemm.Multiply(Transpose.Yes, Transpose.Yes, m, n, k, 1f, a.AsSpan((int)(i * sa)), lda, b.AsSpan((int)(i * sb)), ldb, 0f, expected, ldc);
            AssertClose(gpu.AsSpan((int)(i * sc), m * ldc), D(expected), 1e-5, 1e-5, $"matrix {i}");
        }
    }
}
