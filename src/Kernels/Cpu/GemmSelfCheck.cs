namespace DistAlign.Kernels.Cpu;

/// <summary>
/// A quick correctness probe of <see cref="Gemm"/> for self-checks on a user's machine (the unit tests hold
/// the full fp64 reference): one GEMM on random data compared with a double-precision triple loop.
/// </summary>
public static class GemmSelfCheck
{
    /// <summary>
    /// Runs <c>C = 1.5·op(A)·op(B) − 0.5·C + bias</c> with seeded random data and returns the largest error
    /// relative to the scale of each element's sum, max |err| / (Σ_p |a_ip·b_pj| + |β·c| + |bias|).
    /// Values around 1e-7 (fp32 rounding) are expected; anything above ~1e-5 is a bug.
    /// </summary>
    public static double MaxRelativeError(Transpose transA, Transpose transB, int m, int n, int k, int seed = 1)
    {
        var rng = new Random(seed);
        int lda = (transA == Transpose.No ? k : m) + 3, ldb = (transB == Transpose.No ? n : k) + 5, ldc = n + 1;
        float[] a = Fill(rng, (transA == Transpose.No ? m : k) * lda);
        float[] b = Fill(rng, (transB == Transpose.No ? k : n) * ldb);
        float[] c = Fill(rng, m * ldc);
        float[] bias = Fill(rng, n);
        float[] c0 = (float[])c.Clone();
        const float alpha = 1.5f, beta = -0.5f;

        Gemm.Multiply(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias);

        double worst = 0;
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0, scale = 0;
                for (int p = 0; p < k; p++)
                {
                    double ap = transA == Transpose.No ? a[i * lda + p] : a[p * lda + i];
                    double bp = transB == Transpose.No ? b[p * ldb + j] : b[j * ldb + p];
                    sum += ap * bp;
                    scale += Math.Abs(ap * bp);
                }
                double expected = alpha * sum + beta * (double)c0[i * ldc + j] + bias[j];
                scale = Math.Abs(alpha) * scale + Math.Abs(beta * c0[i * ldc + j]) + Math.Abs(bias[j]) + double.Epsilon;
                double err = Math.Abs(c[i * ldc + j] - expected) / scale;
                if (!(err <= worst)) worst = double.IsNaN(err) ? double.PositiveInfinity : err;
            }
        }
        return worst;
    }

    private static float[] Fill(Random rng, int count)
    {
        var x = new float[count];
        for (int i = 0; i < count; i++) x[i] = (float)(rng.NextDouble() * 2 - 1);
        return x;
    }
}
