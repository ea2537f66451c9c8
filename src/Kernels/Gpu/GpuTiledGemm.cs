using ILGPU;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>All GEMM dimensions, passed to the kernel as one argument.</summary>
internal struct GemmShape
{
    public int M, N, K, Lda, Ldb, Ldc, TransposeA, TransposeB, HasBias;
    public float Alpha, Beta;
    public long StrideA, StrideB, StrideC;
}

/// <summary>
/// A shared-memory tiled GEMM implementing <see cref="IGemm"/>: each group computes a Tile×Tile block of C,
/// staging Tile×Tile blocks of op(A) and op(B) through shared memory, one C element per thread. Every
/// element is summed over k in ascending order by one thread, so results are deterministic. Tile = 16 where
/// the accelerator allows 256-thread groups, smaller otherwise (power of two). Portable and simple, for
/// tests and as a fallback; the CUDA path is cuBLAS.
/// </summary>
public sealed class GpuTiledGemm : IGemm
{
    /// <summary>Largest tile edge (the shared-memory tiles are MaxTile² floats).</summary>
    public const int MaxTile = 16;

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmShape> kernel;
    private readonly Accelerator accelerator;
    private readonly MemoryBuffer1D<float, Stride1D.Dense> dummy;

    public GpuTiledGemm(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        dummy = accelerator.Allocate1D<float>(1);   // stands in for an absent bias
        int limit = Math.Min(MaxTile * MaxTile, accelerator.MaxNumThreadsPerGroup);
        Tile = 1;
        while ((Tile * 2) * (Tile * 2) <= limit && Tile * 2 <= MaxTile) Tile *= 2;
        kernel = accelerator.LoadKernel<ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, GemmShape>(Kernel);
    }

    /// <summary>Tile edge used on this accelerator.</summary>
    public int Tile { get; }

    public void Multiply(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                         ArrayView<float> a, int lda, ArrayView<float> b, int ldb,
                         float beta, ArrayView<float> c, int ldc, ArrayView<float> bias = default)
    {
        if (bias.Length != 0) GpuLaunch.CheckLength(bias.Length, n, nameof(bias), "empty or [n]");
        Launch(transposeA, transposeB, m, n, k, alpha, a, lda, 0, b, ldb, 0, beta, c, ldc, 0, 1, bias);
    }

    public void MultiplyStridedBatched(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                                       ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
                                       float beta, ArrayView<float> c, int ldc, long strideC, int batchCount) =>
        Launch(transposeA, transposeB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batchCount, default);

    private void Launch(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                        ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
                        float beta, ArrayView<float> c, int ldc, long strideC, int batchCount, ArrayView<float> bias)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ArgumentOutOfRangeException.ThrowIfNegative(batchCount);
        if (m == 0 || n == 0 || batchCount == 0) return;
        CheckMatrix(a.Length, nameof(a), lda, transposeA ? k : m, transposeA ? m : k, strideA, batchCount);
        CheckMatrix(b.Length, nameof(b), ldb, transposeB ? n : k, transposeB ? k : n, strideB, batchCount);
        CheckMatrix(c.Length, nameof(c), ldc, m, n, strideC, batchCount);
        var shape = new GemmShape
        {
            M = m, N = n, K = k, Lda = lda, Ldb = ldb, Ldc = ldc,
            TransposeA = transposeA ? 1 : 0, TransposeB = transposeB ? 1 : 0, HasBias = bias.Length > 0 ? 1 : 0,
            Alpha = alpha, Beta = beta, StrideA = strideA, StrideB = strideB, StrideC = strideC,
        };
        // k = 0 still scales C by β; the kernel handles it (no tiles to load). Empty A/B views get a dummy.
        var config = new KernelConfig(new Index3D((n + Tile - 1) / Tile, (m + Tile - 1) / Tile, batchCount), new Index3D(Tile, Tile, 1));
        kernel(accelerator.DefaultStream, config, a.Length > 0 ? a : dummy.View, b.Length > 0 ? b : dummy.View, c,
                bias.Length > 0 ? bias : dummy.View, shape);
    }

    internal static void CheckMatrix(long length, string name, int ld, int rows, int cols, long stride, int batchCount)
    {
        if (rows == 0 || cols == 0) return;
        if (ld < cols) throw new ArgumentException($"Leading dimension {ld} of {name} is shorter than its rows ({cols}).", name);
        if (batchCount > 1 && stride < 0) throw new ArgumentException($"Stride of {name} is negative.", name);
        long needed = (long)(batchCount - 1) * stride + (long)(rows - 1) * ld + cols;
        if (length < needed) throw new ArgumentException($"{name} has {length} elements; the {rows}×{cols} matrices (ld {ld}) need {needed}.", name);
    }

    [GpuKernel(true)]
    internal static void Kernel(ArrayView<float> a, ArrayView<float> b, ArrayView<float> c, ArrayView<float> bias, GemmShape s)
    {
        var tileA = SharedMemory.Allocate<float>(MaxTile * MaxTile);
        var tileB = SharedMemory.Allocate<float>(MaxTile * MaxTile);
        int tile = Group.DimX;
        int tx = Group.IdxX, ty = Group.IdxY;
        int row = Grid.IdxY * tile + ty, col = Grid.IdxX * tile + tx;
        long baseA = Grid.IdxZ * s.StrideA, baseB = Grid.IdxZ * s.StrideB, baseC = Grid.IdxZ * s.StrideC;
        float acc = 0f;
        for (int k0 = 0; k0 < s.K; k0 += tile)
        {
            // op(A)[row, k0 + tx] and op(B)[k0 + ty, col], zero outside the matrices.
            int ka = k0 + tx, kb = k0 + ty;
            float va = 0f, vb = 0f;
            if (row < s.M && ka < s.K)
                va = a[baseA + (s.TransposeA != 0 ? (long)ka * s.Lda + row : (long)row * s.Lda + ka)];
            if (col < s.N && kb < s.K)
                vb = b[baseB + (s.TransposeB != 0 ? (long)col * s.Ldb + kb : (long)kb * s.Ldb + col)];
            tileA[ty * MaxTile + tx] = va;
            tileB[ty * MaxTile + tx] = vb;
            Group.Barrier();
            for (int e = 0; e < tile; e++) acc += tileA[ty * MaxTile + e] * tileB[e * MaxTile + tx];
            Group.Barrier();
        }
        if (row < s.M && col < s.N)
        {
            long at = baseC + (long)row * s.Ldc + col;
            float value = s.Alpha * acc;
            if (s.Beta != 0f) value += s.Beta * c[at];
            if (s.HasBias != 0) value += bias[col];
            c[at] = value;
        }
    }
}
