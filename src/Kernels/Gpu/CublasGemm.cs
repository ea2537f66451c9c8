using DistAlign.Engine.Cuda;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Kernels.Gpu;

/// <summary>How a cuBLAS GEMM multiplies fp32 operands (accumulation is fp32 in every case).</summary>
public enum GemmPrecision
{
    /// <summary>CUBLAS_COMPUTE_32F with the default math mode: full fp32 products (no tensor-core rounding).</summary>
    Float32,
    /// <summary>CUBLAS_COMPUTE_32F_FAST_TF32: inputs rounded to TF32 (10-bit mantissa) on tensor cores.</summary>
    Tf32,
    /// <summary>CUBLAS_COMPUTE_32F_FAST_16BF: inputs rounded to bf16 (7-bit mantissa) on tensor cores.</summary>
    BFloat16,
}

/// <summary>
/// <see cref="IGemm"/> through cuBLAS on ILGPU's CUDA stream and ILGPU's buffers (their device addresses come
/// from <c>ArrayView.LoadEffectiveAddressAsPtr()</c>; the stream is the accelerator's default
/// <see cref="CudaStream"/>, so GEMMs and ILGPU kernels are ordered on one stream with no extra
/// synchronisation). No bias: cublasGemmEx / cublasGemmStridedBatchedEx. With a bias: cuBLASLt with the BIAS
/// epilogue; <see cref="MultiplyBiasGelu"/> adds the GELU epilogue. <c>MultiplyBFloat16</c> takes
/// operands already stored as bf16 (from <see cref="GpuBFloat16"/>) for mixed precision.
/// The row-major → column-major mapping is <see cref="CublasGemmCall"/>.
/// Unlike <see cref="GpuTiledGemm"/>, results are not guaranteed bit-identical across GPUs or cuBLAS versions
/// (cuBLAS picks algorithms by heuristics), but are on one GPU, one library and one shape.
/// </summary>
public sealed class CublasGemm : IGemm, IBFloat16Gemm, IDisposable
{
    /// <summary>cuBLASLt workspace (32 MiB is what NVIDIA recommends for Hopper).</summary>
    public const long WorkspaceBytes = 32L << 20;

    private readonly CudaAccelerator accelerator;
    private readonly CublasHandle handle;
    private readonly CublasLtHandle lt;
    private readonly MemoryBuffer1D<byte, Stride1D.Dense> workspace;

    public CublasGemm(CudaAccelerator accelerator, GemmPrecision precision = GemmPrecision.Float32)
    {
        this.accelerator = accelerator;
        Precision = precision;
        accelerator.Bind();   // cuBLAS handles belong to the context current at creation
        handle = Cublas.Create();
        Cublas.SetStream(handle, Stream);
        Cublas.SetMathMode(handle, precision == GemmPrecision.Float32 ? CublasMathMode.DisallowReducedPrecisionReduction : CublasMathMode.Default);
        lt = CublasLt.Create();
        workspace = accelerator.Allocate1D<byte>(WorkspaceBytes);
    }

    public GemmPrecision Precision { get; }

    /// <summary>True for <see cref="GemmPrecision.BFloat16"/> (CUBLAS_COMPUTE_32F_FAST_16BF rounds the fp32 inputs to bf16),
    /// so ops may hand <c>MultiplyBFloat16</c> bf16 copies instead (the LM head does).</summary>
    public bool RoundsOperandsToBFloat16 => Precision == GemmPrecision.BFloat16;

    private nint Stream => ((CudaStream)accelerator.DefaultStream).StreamPtr;

    private CublasComputeType Compute => Precision switch
    {
        GemmPrecision.Tf32 => CublasComputeType.Float32FastTf32,
        GemmPrecision.BFloat16 => CublasComputeType.Float32FastBFloat16,
        _ => CublasComputeType.Float32,
    };

    private static ulong Address<T>(ArrayView<T> view) where T : unmanaged => view.Length == 0 ? 0UL : (ulong)view.LoadEffectiveAddressAsPtr();

    public void Multiply(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                         ArrayView<float> a, int lda, ArrayView<float> b, int ldb,
                         float beta, ArrayView<float> c, int ldc, ArrayView<float> bias = default)
    {
        if (bias.Length != 0) GpuLaunch.CheckLength(bias.Length, n, nameof(bias), "empty or [n]");
        if (!Validate(transposeA, transposeB, m, n, k, a.Length, lda, 0, b.Length, ldb, 0, c.Length, ldc, 0, 1)) return;
        var call = CublasGemmCall.FromRowMajor(transposeA, transposeB, m, n, k, lda, ldb, ldc);
        if (bias.Length == 0)
            Cublas.GemmEx(handle, call.TransA, call.TransB, call.M, call.N, call.K, alpha, Address(b), CudaDataType.Float32, call.Lda,
                          Address(a), CudaDataType.Float32, call.Ldb, beta, Address(c), CudaDataType.Float32, call.Ldc, Compute);
        else
            Lt(call, alpha, Address(b), Address(a), beta, Address(c), CudaDataType.Float32, CublasLtEpilogue.Bias, Address(bias));
    }

    public void MultiplyStridedBatched(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                                       ArrayView<float> a, int lda, long strideA, ArrayView<float> b, int ldb, long strideB,
                                       float beta, ArrayView<float> c, int ldc, long strideC, int batchCount)
    {
        if (!Validate(transposeA, transposeB, m, n, k, a.Length, lda, strideA, b.Length, ldb, strideB, c.Length, ldc, strideC, batchCount)) return;
        var call = CublasGemmCall.FromRowMajor(transposeA, transposeB, m, n, k, lda, ldb, ldc);
        Cublas.GemmStridedBatchedEx(handle, call.TransA, call.TransB, call.M, call.N, call.K, alpha,
                                    Address(b), CudaDataType.Float32, call.Lda, strideB, Address(a), CudaDataType.Float32, call.Ldb, strideA,
                                    beta, Address(c), CudaDataType.Float32, call.Ldc, strideC, batchCount, Compute);
    }

    /// <summary>Row-major C = gelu(α·op(A)·op(B) + β·C + bias) in one cuBLASLt call (bias: n values, required).</summary>
    public void MultiplyBiasGelu(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                                 ArrayView<float> a, int lda, ArrayView<float> b, int ldb,
                                 float beta, ArrayView<float> c, int ldc, ArrayView<float> bias)
    {
        GpuLaunch.CheckLength(bias.Length, n, nameof(bias), "[n]");
        if (!Validate(transposeA, transposeB, m, n, k, a.Length, lda, 0, b.Length, ldb, 0, c.Length, ldc, 0, 1)) return;
        Lt(CublasGemmCall.FromRowMajor(transposeA, transposeB, m, n, k, lda, ldb, ldc), alpha, Address(b), Address(a), beta, Address(c),
           CudaDataType.Float32, CublasLtEpilogue.GeluBias, Address(bias));
    }

    /// <summary>
    /// Row-major C (fp32) = α·op(A)·op(B) + β·C with A and B stored as bf16 bits: tensor-core products,
    /// fp32 accumulation (CUBLAS_COMPUTE_32F). The mixed-precision GEMM. β is passed through: β = 1 accumulates into C.
    /// </summary>
    public void MultiplyBFloat16(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                                 ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb,
                                 float beta, ArrayView<float> c, int ldc) =>
        MultiplyBFloat16(transposeA, transposeB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, default);

    /// <summary>
    /// <see cref="MultiplyBFloat16(bool, bool, int, int, int, float, ArrayView{ushort}, int, ArrayView{ushort}, int, float, ArrayView{float}, int)"/>
    /// plus a bias (empty, or n fp32 values added to every row): then one cuBLASLt call with the BIAS epilogue
    /// (bf16 A and B, fp32 C, D and bias, CUBLAS_COMPUTE_32F).
    /// </summary>
    public void MultiplyBFloat16(bool transposeA, bool transposeB, int m, int n, int k, float alpha,
                                 ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb,
                                 float beta, ArrayView<float> c, int ldc, ArrayView<float> bias)
    {
        if (bias.Length != 0) GpuLaunch.CheckLength(bias.Length, n, nameof(bias), "empty or [n]");
        if (!Validate(transposeA, transposeB, m, n, k, a.Length, lda, 0, b.Length, ldb, 0, c.Length, ldc, 0, 1)) return;
        var call = CublasGemmCall.FromRowMajor(transposeA, transposeB, m, n, k, lda, ldb, ldc);
        if (bias.Length != 0)
        {
            CublasLt.Matmul(lt, call.TransA, call.TransB, call.M, call.N, call.K, alpha, Address(b), call.Lda, Address(a), call.Ldb, beta,
                            Address(c), call.Ldc, CudaDataType.BFloat16, CublasComputeType.Float32, CublasLtEpilogue.Bias, Address(bias),
                            Address<byte>(workspace.View), WorkspaceBytes, Stream);
            return;
        }
        Cublas.GemmEx(handle, call.TransA, call.TransB, call.M, call.N, call.K, alpha, Address(b), CudaDataType.BFloat16, call.Lda,
                      Address(a), CudaDataType.BFloat16, call.Ldb, beta, Address(c), CudaDataType.Float32, call.Ldc, CublasComputeType.Float32);
    }

    /// <summary>
    /// Row-major output[m×n] = residual + A·B + bias with A and B stored as bf16 (fp32 residual, bias, output and
    /// accumulation): one cuBLASLt call with the BIAS epilogue, C = residual (β = 1) and D = output, so a
    /// transformer's residual connection costs no pass of its own. <paramref name="output"/> may not overlap the inputs
    /// except by being <paramref name="residual"/> itself.
    /// </summary>
    public void MultiplyBFloat16AddResidual(int m, int n, int k, ArrayView<ushort> a, int lda, ArrayView<ushort> b, int ldb,
                                            ArrayView<float> bias, ArrayView<float> residual, ArrayView<float> output)
    {
        GpuLaunch.CheckLength(bias.Length, n, nameof(bias), "[n]");
        GpuLaunch.CheckLength(output.Length, residual.Length, nameof(output), "same length as residual");
        if (!Validate(false, false, m, n, k, a.Length, lda, 0, b.Length, ldb, 0, residual.Length, n, 0, 1)) return;
        var call = CublasGemmCall.FromRowMajor(false, false, m, n, k, lda, ldb, n);
        CublasLt.Matmul(lt, call.TransA, call.TransB, call.M, call.N, call.K, 1f, Address(b), call.Lda, Address(a), call.Ldb, 1f,
                        Address(residual), call.Ldc, CudaDataType.BFloat16, CublasComputeType.Float32, CublasLtEpilogue.Bias, Address(bias),
                        Address<byte>(workspace.View), WorkspaceBytes, Stream, d: Address(output));
    }

    private void Lt(CublasGemmCall call, float alpha, ulong first, ulong second, float beta, ulong c, CudaDataType inputType,
                    CublasLtEpilogue epilogue, ulong bias) =>
        CublasLt.Matmul(lt, call.TransA, call.TransB, call.M, call.N, call.K, alpha, first, call.Lda, second, call.Ldb, beta,
                        c, call.Ldc, inputType, Compute, epilogue, bias, Address<byte>(workspace.View), WorkspaceBytes, Stream);

    /// <summary>The checks of <see cref="GpuTiledGemm"/>; false when there is nothing to compute (m, n or batch 0).</summary>
    private static bool Validate(bool ta, bool tb, int m, int n, int k, long aLength, int lda, long strideA, long bLength, int ldb, long strideB,
                                 long cLength, int ldc, long strideC, int batchCount)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(m);
        ArgumentOutOfRangeException.ThrowIfNegative(n);
        ArgumentOutOfRangeException.ThrowIfNegative(k);
        ArgumentOutOfRangeException.ThrowIfNegative(batchCount);
        if (m == 0 || n == 0 || batchCount == 0) return false;
        GpuTiledGemm.CheckMatrix(aLength, "a", lda, ta ? k : m, ta ? m : k, strideA, batchCount);
        GpuTiledGemm.CheckMatrix(bLength, "b", ldb, tb ? n : k, tb ? k : n, strideB, batchCount);
        GpuTiledGemm.CheckMatrix(cLength, "c", ldc, m, n, strideC, batchCount);
        return true;
    }

    public void Dispose()
    {
        workspace.Dispose();
        lt.Dispose();
        handle.Dispose();
    }
}
