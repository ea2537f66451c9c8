using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// GEMM for a handful of rows (m ≤ <see cref="MaxRows"/>), A not transposed: the shape of KV-cache decoding,
/// where every step multiplies a few token vectors by every weight matrix. Packing B (the weights) would copy
/// all of it every call for a few FLOPs per element, so B is streamed once, in place:
/// <list type="bullet">
/// <item>NN (C = A·B, B is [k, n]): per vector of columns (Count = 16, 8 or 4), the m×Count block of C lives in 4 or 8
/// registers; for each k one load of B[k, j…j+Count−1] feeds that many broadcast FMAs.</item>
/// <item>NT (C = A·Bᵀ, B is [n, k]): per pair of columns, the rows B[j, ·] and B[j + 1, ·] are read once in vector-wide
/// chunks against the m rows of A, then one horizontal sum per output (one column at a time for 8 rows below Vector512,
/// whose 16 registers cannot hold 16 accumulators).</item>
/// </list>
/// Everything runs at the widest accelerated width (<see cref="CpuVectors"/>). Columns are split between threads in units
/// of 16; every output adds its k terms in a fixed order, so results do not depend on the thread count.
/// </summary>
internal static unsafe class SmallRowsGemm
{
    public const int MaxRows = 8;
    private const int MinColumnsPerThread = 64;

    /// <summary>Columns per unit of parallel work in NN (one 64-byte line of a row of B or C).</summary>
    private const int ColumnUnit = 16;

    public static bool Applies(int m, bool transA) => m <= MaxRows && !transA;

    public static void Run(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, bool transB,
                           float beta, float* c, int ldc, float* bias)
    {
        if (transB)
            CpuParallel.For(n, MinColumnsPerThread, (start, end) => RunNT(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, start, end));
        else
        {
            int units = (n + ColumnUnit - 1) / ColumnUnit;
            CpuParallel.For(units, MinColumnsPerThread / ColumnUnit, (start, end) =>
                RunNN(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, start * ColumnUnit, Math.Min(end * ColumnUnit, n)));
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
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: RunNN<RegisterTile512, Vector512<float>, Vector512Lanes>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
            case VectorWidth.Vector256: RunNN<RegisterTile256, Vector256<float>, Vector256Lanes>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
            case VectorWidth.Vector128: RunNN<RegisterTile128, Vector128<float>, Vector128Lanes>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
            default: RunNN<RegisterTileScalar, float, ScalarLanes>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
        }
    }

    private static void RunNN<TTile, TRaw, TVector>(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                                       float* bias, int columnStart, int columnEnd) where TTile : IRegisterTile<TRaw, TVector> where TRaw : unmanaged where TVector : unmanaged, IFloatVector<TVector>
    {
        if (m <= 4) RunNN<TTile, TRaw, TVector, FourRows>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
        else RunNN<TTile, TRaw, TVector, EightRows>(m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
    }

    /// <summary>
    /// NN: per Count columns, C[i, j…j+Count−1] = Σ_p A[i, p]·B[p, j…j+Count−1] in TBlock.Rows register accumulators. Where the
    /// registers allow (Vector512; 4 rows below it) two vectors of columns per pass (2·Rows accumulators): a pass walks down B
    /// with a stride of a whole row (9 KB for n = 2304, so its lines fall in a few L1 sets), and covering 128 bytes of each
    /// row per pass halves the passes (one vector a pass at Vector256 fetched every line of B twice: 1.08 ms against 0.75 at
    /// m = 1, n = 2304, k = 768; at Vector512, 8 rows: 840 µs against 600 for the old 16-column pass).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static void RunNN<TTile, TRaw, TVector, TBlock>(int m, int n, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                                               float* bias, int columnStart, int columnEnd)
        where TTile : IRegisterTile<TRaw, TVector> where TRaw : unmanaged where TVector : unmanaged, IFloatVector<TVector> where TBlock : struct, IRowBlock
    {
        RowPointers(a, lda, m, out float* a0, out float* a1, out float* a2, out float* a3, out float* a4, out float* a5, out float* a6, out float* a7);
        int width = TVector.Count;
        int j = columnStart;
        if (width == 16 || TBlock.Rows == 4)   // JIT-time constant: 2·Rows + 2 registers fit (32 zmm; 16 ymm/xmm for 4 rows)
            for (; j + 2 * width <= columnEnd; j += 2 * width)
                NNColumns<TTile, TRaw, TVector, TBlock>(true, m, k, alpha, a0, a1, a2, a3, a4, a5, a6, a7, b, ldb, beta, c, ldc, bias, j);
        for (; j + width <= columnEnd; j += width)
            NNColumns<TTile, TRaw, TVector, TBlock>(false, m, k, alpha, a0, a1, a2, a3, a4, a5, a6, a7, b, ldb, beta, c, ldc, bias, j);
        for (; j < columnEnd; j++)
            for (int i = 0; i < m; i++)
            {
                float sum = 0f;
                for (int p = 0; p < k; p++) sum = MathF.FusedMultiplyAdd(a[(nint)i * lda + p], b[(nint)p * ldb + j], sum);
                Store(c + (nint)i * ldc + j, sum, alpha, beta, bias == null ? 0f : bias[j]);
            }
    }

    /// <summary>
    /// One pass of <see cref="RunNN{TTile, TRaw, TVector, TBlock}"/>: columns j… of C, one vector of them or (<paramref name="two"/>, where the registers allow)
    /// two, for all m rows. <paramref name="two"/> is a constant at each call, so each copy inlined keeps only its own path.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void NNColumns<TTile, TRaw, TVector, TBlock>(bool two, int m, int k, float alpha, float* a0, float* a1, float* a2, float* a3,
                                                  float* a4, float* a5, float* a6, float* a7, float* b, int ldb, float beta, float* c, int ldc,
                                                  float* bias, int j)
        where TTile : IRegisterTile<TRaw, TVector> where TRaw : unmanaged where TVector : unmanaged, IFloatVector<TVector> where TBlock : struct, IRowBlock
    {
        // On the raw vector type (see IRegisterTile): each A value is broadcast by the FMA itself, straight from memory.
        int width = TTile.Count;
        TRaw c0 = TTile.Zero, c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
        TRaw e0 = c0, e1 = c0, e2 = c0, e3 = c0, e4 = c0, e5 = c0, e6 = c0, e7 = c0;
        float* bp = b + j;
        for (int p = 0; p < k; p++, bp += ldb)
        {
            var bv = TTile.Load(bp);
            c0 = TTile.MultiplyAdd(TTile.Broadcast(a0[p]), bv, c0);
            c1 = TTile.MultiplyAdd(TTile.Broadcast(a1[p]), bv, c1);
            c2 = TTile.MultiplyAdd(TTile.Broadcast(a2[p]), bv, c2);
            c3 = TTile.MultiplyAdd(TTile.Broadcast(a3[p]), bv, c3);
            if (TBlock.Rows > 4)
            {
                c4 = TTile.MultiplyAdd(TTile.Broadcast(a4[p]), bv, c4);
                c5 = TTile.MultiplyAdd(TTile.Broadcast(a5[p]), bv, c5);
                c6 = TTile.MultiplyAdd(TTile.Broadcast(a6[p]), bv, c6);
                c7 = TTile.MultiplyAdd(TTile.Broadcast(a7[p]), bv, c7);
            }
            if (two)
            {
                var bw = TTile.Load(bp + width);
                e0 = TTile.MultiplyAdd(TTile.Broadcast(a0[p]), bw, e0);
                e1 = TTile.MultiplyAdd(TTile.Broadcast(a1[p]), bw, e1);
                e2 = TTile.MultiplyAdd(TTile.Broadcast(a2[p]), bw, e2);
                e3 = TTile.MultiplyAdd(TTile.Broadcast(a3[p]), bw, e3);
                if (TBlock.Rows > 4)
                {
                    e4 = TTile.MultiplyAdd(TTile.Broadcast(a4[p]), bw, e4);
                    e5 = TTile.MultiplyAdd(TTile.Broadcast(a5[p]), bw, e5);
                    e6 = TTile.MultiplyAdd(TTile.Broadcast(a6[p]), bw, e6);
                    e7 = TTile.MultiplyAdd(TTile.Broadcast(a7[p]), bw, e7);
                }
            }
        }
        Span<TVector> results = [TTile.Lanes(c0), TTile.Lanes(c1), TTile.Lanes(c2), TTile.Lanes(c3), TTile.Lanes(c4), TTile.Lanes(c5), TTile.Lanes(c6), TTile.Lanes(c7)];
        StoreColumns(results, m, alpha, beta, c, ldc, bias, j);
        if (two)
        {
            Span<TVector> second = [TTile.Lanes(e0), TTile.Lanes(e1), TTile.Lanes(e2), TTile.Lanes(e3), TTile.Lanes(e4), TTile.Lanes(e5), TTile.Lanes(e6), TTile.Lanes(e7)];
            StoreColumns(second, m, alpha, beta, c, ldc, bias, j + width);
        }
    }

    /// <summary>C[i, j…j+Count−1] = α·results[i] + β·C[i, …] (+ bias) for i &lt; m; β = 0 never reads C.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreColumns<TVector>(Span<TVector> results, int m, float alpha, float beta, float* c, int ldc, float* bias, int j)
        where TVector : unmanaged, IFloatVector<TVector>
    {
        var biasVector = bias != null ? TVector.Load(bias + j) : TVector.Zero;
        for (int i = 0; i < m; i++)
        {
            float* row = c + (nint)i * ldc + j;
            var result = results[i] * TVector.Create(alpha);
            if (beta != 0f) result = TVector.MultiplyAdd(TVector.Load(row), TVector.Create(beta), result);
            (result + biasVector).Store(row);
        }
    }

    private static void RunNT(int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                              float* bias, int columnStart, int columnEnd)
    {
        switch (CpuVectors.Width)
        {
            case VectorWidth.Vector512: RunNT<Vector512Lanes>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
            case VectorWidth.Vector256: RunNT<Vector256Lanes>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
            case VectorWidth.Vector128: RunNT<Vector128Lanes>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
            default: RunNT<ScalarLanes>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd); break;
        }
    }

    private static void RunNT<TVector>(int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                                       float* bias, int columnStart, int columnEnd) where TVector : unmanaged, IFloatVector<TVector>
    {
        if (m <= 4) RunNT<TVector, FourRows>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
        else RunNT<TVector, EightRows>(m, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, columnStart, columnEnd);
    }

    /// <summary>
    /// NT: C[i, j] = Σ_p A[i, p]·B[j, p]. Columns go in pairs: the rows B[j, ·] and B[j + 1, ·] are read once in
    /// vector-wide chunks against the (L1-resident) rows of A, so each A chunk loaded feeds two FMAs; then one horizontal
    /// sum per output. A last odd column runs alone. With 8 rows below Vector512 the columns go one at a time instead
    /// (8 accumulators: 16 and their operands would not fit the 16 vector registers of AVX2 or SSE). Each output's
    /// sum is the same either way.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]   // Tier 0 would call, not inline, every TVector operation
    private static void RunNT<TVector, TBlock>(int m, int k, float alpha, float* a, int lda, float* b, int ldb, float beta, float* c, int ldc,
                                               float* bias, int columnStart, int columnEnd)
        where TVector : unmanaged, IFloatVector<TVector> where TBlock : struct, IRowBlock
    {
        RowPointers(a, lda, m, out float* a0, out float* a1, out float* a2, out float* a3, out float* a4, out float* a5, out float* a6, out float* a7);
        int width = TVector.Count;
        int vectorK = k & ~(width - 1);
        bool pairs = width == 16 || TBlock.Rows == 4;   // JIT-time constant
        int step = pairs ? 2 : 1;
        Span<float> sums = stackalloc float[2 * TBlock.Rows];
        for (int j = columnStart; j < columnEnd; j += step)
        {
            int columns = Math.Min(step, columnEnd - j);
            float* bRow = b + (nint)j * ldb, bNext = columns == 2 ? bRow + ldb : bRow;   // a lone last column pairs with itself
            TVector c0 = TVector.Zero, c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0;
            TVector d0 = c0, d1 = c0, d2 = c0, d3 = c0, d4 = c0, d5 = c0, d6 = c0, d7 = c0;
            for (int p = 0; p < vectorK; p += width)
            {
                var bv = TVector.Load(bRow + p);
                if (pairs)
                {
                    var bw = TVector.Load(bNext + p);
                    var x = TVector.Load(a0 + p); c0 = TVector.MultiplyAdd(x, bv, c0); d0 = TVector.MultiplyAdd(x, bw, d0);
                    x = TVector.Load(a1 + p); c1 = TVector.MultiplyAdd(x, bv, c1); d1 = TVector.MultiplyAdd(x, bw, d1);
                    x = TVector.Load(a2 + p); c2 = TVector.MultiplyAdd(x, bv, c2); d2 = TVector.MultiplyAdd(x, bw, d2);
                    x = TVector.Load(a3 + p); c3 = TVector.MultiplyAdd(x, bv, c3); d3 = TVector.MultiplyAdd(x, bw, d3);
                    if (TBlock.Rows > 4)
                    {
                        x = TVector.Load(a4 + p); c4 = TVector.MultiplyAdd(x, bv, c4); d4 = TVector.MultiplyAdd(x, bw, d4);
                        x = TVector.Load(a5 + p); c5 = TVector.MultiplyAdd(x, bv, c5); d5 = TVector.MultiplyAdd(x, bw, d5);
                        x = TVector.Load(a6 + p); c6 = TVector.MultiplyAdd(x, bv, c6); d6 = TVector.MultiplyAdd(x, bw, d6);
                        x = TVector.Load(a7 + p); c7 = TVector.MultiplyAdd(x, bv, c7); d7 = TVector.MultiplyAdd(x, bw, d7);
                    }
                }
                else
                {
                    c0 = TVector.MultiplyAdd(TVector.Load(a0 + p), bv, c0);
                    c1 = TVector.MultiplyAdd(TVector.Load(a1 + p), bv, c1);
                    c2 = TVector.MultiplyAdd(TVector.Load(a2 + p), bv, c2);
                    c3 = TVector.MultiplyAdd(TVector.Load(a3 + p), bv, c3);
                    c4 = TVector.MultiplyAdd(TVector.Load(a4 + p), bv, c4);
                    c5 = TVector.MultiplyAdd(TVector.Load(a5 + p), bv, c5);
                    c6 = TVector.MultiplyAdd(TVector.Load(a6 + p), bv, c6);
                    c7 = TVector.MultiplyAdd(TVector.Load(a7 + p), bv, c7);
                }
            }
            int r = TBlock.Rows;
            sums[0] = TVector.Sum(c0); sums[1] = TVector.Sum(c1); sums[2] = TVector.Sum(c2); sums[3] = TVector.Sum(c3);
            if (TBlock.Rows > 4)
            {
                sums[4] = TVector.Sum(c4); sums[5] = TVector.Sum(c5); sums[6] = TVector.Sum(c6); sums[7] = TVector.Sum(c7);
            }
            if (pairs)
            {
                sums[r] = TVector.Sum(d0); sums[r + 1] = TVector.Sum(d1); sums[r + 2] = TVector.Sum(d2); sums[r + 3] = TVector.Sum(d3);
                if (TBlock.Rows > 4)
                {
                    sums[r + 4] = TVector.Sum(d4); sums[r + 5] = TVector.Sum(d5); sums[r + 6] = TVector.Sum(d6); sums[r + 7] = TVector.Sum(d7);
                }
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
