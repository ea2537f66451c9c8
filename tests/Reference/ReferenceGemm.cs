namespace DistAlign.Tests.Reference;

/// <summary>
/// The obvious fp64 triple loop for the GEMM contract: C = α·op(A)·op(B) + β·C + bias (row-major).
/// Slow on purpose; the only thing it has to be is right.
/// </summary>
public static class ReferenceGemm
{
    /// <summary>
    /// Returns the m×n result (dense, leading dimension n) and, per element, the magnitude scale
    /// |α|·Σ_p |op(A)_ip·op(B)_pj| + |β·c_ij| + |bias_j| against which rounding error is judged.
    /// β = 0 ignores C entirely (it may hold NaN).
    /// </summary>
    public static (double[] C, double[] Scale) Multiply(bool transA, bool transB, int m, int n, int k, double alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb, double beta, ReadOnlySpan<float> c, int ldc,
        ReadOnlySpan<float> bias)
    {
        var result = new double[m * n];
        var scale = new double[m * n];
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++)
            {
                double sum = 0, abs = 0;
                for (int p = 0; p < k; p++)
                {
                    double x = transA ? a[p * lda + i] : a[i * lda + p];
                    double y = transB ? b[j * ldb + p] : b[p * ldb + j];
                    sum += x * y;
                    abs += Math.Abs(x * y);
                }
                double old = beta == 0 ? 0 : beta * c[i * ldc + j];
                double bj = bias.IsEmpty ? 0 : bias[j];
                result[i * n + j] = alpha * sum + old + bj;
                scale[i * n + j] = Math.Abs(alpha) * abs + Math.Abs(old) + Math.Abs(bj);
            }
        }
        return (result, scale);
    }

    /// <summary>fp64 y = x·W + b on doubles (x [rows, inDim], W [inDim, outDim], b [outDim] or empty).</summary>
    public static double[] LinearForward(double[] x, double[] w, double[] b, int rows, int inDim, int outDim)
    {
        var y = new double[rows * outDim];
        for (int r = 0; r < rows; r++)
            for (int o = 0; o < outDim; o++)
            {
                double s = b.Length == 0 ? 0 : b[o];
                for (int i = 0; i < inDim; i++) s += x[r * inDim + i] * w[i * outDim + o];
                y[r * outDim + o] = s;
            }
        return y;
    }
}
