using DistAlign.Engine.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// The cuBLAS (column-major) arguments for one row-major <see cref="IGemm"/> product, as a pure function so the
/// mapping is tested without a GPU.
/// <para>
/// A row-major matrix X (r×c, row stride ld) occupies memory exactly like the column-major matrix Xᵀ (c×r,
/// leading dimension ld). So the row-major C[m×n] = op(A)·op(B) is, read column-major, Cᵀ[n×m] =
/// op(B)ᵀ·op(A)ᵀ: cuBLAS's first operand is our B and its second our A, m and n swap, k stays, and each
/// operand keeps its own transpose flag (our B's buffer read column-major is Bᵀ, so op(B)ᵀ needs a transpose
/// exactly when op(B) = Bᵀ) and its own leading dimension. C's leading dimension is unchanged, and so are
/// batch strides (which travel with their operands). A bias over our columns is a bias over cuBLAS's rows,
/// which is what cuBLASLt's bias epilogue adds.
/// </para>
/// </summary>
/// <param name="TransA">cuBLAS transa (for the first operand, our B): <see cref="Cublas.OpN"/> or <see cref="Cublas.OpT"/>.</param>
/// <param name="TransB">cuBLAS transb (for the second operand, our A).</param>
/// <param name="M">cuBLAS m = our n.</param>
/// <param name="N">cuBLAS n = our m.</param>
/// <param name="K">k.</param>
/// <param name="Lda">Leading dimension of cuBLAS's A (our ldb).</param>
/// <param name="Ldb">Leading dimension of cuBLAS's B (our lda).</param>
/// <param name="Ldc">Leading dimension of C (our ldc).</param>
public readonly record struct CublasGemmCall(int TransA, int TransB, int M, int N, int K, int Lda, int Ldb, int Ldc)
{
    /// <summary>cuBLAS's A is our B (and cuBLAS's B our A): pass pointers and strides in that order.</summary>
    public const bool OperandsSwapped = true;

    /// <summary>The column-major call computing the row-major <c>C = op(A)·op(B)</c> of the <see cref="IGemm"/> contract.</summary>
    public static CublasGemmCall FromRowMajor(bool transposeA, bool transposeB, int m, int n, int k, int lda, int ldb, int ldc) =>
        new(TransA: transposeB ? Cublas.OpT : Cublas.OpN, TransB: transposeA ? Cublas.OpT : Cublas.OpN,
            M: n, N: m, K: k, Lda: ldb, Ldb: lda, Ldc: ldc);
}
