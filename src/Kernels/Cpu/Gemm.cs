using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>Whether a GEMM operand is used as stored (<see cref="No"/>) or transposed (<see cref="Yes"/>).</summary>
public enum Transpose
{
    /// <summary>op(X) = X.</summary>
    No,
    /// <summary>op(X) = Xᵀ.</summary>
    Yes,
}

/// <summary>
/// Single-precision general matrix multiply on the CPU, row-major:
/// <c>C[m×n] = α·op(A)[m×k]·op(B)[k×n] + β·C (+ bias[n] broadcast over rows)</c>.
/// </summary>
/// <remarks>
/// <para>
/// Blocking (GotoBLAS/BLIS scheme, written for a row-major C whose vectors run along n):
/// </para>
/// <code>
/// for jc in n step NC            B block  op(B)[pc:pc+KC, jc:jc+NC] packed → ≤ 1.5 MB, lives in L2
///   for pc in k step KC          (K blocks are visited in order: fixed reduction order per element)
///     pack B block into NR-wide micro-panels  [KC][NR]
///     for ic in m step MC        A block  op(A)[ic:ic+MC, pc:pc+KC] packed → ≤ 0.3 MB
///       pack A block into MR-tall micro-panels [KC][MR]
///       for ir in MC step MR     one A micro-panel (MR×KC ≈ 18 KB) stays in L1 ...
///         for jr in NC step NR   ... while the B micro-panels stream from L2
///           micro-kernel: C[ir:ir+MR, jr:jr+NR] (+)= A panel · B panel
/// </code>
/// <para>
/// Packing absorbs the four transpose cases, so one micro-kernel serves NN, NT, TN and TT. Panels are
/// zero-padded to whole MR×NR tiles; partial tiles at the right/bottom edge are computed into a small
/// scratch tile and only their valid part is written to C.
/// </para>
/// <para>
/// Threads: the problem is split with <see cref="CpuParallel.For"/> into contiguous ranges of whole
/// MR-row panels (or NR-column panels when each thread's columns outnumber the rows). With a row split, each B block is
/// packed by all threads together (one parallel step) into one shared buffer, then every thread packs its
/// own A blocks and runs its rows against it. With a column split each thread packs everything it needs
/// into its own buffers. Each C element is always summed over k in the same order (K blocks in order,
/// k ascending inside a block, one FMA chain per element), so results are bit-identical for any thread
/// count.
/// </para>
/// <para>
/// Packing buffers are 64-byte aligned native blocks allocated once per thread and reused; the hot path
/// allocates nothing.
/// </para>
/// </remarks>
public static unsafe class Gemm
{
    // Vector512 micro-kernel: 12 rows × 32 columns (2 zmm per row) = 24 zmm accumulators,
    // plus 2 zmm for the B row and 1 for the broadcast A element (of 32 zmm registers).
    private const int Mr512 = 12;
    private const int Nr512 = 32;

    // Vector256 (AVX2) and Vector128 (SSE, NEON): 6 rows × 2 vectors (16 or 8 columns) = 12 accumulators, plus 2 for the
    // B row and 1 for the broadcast A element: fits the 16 ymm/xmm registers.
    private const int Mr6 = 6;

    /// <summary>Largest K block (packed depth); k is split into equal blocks no deeper than this. An A
    /// micro-panel (MR×KC floats = 18 KB) then stays in the 32 KB L1 while B micro-panels stream past it.</summary>
    internal const int Kc = 384;
    /// <summary>Rows of op(A) per packed A block; a multiple of every MR (12 and 6). MC×KC floats = 288 KB.</summary>
    internal const int Mc = 192;
    /// <summary>Largest column block of op(B) (a multiple of every NR: 32, 16 and 8); n is split into equal blocks
    /// no wider than this. KC×NC floats = 1.5 MB: the packed B block stays in the 2 MB L2.</summary>
    internal const int Nc = 1024;

    /// <summary>Stored rows packed together when a packed panel takes a few values from each row (see PackB).</summary>
    private const int PackRows = 8;
    /// <summary>Below this many multiply-adds per thread a GEMM stays on one thread.</summary>
    private const long MinFmasPerThread = 1L << 18;

    /// <summary>The micro-kernel GEMMs use now, at the kernels' vector width (<see cref="CpuVectors"/>): "Vector512 12×32",
    /// "Vector256 6×16" or "Vector128 6×8".</summary>
    public static string MicroKernel => CpuVectors.Width switch
    {
        VectorWidth.Vector512 => $"Vector512 {Mr512}×{Nr512}",
        VectorWidth.Vector256 => $"Vector256 {Mr6}×{2 * Vector256Lanes.Count}",
        VectorWidth.Vector128 => $"Vector128 {Mr6}×{2 * Vector128Lanes.Count}",
        _ => $"scalar {Mr6}×2",
    };

    /// <summary>
    /// <c>C = α·op(A)·op(B) + β·C</c>, plus <paramref name="bias"/> added to every row when it is not empty.
    /// All matrices are row-major; op(A) is m×k, op(B) is k×n, C is m×n.
    /// </summary>
    /// <param name="transA">Whether A is stored as m×k (<see cref="Transpose.No"/>) or k×m (<see cref="Transpose.Yes"/>).</param>
    /// <param name="transB">Whether B is stored as k×n (<see cref="Transpose.No"/>) or n×k (<see cref="Transpose.Yes"/>).</param>
    /// <param name="m">Rows of C and of op(A).</param>
    /// <param name="n">Columns of C and of op(B).</param>
    /// <param name="k">Columns of op(A), rows of op(B): the reduction length.</param>
    /// <param name="alpha">Scale of the product.</param>
    /// <param name="a">A as stored, row-major with leading dimension <paramref name="lda"/>.</param>
    /// <param name="lda">Distance between rows of A as stored (≥ its row length).</param>
    /// <param name="b">B as stored, row-major with leading dimension <paramref name="ldb"/>.</param>
    /// <param name="ldb">Distance between rows of B as stored (≥ its row length).</param>
    /// <param name="beta">Scale of the old C. When 0, C is not read (it may hold NaN); 1 accumulates.</param>
    /// <param name="c">C, row-major with leading dimension <paramref name="ldc"/>.</param>
    /// <param name="ldc">Distance between rows of C (≥ n).</param>
    /// <param name="bias">Empty, or n values added to every row of C.</param>
    /// <exception cref="ArgumentException">A dimension is negative, a leading dimension is shorter than its
    /// row, a span is too short for its matrix, or the bias has the wrong length.</exception>
    public static void Multiply(
        Transpose transA, Transpose transB, int m, int n, int k, float alpha,
        ReadOnlySpan<float> a, int lda, ReadOnlySpan<float> b, int ldb,
        float beta, Span<float> c, int ldc, ReadOnlySpan<float> bias = default)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        bool aT = transA == Transpose.Yes, bT = transB == Transpose.Yes;
        ValidateMatrix(a.Length, nameof(a), nameof(lda), lda, aT ? k : m, aT ? m : k, aT ? "k×m (transA = Yes)" : "m×k (transA = No)");
        ValidateMatrix(b.Length, nameof(b), nameof(ldb), ldb, bT ? n : k, bT ? k : n, bT ? "n×k (transB = Yes)" : "k×n (transB = No)");
        ValidateMatrix(c.Length, nameof(c), nameof(ldc), ldc, m, n, "m×n");
        if (!bias.IsEmpty && bias.Length != n)
            throw new ArgumentException($"bias must be empty or hold n = {n} values; it has {bias.Length}.", nameof(bias));

        if (m == 0 || n == 0) return;

        fixed (float* pa = a, pb = b, pc = c, pBias = bias)
        {
            var problem = new Problem
            {
                TransA = aT, TransB = bT, M = m, N = n, K = k, Alpha = alpha, Beta = beta,
                A = pa, Lda = lda, B = pb, Ldb = ldb, C = pc, Ldc = ldc, Bias = bias.IsEmpty ? null : pBias,
            };
            if (k == 0 || alpha == 0f)
            {
                ScaleAndAddBias(problem);
                return;
            }
            if (SmallRowsGemm.Applies(m, aT))
            {
                SmallRowsGemm.Run(m, n, k, alpha, pa, lda, pb, ldb, bT, beta, pc, ldc, problem.Bias);
                return;
            }
            Run(problem);
        }
    }

    private static void ValidateMatrix(int length, string spanName, string ldName, int ld, int rows, int cols, string shape)
    {
        if (ld < Math.Max(1, cols))
            throw new ArgumentException(
                $"{ldName} = {ld} is shorter than a row of {spanName} (stored {shape}: {rows} rows of {cols}).", ldName);
        if (rows == 0 || cols == 0) return;
        long needed = (long)(rows - 1) * ld + cols;
        if (length < needed)
            throw new ArgumentException(
                $"{spanName} has {length} elements but the matrix (stored {shape}: {rows} rows of {cols}, " +
                $"{ldName} = {ld}) needs at least {needed}.", spanName);
    }

    /// <summary>Everything one GEMM call needs, as raw pointers (the spans are pinned for the call).</summary>
    private struct Problem
    {
        public bool TransA, TransB;
        public int M, N, K;
        public float Alpha, Beta;
        public float* A, B, C, Bias;
        public int Lda, Ldb, Ldc;
    }

    /// <summary>k = 0 or α = 0: C = β·C + bias, without touching A or B (and without reading C when β = 0).</summary>
    private static void ScaleAndAddBias(in Problem p)
    {
        for (int i = 0; i < p.M; i++)
        {
            float* row = p.C + (nint)i * p.Ldc;
            for (int j = 0; j < p.N; j++)
            {
                float v = p.Beta == 0f ? 0f : p.Beta * row[j];
                row[j] = p.Bias == null ? v : v + p.Bias[j];
            }
        }
    }

    private static void Run(Problem p)
    {
        var width = CpuVectors.Width;
        int mr = width == VectorWidth.Vector512 ? Mr512 : Mr6;
        int nr = width switch
        {
            VectorWidth.Vector512 => Nr512, VectorWidth.Vector256 => 2 * Vector256Lanes.Count,
            VectorWidth.Vector128 => 2 * Vector128Lanes.Count, _ => 2 * ScalarLanes.Count,
        };
        int mPanels = (p.M + mr - 1) / mr, nPanels = (p.N + nr - 1) / nr;
        int threads = CpuParallel.Threads;

        // Along m, the threads pack each B block together and all read it: two barriers per B block, and a thread's
        // share is whole MR panels (256 rows over 2 threads: 22 and 21 panels). Along n, every thread packs all of A
        // (m·k, once per column block) for its own columns and runs without a barrier: that duplicates m·k packed
        // floats per thread against m·k·n/threads multiply-adds, so it is chosen where each thread's columns are at
        // least as many as the rows (the transformer's few-row GEMMs: 256 × 3072, 256 × 50,304) and there are
        // panels enough to share.
        bool splitColumns = nPanels >= 4 * threads && (long)p.M * threads <= p.N;
        bool splitRows = !splitColumns && (mPanels >= 4 * threads || mPanels >= nPanels);
        if (splitRows)
        {
            long fmasPerPanel = (long)mr * p.N * p.K;
            int minPanels = (int)Math.Clamp(MinFmasPerThread / fmasPerPanel, 1, int.MaxValue);
            if (Math.Min(CpuParallel.Threads, Math.Max(1, mPanels / minPanels)) > 1)
                RunRowsSharingB(p, mr, nr, mPanels, minPanels);
            else
                CpuParallel.For(mPanels, minPanels, (start, end) =>
                    RunBlock(p, start * mr, Math.Min(end * mr, p.M), 0, p.N, mr, nr));
        }
        else
        {
            long fmasPerPanel = (long)nr * p.M * p.K;
            int minPanels = (int)Math.Clamp(MinFmasPerThread / fmasPerPanel, 1, int.MaxValue);
            CpuParallel.For(nPanels, minPanels, (start, end) =>
                RunBlock(p, 0, p.M, start * nr, Math.Min(end * nr, p.N), mr, nr));
        }
    }

    /// <summary>
    /// Rows split between threads, each B block packed once by all threads together into the calling
    /// thread's buffer and then read by every thread (instead of each thread packing all of B).
    /// </summary>
    private static void RunRowsSharingB(Problem p, int mr, int nr, int mPanels, int minPanels)
    {
        float* sharedB = PackingBuffers.ForCurrentThread().B;
        int kBlocks = (p.K + Kc - 1) / Kc;
        int kcStep = (p.K + kBlocks - 1) / kBlocks;
        int ncBlocks = (p.N + Nc - 1) / Nc;
        int ncStep = ((p.N + ncBlocks - 1) / ncBlocks + nr - 1) / nr * nr;

        for (int jc = 0; jc < p.N; jc += ncStep)
        {
            int nc = Math.Min(ncStep, p.N - jc);
            int bPanels = (nc + nr - 1) / nr;
            for (int pc = 0; pc < p.K; pc += kcStep)
            {
                int kc = Math.Min(kcStep, p.K - pc);
                bool firstK = pc == 0;
                int jcBlock = jc, pcBlock = pc;
                CpuParallel.For(bPanels, 4, (start, end) =>
                    PackB(p, pcBlock, kc, jcBlock + start * nr, Math.Min(end * nr, nc) - start * nr,
                        sharedB + (nint)start * nr * kc, nr));
                CpuParallel.For(mPanels, minPanels, (start, end) =>
                {
                    PackingBuffers own = PackingBuffers.ForCurrentThread();
                    int rowEnd = Math.Min(end * mr, p.M);
                    for (int ic = start * mr; ic < rowEnd; ic += Mc)
                    {
                        int mc = Math.Min(Mc, rowEnd - ic);
                        PackA(p, ic, mc, pcBlock, kc, own.A, mr);
                        MacroKernel(p, ic, mc, jcBlock, nc, kc, firstK, own.A, sharedB, own.Tile, mr, nr);
                    }
                });
            }
        }
    }

    /// <summary>C[rowStart:rowEnd, colStart:colEnd] on the calling thread, with its own packing buffers.</summary>
    private static void RunBlock(in Problem p, int rowStart, int rowEnd, int colStart, int colEnd, int mr, int nr)
    {
        PackingBuffers buffers = PackingBuffers.ForCurrentThread();
        // Equal K blocks no deeper than Kc; the split depends on k only, never on threads.
        int kBlocks = (p.K + Kc - 1) / Kc;
        int kcStep = (p.K + kBlocks - 1) / kBlocks;

        // Equal column blocks no wider than Nc (whole NR panels), so no thin last block is packed and run alone.
        int ncBlocks = (colEnd - colStart + Nc - 1) / Nc;
        int ncStep = ((colEnd - colStart + ncBlocks - 1) / ncBlocks + nr - 1) / nr * nr;

        for (int jc = colStart; jc < colEnd; jc += ncStep)
        {
            int nc = Math.Min(ncStep, colEnd - jc);
            for (int pc = 0; pc < p.K; pc += kcStep)
            {
                int kc = Math.Min(kcStep, p.K - pc);
                bool firstK = pc == 0;
                PackB(p, pc, kc, jc, nc, buffers.B, nr);
                for (int ic = rowStart; ic < rowEnd; ic += Mc)
                {
                    int mc = Math.Min(Mc, rowEnd - ic);
                    PackA(p, ic, mc, pc, kc, buffers.A, mr);
                    MacroKernel(p, ic, mc, jc, nc, kc, firstK, buffers.A, buffers.B, buffers.Tile, mr, nr);
                }
            }
        }
    }

    /// <summary>All MR×NR tiles of one packed A block times one packed B block.</summary>
    private static void MacroKernel(in Problem p, int ic, int mc, int jc, int nc, int kc, bool firstK,
        float* aPacked, float* bPacked, float* tile, int mr, int nr)
    {
        // The first K block applies β and the bias; later blocks add onto what is already in C.
        float beta = firstK ? p.Beta : 1f;
        var width = CpuVectors.Width;
        // Vector512 (12×32): an A micro-panel (18 KB) stays in L1 while the B micro-panels stream from L2. The 6-row kernels
        // read 16 or 8 B values against 6 broadcast A values per k, so there the B micro-panel (kc × NR) is the one to keep
        // in L1, and the A micro-panels stream from L2 (BLIS's order: 2.7× less L2 traffic for the 6×16 tile).
        bool bPanelInL1 = width != VectorWidth.Vector512;
        int outer = bPanelInL1 ? nc : mc, outerStep = bPanelInL1 ? nr : mr;
        int inner = bPanelInL1 ? mc : nc, innerStep = bPanelInL1 ? mr : nr;
        for (int o = 0; o < outer; o += outerStep)
        {
            for (int i = 0; i < inner; i += innerStep)
            {
                var (ir, jr) = bPanelInL1 ? (i, o) : (o, i);
                float* aPanel = aPacked + (nint)ir * kc;
                float* bPanel = bPacked + (nint)jr * kc;
                int rows = Math.Min(mr, mc - ir), cols = Math.Min(nr, nc - jr);
                float* cTile = p.C + (nint)(ic + ir) * p.Ldc + jc + jr;
                float* bias = firstK && p.Bias != null ? p.Bias + jc + jr : null;
                if (rows == mr && cols == nr)
                    RunMicroKernel(width, kc, aPanel, bPanel, cTile, p.Ldc, p.Alpha, beta, bias);
                else
                {
                    // Edge tile: full product into scratch, then write only the valid rows × cols.
                    RunMicroKernel(width, kc, aPanel, bPanel, tile, nr, 1f, 0f, null);
                    StorePartialTile(tile, nr, rows, cols, cTile, p.Ldc, p.Alpha, beta, bias);
                }
            }
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void RunMicroKernel(VectorWidth width, int kc, float* a, float* b, float* c, nint ldc, float alpha, float beta, float* bias)
    {
        var output = new TileOutput(alpha, beta, bias);
        switch (width)
        {
            case VectorWidth.Vector512: Kernel12x32(kc, a, b, c, ldc, output); break;
            case VectorWidth.Vector256: Kernel6xTwoVectors<RegisterTile256, Vector256<float>, Vector256Lanes>(kc, a, b, c, ldc, output); break;
            case VectorWidth.Vector128: Kernel6xTwoVectors<RegisterTile128, Vector128<float>, Vector128Lanes>(kc, a, b, c, ldc, output); break;
            default: Kernel6xTwoVectors<RegisterTileScalar, float, ScalarLanes>(kc, a, b, c, ldc, output); break;
        }
    }

    /// <summary>
    /// How a micro-kernel writes its tile: C = α·acc + β·C (+ bias). Passed by reference, so α and β stay in memory during the
    /// k loop: as two float arguments they took a vector register each, and with all 16 ymm registers holding the 6×16 tile,
    /// the B row and the broadcast, the JIT then copied every second FMA's result (7 vmovaps per k step, front-end bound).
    /// </summary>
    private readonly struct TileOutput(float alpha, float beta, float* bias)
    {
        public readonly float Alpha = alpha, Beta = beta;
        public readonly float* Bias = bias;
    }

    /// <summary>Scalar twin of the kernels' store: c = α·acc + β·c (+ bias), same FMA, so edges round alike.</summary>
    private static void StorePartialTile(float* tile, int tileStride, int rows, int cols, float* c, nint ldc,
        float alpha, float beta, float* bias)
    {
        for (int i = 0; i < rows; i++)
        {
            float* t = tile + (nint)i * tileStride;
            float* cr = c + i * ldc;
            for (int j = 0; j < cols; j++)
            {
                float v = beta == 0f ? t[j] * alpha : MathF.FusedMultiplyAdd(t[j], alpha, cr[j] * beta);
                if (bias != null) v += bias[j];
                cr[j] = v;
            }
        }
    }

    // ---------------------------------------------------------------------------------------------
    // Packing. A micro-panel holds MR rows of op(A) for kc values of k, stored k-major: [kc][MR].
    // A B micro-panel holds NR columns of op(B) for kc values of k, stored k-major: [kc][NR].
    // Rows/columns beyond the matrix edge are zero, so the kernels always run whole tiles.
    // ---------------------------------------------------------------------------------------------

    private static void PackA(in Problem p, int ic, int mc, int pc, int kc, float* dst, int mr)
    {
        nint lda = p.Lda;
        if (p.TransA)
        {
            // op(A)[i, q] = A[q*lda + i]: stored rows read in order, PackRows at a time, each panel getting one contiguous
            // run (as PackB's stored rows).
            for (int q0 = 0; q0 < kc; q0 += PackRows)
            {
                int q1 = Math.Min(kc, q0 + PackRows);
                for (int ir = 0; ir < mc; ir += mr)
                {
                    float* panel = dst + (nint)ir * kc;
                    int rows = Math.Min(mr, mc - ir);
                    for (int q = q0; q < q1; q++)
                        CopyPadded(panel + (nint)q * mr, p.A + (pc + q) * lda + ic + ir, rows, mr);
                }
            }
            return;
        }

        // op(A)[i, q] = A[i*lda + q]: a transpose. Full 12-row and 6-row panels go 4 k at a time through SSE 4×4
        // transposes (and, for rows 4–5 of a 6-row panel, pairwise unpacks); edges element by element.
        for (int ir = 0; ir < mc; ir += mr)
        {
            int rows = Math.Min(mr, mc - ir);
            float* panel = dst + (nint)ir * kc;
            float* src = p.A + (ic + ir) * lda + pc;
            int q = 0;
            if (rows == Mr512 && mr == Mr512 && Sse.IsSupported)
            {
                for (; q + 4 <= kc; q += 4)
                {
                    for (int g = 0; g < Mr512; g += 4)
                    {
                        float* s0 = src + g * lda + q;
                        Transpose4x4(
                            Sse.LoadVector128(s0), Sse.LoadVector128(s0 + lda),
                            Sse.LoadVector128(s0 + 2 * lda), Sse.LoadVector128(s0 + 3 * lda),
                            panel + (nint)q * Mr512 + g, Mr512);
                    }
                }
            }
            else if (rows == Mr6 && mr == Mr6 && Sse.IsSupported)
            {
                // Rows 0–3 through one 4×4 transpose; rows 4–5 interleaved in pairs, two floats per k.
                for (; q + 4 <= kc; q += 4)
                {
                    float* s0 = src + q;
                    float* d = panel + (nint)q * Mr6;
                    Transpose4x4(
                        Sse.LoadVector128(s0), Sse.LoadVector128(s0 + lda),
                        Sse.LoadVector128(s0 + 2 * lda), Sse.LoadVector128(s0 + 3 * lda), d, Mr6);
                    Vector128<float> r4 = Sse.LoadVector128(s0 + 4 * lda), r5 = Sse.LoadVector128(s0 + 5 * lda);
                    Vector128<float> low = Sse.UnpackLow(r4, r5), high = Sse.UnpackHigh(r4, r5);   // r4[0] r5[0] r4[1] r5[1] | [2], [3]
                    Sse.StoreLow(d + 4, low);
                    Sse.StoreHigh(d + Mr6 + 4, low);
                    Sse.StoreLow(d + 2 * Mr6 + 4, high);
                    Sse.StoreHigh(d + 3 * Mr6 + 4, high);
                }
            }
            for (; q < kc; q++)
            {
                float* d = panel + (nint)q * mr;
                for (int i = 0; i < rows; i++) d[i] = src[i * lda + q];
                for (int i = rows; i < mr; i++) d[i] = 0f;
            }
        }
    }

    private static void PackB(in Problem p, int pc, int kc, int jc, int nc, float* dst, int nr)
    {
        nint ldb = p.Ldb;
        if (!p.TransB)
        {
            // op(B)[q, j] = B[q*ldb + j]: stored rows are read in order, PackRows of them at a time, and each panel gets
            // those rows' NR values as one contiguous run. (Row by row, every store went to another panel, kc·NR floats
            // apart: a new page per 64 bytes written, and packing cost ~2 cycles per float, which GEMMs with few rows
            // (256 × 3072 × 768) could not hide.)
            for (int q0 = 0; q0 < kc; q0 += PackRows)
            {
                int q1 = Math.Min(kc, q0 + PackRows);
                for (int jr = 0; jr < nc; jr += nr)
                {
                    float* panel = dst + (nint)jr * kc;
                    int cols = Math.Min(nr, nc - jr);
                    for (int q = q0; q < q1; q++)
                        CopyPadded(panel + (nint)q * nr, p.B + (pc + q) * ldb + jc + jr, cols, nr);
                }
            }
            return;
        }

        // op(B)[q, j] = B[j*ldb + q]: a transpose, 4 stored rows × 4 k per SSE 4×4 transpose. Per panel,
        // 4 k at a time: the NR source rows touched (NR cache lines) and the 4 panel rows written stay in L1.
        for (int jr = 0; jr < nc; jr += nr)
        {
            int cols = Math.Min(nr, nc - jr);
            float* panel = dst + (nint)jr * kc;
            float* src = p.B + (jc + jr) * ldb + pc;
            int q = 0;
            if (cols == nr && nr % 4 == 0 && Sse.IsSupported)
            {
                for (; q + 4 <= kc; q += 4)
                {
                    for (int j = 0; j < nr; j += 4)
                    {
                        float* s0 = src + j * ldb + q;
                        Transpose4x4(
                            Sse.LoadVector128(s0), Sse.LoadVector128(s0 + ldb),
                            Sse.LoadVector128(s0 + 2 * ldb), Sse.LoadVector128(s0 + 3 * ldb),
                            panel + (nint)q * nr + j, nr);
                    }
                }
            }
            for (; q < kc; q++)
            {
                float* d = panel + (nint)q * nr;
                for (int j = 0; j < cols; j++) d[j] = src[j * ldb + q];
                for (int j = cols; j < nr; j++) d[j] = 0f;
            }
        }
    }

    /// <summary>
    /// Writes the transpose of the 4×4 block whose rows are r0..r3: column t of the block goes to
    /// dst + t·stride (4 floats).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Transpose4x4(Vector128<float> r0, Vector128<float> r1, Vector128<float> r2, Vector128<float> r3,
        float* dst, nint stride)
    {
        Vector128<float> t0 = Sse.UnpackLow(r0, r1);   // r0[0] r1[0] r0[1] r1[1]
        Vector128<float> t1 = Sse.UnpackLow(r2, r3);   // r2[0] r3[0] r2[1] r3[1]
        Vector128<float> t2 = Sse.UnpackHigh(r0, r1);  // r0[2] r1[2] r0[3] r1[3]
        Vector128<float> t3 = Sse.UnpackHigh(r2, r3);  // r2[2] r3[2] r2[3] r3[3]
        Sse.Store(dst, Sse.MoveLowToHigh(t0, t1));              // column 0
        Sse.Store(dst + stride, Sse.MoveHighToLow(t1, t0));     // column 1
        Sse.Store(dst + 2 * stride, Sse.MoveLowToHigh(t2, t3)); // column 2
        Sse.Store(dst + 3 * stride, Sse.MoveHighToLow(t3, t2)); // column 3
    }

    /// <summary>Copies <paramref name="count"/> floats and zero-fills up to <paramref name="width"/> (a multiple of 4).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void CopyPadded(float* dst, float* src, int count, int width)
    {
        int j = 0;
        for (; j + 8 <= count; j += 8) Vector256.Store(Vector256.Load(src + j), dst + j);
        for (; j + 4 <= count; j += 4) Vector128.Store(Vector128.Load(src + j), dst + j);
        for (; j < count; j++) dst[j] = src[j];
        for (; j < width; j++) dst[j] = 0f;
    }

    // ---------------------------------------------------------------------------------------------
    // Micro-kernels. For each k: load one NR-wide row of the B panel into registers, broadcast each of
    // the MR A values of that k, and FMA into the MR×NR accumulator tile held entirely in registers.
    // Then C tile = α·acc + β·C (+ bias); β = 0 never reads C.
    // ---------------------------------------------------------------------------------------------

    /// <summary>
    /// 12×32 tile on Vector512. Registers: acc rows r0..r11 × halves (lo = columns 0–15, hi = 16–31)
    /// = 24 zmm; b0/b1 = the B row (2 zmm); x = the broadcast A element (1 zmm).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel12x32(int kc, float* a, float* b, float* c, nint ldc, in TileOutput output)
    {
        Vector512<float> r0l = default, r0h = default, r1l = default, r1h = default, r2l = default, r2h = default;
        Vector512<float> r3l = default, r3h = default, r4l = default, r4h = default, r5l = default, r5h = default;
        Vector512<float> r6l = default, r6h = default, r7l = default, r7h = default, r8l = default, r8h = default;
        Vector512<float> r9l = default, r9h = default, r10l = default, r10h = default, r11l = default, r11h = default;

        // Start fetching the C tile (12 rows × 2 cache lines) now, so the store at the end does not wait.
        for (int r = 0; r < Mr512; r++)
        {
            Sse.Prefetch0(c + r * ldc);
            Sse.Prefetch0(c + r * ldc + 16);
        }

        for (int q = 0; q < kc; q++)
        {
            Vector512<float> b0 = Vector512.Load(b);
            Vector512<float> b1 = Vector512.Load(b + 16);
            Vector512<float> x;
            x = Vector512.Create(a[0]); r0l = Vector512.FusedMultiplyAdd(x, b0, r0l); r0h = Vector512.FusedMultiplyAdd(x, b1, r0h);
            x = Vector512.Create(a[1]); r1l = Vector512.FusedMultiplyAdd(x, b0, r1l); r1h = Vector512.FusedMultiplyAdd(x, b1, r1h);
            x = Vector512.Create(a[2]); r2l = Vector512.FusedMultiplyAdd(x, b0, r2l); r2h = Vector512.FusedMultiplyAdd(x, b1, r2h);
            x = Vector512.Create(a[3]); r3l = Vector512.FusedMultiplyAdd(x, b0, r3l); r3h = Vector512.FusedMultiplyAdd(x, b1, r3h);
            x = Vector512.Create(a[4]); r4l = Vector512.FusedMultiplyAdd(x, b0, r4l); r4h = Vector512.FusedMultiplyAdd(x, b1, r4h);
            x = Vector512.Create(a[5]); r5l = Vector512.FusedMultiplyAdd(x, b0, r5l); r5h = Vector512.FusedMultiplyAdd(x, b1, r5h);
            x = Vector512.Create(a[6]); r6l = Vector512.FusedMultiplyAdd(x, b0, r6l); r6h = Vector512.FusedMultiplyAdd(x, b1, r6h);
            x = Vector512.Create(a[7]); r7l = Vector512.FusedMultiplyAdd(x, b0, r7l); r7h = Vector512.FusedMultiplyAdd(x, b1, r7h);
            x = Vector512.Create(a[8]); r8l = Vector512.FusedMultiplyAdd(x, b0, r8l); r8h = Vector512.FusedMultiplyAdd(x, b1, r8h);
            x = Vector512.Create(a[9]); r9l = Vector512.FusedMultiplyAdd(x, b0, r9l); r9h = Vector512.FusedMultiplyAdd(x, b1, r9h);
            x = Vector512.Create(a[10]); r10l = Vector512.FusedMultiplyAdd(x, b0, r10l); r10h = Vector512.FusedMultiplyAdd(x, b1, r10h);
            x = Vector512.Create(a[11]); r11l = Vector512.FusedMultiplyAdd(x, b0, r11l); r11h = Vector512.FusedMultiplyAdd(x, b1, r11h);
            a += Mr512;
            b += Nr512;
        }

        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r0l, r0h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r1l, r1h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r2l, r2h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r3l, r3h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r4l, r4h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r5l, r5h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r6l, r6h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r7l, r7h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r8l, r8h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r9l, r9h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r10l, r10h, output); c += ldc;
        StoreRow<RegisterTile512, Vector512<float>, Vector512Lanes>(c, r11l, r11h, output);
    }

    /// <summary>
    /// 6 rows × 2 vectors tile (6×16 on Vector256, 6×8 on Vector128). Registers: acc rows r0..r5 × halves = 12;
    /// b0/b1 = the B row; x = the broadcast A element: 15 of the 16 ymm/xmm registers. Written over the raw vector type
    /// through <see cref="IRegisterTile{TVector}"/> (see there why), so each FMA accumulates in place (checked in the generated
    /// code: 2 loads, 6 broadcasts from memory and 12 vfmadd231ps per k step).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Kernel6xTwoVectors<TTile, TVector, TLanes>(int kc, float* a, float* b, float* c, nint ldc, in TileOutput output)
        where TTile : IRegisterTile<TVector, TLanes> where TVector : unmanaged where TLanes : unmanaged, IFloatVector<TLanes>
    {
        int w = TTile.Count;
        TVector r0l = TTile.Zero, r0h = r0l, r1l = r0l, r1h = r0l, r2l = r0l, r2h = r0l;
        TVector r3l = r0l, r3h = r0l, r4l = r0l, r4h = r0l, r5l = r0l, r5h = r0l;

        // Start fetching the C tile (6 rows of 2 vectors) now, so the store at the end does not wait.
        if (Sse.IsSupported)
            for (int r = 0; r < Mr6; r++)
            {
                Sse.Prefetch0(c + r * ldc);
                Sse.Prefetch0(c + r * ldc + 2 * w - 1);
            }

        // Two k steps per iteration: the loop's own 5 instructions then cost half as much against the 20 of a step, which
        // matters on 4-wide cores (Haswell to Skylake), where 25 instructions per 6 FMA cycles would be the front end's limit.
        int q = 0;
        for (; q + 2 <= kc; q += 2)
        {
            Step<TTile, TVector>(a, b, w, ref r0l, ref r0h, ref r1l, ref r1h, ref r2l, ref r2h, ref r3l, ref r3h, ref r4l, ref r4h, ref r5l, ref r5h);
            Step<TTile, TVector>(a + Mr6, b + 2 * w, w, ref r0l, ref r0h, ref r1l, ref r1h, ref r2l, ref r2h, ref r3l, ref r3h, ref r4l, ref r4h, ref r5l, ref r5h);
            a += 2 * Mr6;
            b += 4 * w;
        }
        if (q < kc)
            Step<TTile, TVector>(a, b, w, ref r0l, ref r0h, ref r1l, ref r1h, ref r2l, ref r2h, ref r3l, ref r3h, ref r4l, ref r4h, ref r5l, ref r5h);

        StoreRow<TTile, TVector, TLanes>(c, r0l, r0h, output); c += ldc;
        StoreRow<TTile, TVector, TLanes>(c, r1l, r1h, output); c += ldc;
        StoreRow<TTile, TVector, TLanes>(c, r2l, r2h, output); c += ldc;
        StoreRow<TTile, TVector, TLanes>(c, r3l, r3h, output); c += ldc;
        StoreRow<TTile, TVector, TLanes>(c, r4l, r4h, output); c += ldc;
        StoreRow<TTile, TVector, TLanes>(c, r5l, r5h, output);
    }

    /// <summary>One k step of the 6 × 2-vector tile: the B row's two vectors times each of the six A values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Step<TTile, TVector>(float* a, float* b, int w,
        ref TVector r0l, ref TVector r0h, ref TVector r1l, ref TVector r1h, ref TVector r2l, ref TVector r2h,
        ref TVector r3l, ref TVector r3h, ref TVector r4l, ref TVector r4h, ref TVector r5l, ref TVector r5h)
        where TTile : IRegisterTile<TVector> where TVector : unmanaged
    {
        TVector b0 = TTile.Load(b);
        TVector b1 = TTile.Load(b + w);
        TVector x;
        x = TTile.Broadcast(a[0]); r0l = TTile.MultiplyAdd(x, b0, r0l); r0h = TTile.MultiplyAdd(x, b1, r0h);
        x = TTile.Broadcast(a[1]); r1l = TTile.MultiplyAdd(x, b0, r1l); r1h = TTile.MultiplyAdd(x, b1, r1h);
        x = TTile.Broadcast(a[2]); r2l = TTile.MultiplyAdd(x, b0, r2l); r2h = TTile.MultiplyAdd(x, b1, r2h);
        x = TTile.Broadcast(a[3]); r3l = TTile.MultiplyAdd(x, b0, r3l); r3h = TTile.MultiplyAdd(x, b1, r3h);
        x = TTile.Broadcast(a[4]); r4l = TTile.MultiplyAdd(x, b0, r4l); r4h = TTile.MultiplyAdd(x, b1, r4h);
        x = TTile.Broadcast(a[5]); r5l = TTile.MultiplyAdd(x, b0, r5l); r5h = TTile.MultiplyAdd(x, b1, r5h);
    }

    /// <summary>One row of two vectors: c = α·acc + β·c (+ bias); β = 0 never reads C. Runs once per tile, after the k loop, so it
    /// is written over the lanes' readable operators (<see cref="IRegisterTile{TVector, TLanes}.Lanes"/>).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow<TTile, TVector, TLanes>(float* c, TVector accLo, TVector accHi, in TileOutput output)
        where TTile : IRegisterTile<TVector, TLanes> where TVector : unmanaged where TLanes : unmanaged, IFloatVector<TLanes> =>
        StoreRow(c, TTile.Lanes(accLo), TTile.Lanes(accHi), output);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void StoreRow<TLanes>(float* c, TLanes lo, TLanes hi, in TileOutput output) where TLanes : unmanaged, IFloatVector<TLanes>
    {
        int w = TLanes.Count;
        float alpha = output.Alpha, beta = output.Beta;
        float* bias = output.Bias;
        TLanes va = TLanes.Create(alpha);
        if (beta == 0f)
        {
            lo *= va;
            hi *= va;
        }
        else
        {
            TLanes vb = TLanes.Create(beta);
            lo = TLanes.MultiplyAdd(lo, va, TLanes.Load(c) * vb);
            hi = TLanes.MultiplyAdd(hi, va, TLanes.Load(c + w) * vb);
        }
        if (bias != null)
        {
            lo += TLanes.Load(bias);
            hi += TLanes.Load(bias + w);
        }
        lo.Store(c);
        hi.Store(c + w);
    }

    /// <summary>
    /// One thread's packing buffers: 64-byte aligned native memory, allocated on the thread's first GEMM
    /// and reused by every later call on that thread; freed when the thread (and so this object) dies.
    /// </summary>
    private sealed class PackingBuffers
    {
        [ThreadStatic] private static PackingBuffers? current;

        /// <summary>Packed A block: up to Mc × Kc floats.</summary>
        public readonly float* A;
        /// <summary>Packed B block: up to Nc × Kc floats.</summary>
        public readonly float* B;
        /// <summary>Scratch for one edge tile (largest MR × NR).</summary>
        public readonly float* Tile;

        private PackingBuffers()
        {
            A = Allocate((nuint)Mc * Kc);
            B = Allocate((nuint)Nc * Kc);
            Tile = Allocate((nuint)Mr512 * Nr512);
        }

        public static PackingBuffers ForCurrentThread() => current ??= new PackingBuffers();

        private static float* Allocate(nuint floats) => (float*)NativeMemory.AlignedAlloc(floats * sizeof(float), 64);

        ~PackingBuffers()
        {
            NativeMemory.AlignedFree(A);
            NativeMemory.AlignedFree(B);
            NativeMemory.AlignedFree(Tile);
        }
    }
}
