using ILGPU;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// The GPU GEMM contract, row-major like the CPU GEMM:
/// <c>C[m×n] = α·op(A)[m×k]·op(B)[k×n] + β·C (+ bias[n] broadcast over rows)</c>, op(X) = Xᵀ when its
/// transpose flag is set. Leading dimensions are row strides (elements) of the matrices as stored:
/// A is m×k (lda ≥ k) or, transposed, k×m (lda ≥ m); likewise B; C is m×n (ldc ≥ n).
/// β = 0 means C is not read (NaN/garbage in C does not propagate), as in BLAS.
/// <para>
/// The CUDA implementation will be cuBLAS (<c>cublasGemmEx</c>/<c>cublasGemmStridedBatchedEx</c> with
/// CUBLAS_COMPUTE_32F) through our own P/Invoke, on ILGPU's stream and ILGPU's buffers. cuBLAS is
/// column-major; a row-major C = op(A)·op(B) is computed as the column-major Cᵀ = op(B)ᵀ·op(A)ᵀ, i.e. by
/// swapping the operands (B first, then A), swapping m and n, and keeping each operand's transpose flag and
/// leading dimension. The bias is added by a separate broadcast (or cuBLASLt's bias epilogue).
/// <see cref="GpuTiledGemm"/> is the portable shared-memory implementation (tests, fallback).
/// </para>
/// Transpose flags are bools (not the CPU <c>Transpose</c> enum) to keep this layer independent of the CPU GEMM.
/// </summary>
public interface IGemm
{
    /// <summary>C = α·op(A)·op(B) + β·C (+ bias). <paramref name="bias"/>: an empty view or n values.</summary>
    void Multiply(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                  ArrayView<float> a, int lda, ArrayView<float> b, int ldb,
                  float beta, ArrayView<float> c, int ldc, ArrayView<float> bias = default);

    /// <summary>
    /// batchCount independent products: matrix i of A, B, C starts at i·strideA, i·strideB, i·strideC
    /// (cuBLAS's strided-batched layout; attention's QKᵀ and A·V per (batch, head)). No bias.
    /// </summary>
    void MultiplyStridedBatched(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                                ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
                                float beta, ArrayView<float> c, int ldc, long strideC, int batchCount);
}
