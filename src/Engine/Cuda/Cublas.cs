using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace DistAlign.Engine.Cuda;

/// <summary>cudaDataType_t values used for GEMM operands (library_types.h).</summary>
public enum CudaDataType
{
    Float32 = 0,   // CUDA_R_32F
    Float16 = 2,   // CUDA_R_16F
    BFloat16 = 14, // CUDA_R_16BF
}

/// <summary>cublasComputeType_t values with fp32 accumulation (cublas_api.h).</summary>
public enum CublasComputeType
{
    /// <summary>CUBLAS_COMPUTE_32F: fp32 inputs multiplied in fp32 (or bf16/fp16 inputs with fp32 accumulation).</summary>
    Float32 = 68,
    /// <summary>CUBLAS_COMPUTE_32F_PEDANTIC: fp32 with no reduced-precision shortcuts.</summary>
    Float32Pedantic = 69,
    /// <summary>CUBLAS_COMPUTE_32F_FAST_16BF: fp32 inputs rounded to bf16 for tensor cores, fp32 accumulation.</summary>
    Float32FastBFloat16 = 75,
    /// <summary>CUBLAS_COMPUTE_32F_FAST_TF32: fp32 inputs rounded to TF32 for tensor cores, fp32 accumulation.</summary>
    Float32FastTf32 = 77,
}

/// <summary>cublasMath_t.</summary>
[Flags]
public enum CublasMathMode
{
    Default = 0,
    Tf32TensorOp = 3,
    DisallowReducedPrecisionReduction = 16,
}

/// <summary>A cublasHandle_t (cublasDestroy_v2 on release).</summary>
public sealed class CublasHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CublasHandle() : base(ownsHandle: true) { }
    internal void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CublasNative.cublasDestroy_v2(handle) == 0;
}

/// <summary>Source-generated bindings of the cuBLAS v2 API (cublas_api.h) that the engine uses.</summary>
internal static unsafe partial class CublasNative
{
    private const string Lib = CudaLibraries.CublasName;

    [LibraryImport(Lib, EntryPoint = "cublasCreate_v2")] internal static partial int cublasCreate_v2(nint* handle);
    [LibraryImport(Lib, EntryPoint = "cublasDestroy_v2")] internal static partial int cublasDestroy_v2(nint handle);
    [LibraryImport(Lib, EntryPoint = "cublasGetVersion_v2")] internal static partial int cublasGetVersion_v2(nint handle, int* version);
    [LibraryImport(Lib, EntryPoint = "cublasGetProperty")] internal static partial int cublasGetProperty(int type, int* value);
    [LibraryImport(Lib, EntryPoint = "cublasSetStream_v2")] internal static partial int cublasSetStream_v2(nint handle, nint stream);
    [LibraryImport(Lib, EntryPoint = "cublasSetMathMode")] internal static partial int cublasSetMathMode(nint handle, int mode);
    [LibraryImport(Lib, EntryPoint = "cublasSetWorkspace_v2")] internal static partial int cublasSetWorkspace_v2(nint handle, ulong workspace, nuint bytes);

    [LibraryImport(Lib, EntryPoint = "cublasGemmEx")]
    internal static partial int cublasGemmEx(nint handle, int transa, int transb, int m, int n, int k, void* alpha,
        ulong a, int aType, int lda, ulong b, int bType, int ldb, void* beta, ulong c, int cType, int ldc,
        int computeType, int algo);

    [LibraryImport(Lib, EntryPoint = "cublasGemmStridedBatchedEx")]
    internal static partial int cublasGemmStridedBatchedEx(nint handle, int transa, int transb, int m, int n, int k, void* alpha,
        ulong a, int aType, int lda, long strideA, ulong b, int bType, int ldb, long strideB, void* beta,
        ulong c, int cType, int ldc, long strideC, int batchCount, int computeType, int algo);
}

/// <summary>
/// cuBLAS calls with errors as <see cref="CublasException"/>. Everything here is column-major, as cuBLAS
/// is; the row-major mapping lives with the GEMM that uses it (<c>CublasGemmCall</c> in Kernels).
/// </summary>
public static unsafe class Cublas
{
    /// <summary>CUBLAS_OP_N / CUBLAS_OP_T.</summary>
    public const int OpN = 0, OpT = 1;
    /// <summary>CUBLAS_GEMM_DEFAULT (heuristic algorithm choice; tensor cores when the compute type allows).</summary>
    public const int GemmDefault = -1;

    public static void Check(int status, string function)
    {
        if (status != 0) throw new CublasException(status, function);
    }

    private static void EnsureLoaded()
    {
        CudaLibraries.EnsureRegistered();
        CudaLibraries.Cublas.EnsureAvailable();
    }

    /// <summary>The library's version from MAJOR/MINOR/PATCH properties (no handle, no GPU needed), e.g. 130101 for 13.1.1.</summary>
    public static int Version()
    {
        EnsureLoaded();
        int major, minor, patch;
        Check(CublasNative.cublasGetProperty(0, &major), "cublasGetProperty");
        Check(CublasNative.cublasGetProperty(1, &minor), "cublasGetProperty");
        Check(CublasNative.cublasGetProperty(2, &patch), "cublasGetProperty");
        return major * 10000 + minor * 100 + patch;
    }

    /// <summary>cublasCreate_v2 in the current CUDA context.</summary>
    public static CublasHandle Create()
    {
        EnsureLoaded();
        nint h;
        Check(CublasNative.cublasCreate_v2(&h), "cublasCreate_v2");
        var handle = new CublasHandle();
        handle.Set(h);
        return handle;
    }

    public static void SetStream(CublasHandle handle, nint stream) =>
        Check(CublasNative.cublasSetStream_v2(handle.DangerousGetHandle(), stream), "cublasSetStream_v2");

    public static void SetMathMode(CublasHandle handle, CublasMathMode mode) =>
        Check(CublasNative.cublasSetMathMode(handle.DangerousGetHandle(), (int)mode), "cublasSetMathMode");

    /// <summary>Column-major C = α·op(A)·op(B) + β·C with fp32 α, β and the given operand types.</summary>
    public static void GemmEx(CublasHandle handle, int transa, int transb, int m, int n, int k, float alpha,
                              ulong a, CudaDataType aType, int lda, ulong b, CudaDataType bType, int ldb, float beta,
                              ulong c, CudaDataType cType, int ldc, CublasComputeType compute)
    {
        Check(CublasNative.cublasGemmEx(handle.DangerousGetHandle(), transa, transb, m, n, k, &alpha, a, (int)aType, lda,
              b, (int)bType, ldb, &beta, c, (int)cType, ldc, (int)compute, GemmDefault), "cublasGemmEx");
    }

    /// <summary>batchCount column-major GEMMs; matrix i of A/B/C starts at i·stride elements.</summary>
    public static void GemmStridedBatchedEx(CublasHandle handle, int transa, int transb, int m, int n, int k, float alpha,
                                            ulong a, CudaDataType aType, int lda, long strideA, ulong b, CudaDataType bType, int ldb, long strideB,
                                            float beta, ulong c, CudaDataType cType, int ldc, long strideC, int batchCount, CublasComputeType compute)
    {
        Check(CublasNative.cublasGemmStridedBatchedEx(handle.DangerousGetHandle(), transa, transb, m, n, k, &alpha,
              a, (int)aType, lda, strideA, b, (int)bType, ldb, strideB, &beta, c, (int)cType, ldc, strideC, batchCount,
              (int)compute, GemmDefault), "cublasGemmStridedBatchedEx");
    }
}
