using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// GEMM for a handful of rows (m ≤ <see cref="MaxRows"/>), A not transposed: the shape of KV-cache decoding,
/// where every step multiplies a few token vectors by every weight matrix. Packing B (the weights) would copy
/// all of it every call for a few FLOPs per element, so B is streamed once, in place:
/// <list type="bullet">
/// <item>NN (C = A·B, B is [k, n]): per 16 columns, the m×16 block of C lives in m registers; for each k one
/// load of B[k, j…j+15] feeds m broadcast FMAs.</item>
/// <item>NT (C = A·Bᵀ, B is [n, k]): per column j, the row B[j, ·] is read once in 16-wide chunks against the m
/// rows of A, then m horizontal sums.</item>
/// </list>
/// Columns are split between threads; every output adds its k terms in a fixed order, so results do not depend
/// on the thread count.
/// </summary>
internal static unsafe class SmallRowsGemm
{
    public const int MaxRows = 8;
    private const int MinColumnsPerThread = 64;

    public static bool Applies(int m, bool transA) => m <= MaxRows && !transA && Vector512.IsHardwareAccelerated;

    public static void Run(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, bool transB,
                           float beta, float* c, int ldc, float* bias)
    {
        if (transB)
            CpuParallel.For(n, MinColumnsPerThread, (start, end) => RunNT(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, start, end));
        else
        {
            int chunks = (n + 15) / 16;
            CpuParallel.For(chunks, MinColumnsPerThread / 16, (start, end) =>
                RunNN(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, start * 16, Math.Min(end * 16, n)));
        }
    }

    private static void RunNN(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                              float* bias, int columnStart, int columnEnd)
    {
        var acc = stackalloc Vector512<float>[MaxRows];
        int j = columnStart;
        for (; j + 16 <= columnEnd; j += 16)
        {
            for (int i = 0; i < m; i++) acc[i] = Vector512<float>.Zero;
            for (int p = 0; p < k; p++)
            {
                var bv = Vector512.Load(b + (nint)p * ldb + j);
                for (int i = 0; i < m; i++) acc[i] = Vector512.FusedMultiplyAdd(Vector512.Create(a[(nint)i * lda + p]), bv, acc[i]);
            }
            for (int i = 0; i < m; i++)
            {
                float* row = c + (nint)i * ldc + j;
                var result = acc[i] * alpha;
                if (beta != 0f) result = Vector512.FusedMultiplyAdd(Vector512.Load(row), Vector512.Create(beta), result);
                if (bias != null) result += Vector512.Load(bias + j);
                result.Store(row);
            }
        }
        for (; j < columnEnd; j++)
            for (int i = 0; i < m; i++)
            {
                float sum = 0f;
                for (int p = 0; p < k; p++) sum = MathF.FusedMultiplyAdd(a[(nint)i * lda + p], b[(nint)p * ldb + j], sum);
                Store(c + (nint)i * ldc + j, sum, alpha, beta, bias == null ? 0f : bias[j]);
            }
    }

    private static void RunNT(int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                              float* bias, int columnStart, int columnEnd)
    {
        var acc = stackalloc Vector512<float>[MaxRows];
        int vectorK = k & ~15;
        for (int j = columnStart; j < columnEnd; j++)
        {
            float* bRow = b + (nint)j * ldb;
            for (int i = 0; i < m; i++) acc[i] = Vector512<float>.Zero;
            for (int p = 0; p < vectorK; p += 16)
            {
                var bv = Vector512.Load(bRow + p);
                for (int i = 0; i < m; i++) acc[i] = Vector512.FusedMultiplyAdd(Vector512.Load(a + (nint)i * lda + p), bv, acc[i]);
            }
            for (int i = 0; i < m; i++)
            {
                float sum = Vector512.Sum(acc[i]);
                float* aRow = a + (nint)i * lda;
                for (int p = vectorK; p < k; p++) sum = MathF.FusedMultiplyAdd(aRow[p], bRow[p], sum);
                Store(c + (nint)i * ldc + j, sum, alpha, beta, bias == null ? 0f : bias[j]);
            }
        }
    }

    private static void Store(float* target, float sum, float alpha, float beta, float bias)
    {
        float result = alpha * sum;
        if (beta != 0f) result = MathF.FusedMultiplyAdd(*target, beta, result);
        *target = result + bias;
    }
}
