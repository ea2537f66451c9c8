using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// GEMM for a handful of rows (m ≤ <see cref="MaxRows"/>), A not transposed: the shape of KV-cache decoding,
/// where every step multiplies a few token vectors by every weight matrix. Packing B (the weights) would copy
/// all of it every call for a few FLOPs per element, so B is streamed once, in place:
/// <list type="bullet">
/// <item>NN (C = A·B, B is [k, n]): per 16 columns, the m×16 block of C lives in 4 or 8 registers; for each k one
/// load of B[k, j…j+15] feeds that many broadcast FMAs.</item>
/// <item>NT (C = A·Bᵀ, B is [n, k]): per pair of columns, the rows B[j, ·] and B[j + 1, ·] are read once in 16-wide
/// chunks against the m rows of A, then one horizontal sum per output.</item>
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

    /// <summary>How many rows of A one pass handles: 4 (m ≤ 4) or 8, a compile-time constant per instantiation.</summary>
    private interface IRowBlock
    {
        static abstract int Rows { get; }
    }

    private struct FourRows : IRowBlock
    {
        public static int Rows => 4;
    }

    private struct EightRows : IRowBlock
    {
        public static int Rows => 8;
    }

    /// <summary>
    /// Row pointers of A for one pass: rows past m repeat row m − 1 (their results are computed and dropped), so the
    /// accumulators are plain locals the JIT keeps in registers, not a stack array loaded and stored at every step.
    /// </summary>
    private static void RowPointers(float* a, int lda, int m, out float* a0, out float* a1, out float* a2, out float* a3,
                                    out float* a4, out float* a5, out float* a6, out float* a7)
    {
        nint Row(int i) => Math.Min(i, m - 1) * (nint)lda;
        a0 = a + Row(0); a1 = a + Row(1); a2 = a + Row(2); a3 = a + Row(3);
        a4 = a + Row(4); a5 = a + Row(5); a6 = a + Row(6); a7 = a + Row(7);
    }

    private static void RunNN(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                              float* bias, int columnStart, int columnEnd)
    {
        if (m <= 4) RunNN<FourRows>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
        else RunNN<EightRows>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
    }

    /// <summary>NN: per 16 columns, C[i, j…j+15] = Σ_p A[i, p]·B[p, j…j+15] in TBlock.Rows register accumulators.</summary>
    private static void RunNN<TBlock>(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                                      float* bias, int columnStart, int columnEnd) where TBlock : struct, IRowBlock
    {
        RowPointers(a, lda, m, out float* a0, out float* a1, out float* a2, out float* a3, out float* a4, out float* a5, out float* a6, out float* a7);
        int j = columnStart;
        for (; j + 16 <= columnEnd; j += 16)
        {
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
            float* bp = b + j;
            for (int p = 0; p < k; p++, bp += ldb)
            {
                var bv = Vector512.Load(bp);
                c0 = Vector512.FusedMultiplyAdd(Vector512.Create(a0[p]), bv, c0);
                c1 = Vector512.FusedMultiplyAdd(Vector512.Create(a1[p]), bv, c1);
                c2 = Vector512.FusedMultiplyAdd(Vector512.Create(a2[p]), bv, c2);
                c3 = Vector512.FusedMultiplyAdd(Vector512.Create(a3[p]), bv, c3);
                if (TBlock.Rows > 4)
                {
                    c4 = Vector512.FusedMultiplyAdd(Vector512.Create(a4[p]), bv, c4);
                    c5 = Vector512.FusedMultiplyAdd(Vector512.Create(a5[p]), bv, c5);
                    c6 = Vector512.FusedMultiplyAdd(Vector512.Create(a6[p]), bv, c6);
                    c7 = Vector512.FusedMultiplyAdd(Vector512.Create(a7[p]), bv, c7);
                }
            }
            var biasVector = bias != null ? Vector512.Load(bias + j) : Vector512<float>.Zero;
            Span<Vector512<float>> results = [c0, c1, c2, c3, c4, c5, c6, c7];
            for (int i = 0; i < m; i++)
            {
                float* row = c + (nint)i * ldc + j;
                var result = results[i] * alpha;
                if (beta != 0f) result = Vector512.FusedMultiplyAdd(Vector512.Load(row), Vector512.Create(beta), result);
                (result + biasVector).Store(row);
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
        if (m <= 4) RunNT<FourRows>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
        else RunNT<EightRows>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
    }

    /// <summary>
    /// NT: C[i, j] = Σ_p A[i, p]·B[j, p]. Columns go in pairs: the rows B[j, ·] and B[j + 1, ·] are read once in
    /// 16-wide chunks against the (L1-resident) rows of A, so each A chunk loaded feeds two FMAs; then one horizontal
    /// sum per output. A last odd column runs alone.
    /// </summary>
    private static void RunNT<TBlock>(int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                                      float* bias, int columnStart, int columnEnd) where TBlock : struct, IRowBlock
    {
        RowPointers(a, lda, m, out float* a0, out float* a1, out float* a2, out float* a3, out float* a4, out float* a5, out float* a6, out float* a7);
        int vectorK = k & ~15;
        Span<float> sums = stackalloc float[2 * TBlock.Rows];
        for (int j = columnStart; j < columnEnd; j += 2)
        {
            int columns = Math.Min(2, columnEnd - j);
            float* bRow = b + (nint)j * ldb, bNext = columns == 2 ? bRow + ldb : bRow;   // a lone last column pairs with itself
            Vector512<float> c0 = default, c1 = default, c2 = default, c3 = default, c4 = default, c5 = default, c6 = default, c7 = default;
            Vector512<float> d0 = default, d1 = default, d2 = default, d3 = default, d4 = default, d5 = default, d6 = default, d7 = default;
            for (int p = 0; p < vectorK; p += 16)
            {
                var bv = Vector512.Load(bRow + p);
                var bw = Vector512.Load(bNext + p);
                var x = Vector512.Load(a0 + p); c0 = Vector512.FusedMultiplyAdd(x, bv, c0); d0 = Vector512.FusedMultiplyAdd(x, bw, d0);
                x = Vector512.Load(a1 + p); c1 = Vector512.FusedMultiplyAdd(x, bv, c1); d1 = Vector512.FusedMultiplyAdd(x, bw, d1);
                x = Vector512.Load(a2 + p); c2 = Vector512.FusedMultiplyAdd(x, bv, c2); d2 = Vector512.FusedMultiplyAdd(x, bw, d2);
                x = Vector512.Load(a3 + p); c3 = Vector512.FusedMultiplyAdd(x, bv, c3); d3 = Vector512.FusedMultiplyAdd(x, bw, d3);
                if (TBlock.Rows > 4)
                {
                    x = Vector512.Load(a4 + p); c4 = Vector512.FusedMultiplyAdd(x, bv, c4); d4 = Vector512.FusedMultiplyAdd(x, bw, d4);
                    x = Vector512.Load(a5 + p); c5 = Vector512.FusedMultiplyAdd(x, bv, c5); d5 = Vector512.FusedMultiplyAdd(x, bw, d5);
                    x = Vector512.Load(a6 + p); c6 = Vector512.FusedMultiplyAdd(x, bv, c6); d6 = Vector512.FusedMultiplyAdd(x, bw, d6);
                    x = Vector512.Load(a7 + p); c7 = Vector512.FusedMultiplyAdd(x, bv, c7); d7 = Vector512.FusedMultiplyAdd(x, bw, d7);
                }
            }
            int r = TBlock.Rows;
            sums[0] = Vector512.Sum(c0); sums[1] = Vector512.Sum(c1); sums[2] = Vector512.Sum(c2); sums[3] = Vector512.Sum(c3);
            sums[r] = Vector512.Sum(d0); sums[r + 1] = Vector512.Sum(d1); sums[r + 2] = Vector512.Sum(d2); sums[r + 3] = Vector512.Sum(d3);
            if (TBlock.Rows > 4)
            {
                sums[4] = Vector512.Sum(c4); sums[5] = Vector512.Sum(c5); sums[6] = Vector512.Sum(c6); sums[7] = Vector512.Sum(c7);
                sums[r + 4] = Vector512.Sum(d4); sums[r + 5] = Vector512.Sum(d5); sums[r + 6] = Vector512.Sum(d6); sums[r + 7] = Vector512.Sum(d7);
            }
            for (int column = 0; column < columns; column++)
            {
                float* bColumn = column == 0 ? bRow : bNext;
                for (int i = 0; i < m; i++)
                {
                    float sum = sums[column * r + i];
                    float* aRow = a + (nint)i * lda;
                    for (int p = vectorK; p < k; p++) sum = MathF.FusedMultiplyAdd(aRow[p], bColumn[p], sum);
                    Store(c + (nint)i * ldc + j + column, sum, alpha, beta, bias == null ? 0f : bias[j + column]);
                }
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
