using ILGPU;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// A GEMM that also multiplies operands stored as bf16 bits (from <see cref="GpuBFloat16"/>), with fp32 C and fp32
/// accumulation, row-major with the conventions of <see cref="IGemm"/>: C[m×n] (fp32) = α·op(A)·op(B) + β·C
/// (β = 0: C not read; β = 1: accumulate). Ops that can keep bf16 copies of their operands (the LM head:
/// <see cref="GpuSequenceLogProbs"/>) use it when <see cref="RoundsOperandsToBFloat16"/> says the fp32 GEMM would
/// round its inputs to bf16 anyway: the precision stays that of bf16 products with fp32 sums, and the operands take
/// half the bytes and reach cuBLAS's native bf16 kernels.
/// <see cref="CublasGemm"/> implements it (cublasGemmEx with CUDA_R_16BF inputs).
/// </summary>
public interface IBFloat16Gemm
{
    /// <summary>True when this GEMM's fp32 <see cref="IGemm.Multiply"/> rounds its inputs to bf16 (tensor cores):
    /// callers may then hand it bf16 copies instead (half the bytes, and cuBLAS's fast bf16 kernels).</summary>
    bool RoundsOperandsToBFloat16 { get; }

    /// <summary>Row-major C (fp32) = α·op(A)·op(B) + β·C with A and B as bf16 bits; fp32 accumulation.</summary>
    void MultiplyBFloat16(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                          ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb,
                          float beta, ArrayView<float> c, int ldc);
}
