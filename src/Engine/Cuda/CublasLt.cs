using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace DistAlign.Engine.Cuda;

/// <summary>cublasLtEpilogue_t values the engine uses.</summary>
public enum CublasLtEpilogue : uint
{
    /// <summary>CUBLASLT_EPILOGUE_DEFAULT: D = α·op(A)·op(B) + β·C.</summary>
    Default = 1,
    /// <summary>CUBLASLT_EPILOGUE_BIAS: adds a bias vector with one value per row of (column-major) D.</summary>
    Bias = 4,
    /// <summary>CUBLASLT_EPILOGUE_GELU: GELU (tanh approximation) of the result.</summary>
    Gelu = 32,
    /// <summary>CUBLASLT_EPILOGUE_GELU_BIAS: bias, then GELU.</summary>
    GeluBias = 36,
}

/// <summary>A cublasLtHandle_t.</summary>
public sealed class CublasLtHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CublasLtHandle() : base(ownsHandle: true) { }
    internal void Set(nint h) => SetHandle(h);
    protected override bool ReleaseHandle() => CublasLtNative.cublasLtDestroy(handle) == 0;
}

/// <summary>cublasLtMatmulAlgo_t: 8 opaque 64-bit words.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CublasLtMatmulAlgo
{
    public fixed ulong Data[8];
}

/// <summary>cublasLtMatmulHeuristicResult_t.</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CublasLtHeuristicResult
{
    public CublasLtMatmulAlgo Algo;
    public nuint WorkspaceSize;
    public int State;
    public float WavesCount;
    public fixed int Reserved[4];
}

/// <summary>Source-generated bindings of the cuBLASLt API (cublasLt.h) that the engine uses.</summary>
internal static unsafe partial class CublasLtNative
{
    private const string Lib = CudaLibraries.CublasLtName;

    [LibraryImport(Lib, EntryPoint = "cublasLtCreate")] internal static partial int cublasLtCreate(nint* handle);
    [LibraryImport(Lib, EntryPoint = "cublasLtDestroy")] internal static partial int cublasLtDestroy(nint handle);
    [LibraryImport(Lib, EntryPoint = "cublasLtGetVersion")] internal static partial nuint cublasLtGetVersion();
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulDescCreate")] internal static partial int cublasLtMatmulDescCreate(nint* desc, int computeType, int scaleType);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulDescDestroy")] internal static partial int cublasLtMatmulDescDestroy(nint desc);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulDescSetAttribute")] internal static partial int cublasLtMatmulDescSetAttribute(nint desc, int attribute, void* buffer, nuint bytes);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatrixLayoutCreate")] internal static partial int cublasLtMatrixLayoutCreate(nint* layout, int type, ulong rows, ulong cols, long ld);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatrixLayoutDestroy")] internal static partial int cublasLtMatrixLayoutDestroy(nint layout);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulPreferenceCreate")] internal static partial int cublasLtMatmulPreferenceCreate(nint* preference);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulPreferenceDestroy")] internal static partial int cublasLtMatmulPreferenceDestroy(nint preference);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulPreferenceSetAttribute")] internal static partial int cublasLtMatmulPreferenceSetAttribute(nint preference, int attribute, void* buffer, nuint bytes);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmulAlgoGetHeuristic")]
    internal static partial int cublasLtMatmulAlgoGetHeuristic(nint handle, nint desc, nint aDesc, nint bDesc, nint cDesc, nint dDesc,
        nint preference, int requested, CublasLtHeuristicResult* results, int* returned);
    [LibraryImport(Lib, EntryPoint = "cublasLtMatmul")]
    internal static partial int cublasLtMatmul(nint handle, nint desc, void* alpha, ulong a, nint aDesc, ulong b, nint bDesc,
        void* beta, ulong c, nint cDesc, ulong d, nint dDesc, CublasLtMatmulAlgo* algo, ulong workspace, nuint workspaceBytes, nint stream);

    // cublasLtMatmulDescAttributes_t, cublasLtMatmulPreferenceAttributes_t
    internal const int DescTransA = 3, DescTransB = 4, DescEpilogue = 7, DescBiasPointer = 8, DescBiasDataType = 26;
    internal const int PreferenceMaxWorkspaceBytes = 1;
}

/// <summary>
/// One cuBLASLt matmul with an epilogue, column-major like cuBLAS:
/// <c>D = epilogue(α·op(A)·op(B) + β·C + bias)</c> with D = C in place, fp32 scale and accumulation.
/// The descriptors are created per call and destroyed at once (a few µs; fine next to GEMMs that take
/// tens of µs or more).
/// </summary>
public static unsafe class CublasLt
{
    private static void Check(int status, string function)
    {
        if (status != 0) throw new CublasException(status, function);
    }

    /// <summary>cublasLtCreate.</summary>
    public static CublasLtHandle Create()
    {
        CudaLibraries.EnsureRegistered();
        CudaLibraries.CublasLt.EnsureAvailable();
        nint h;
        Check(CublasLtNative.cublasLtCreate(&h), "cublasLtCreate");
        var handle = new CublasLtHandle();
        handle.Set(h);
        return handle;
    }

    /// <summary>
    /// Column-major D[m×n] = epilogue(α·op(A)·op(B) + β·C + bias[m]); A, B of <paramref name="inputType"/>,
    /// C, D and bias fp32; D is C unless <paramref name="d"/> is given (then C is only read: a residual added on the way
    /// out, with the same layout). <paramref name="bias"/> = 0 for epilogues without bias. <paramref name="workspace"/>
    /// may be 0 (then only algorithms that need none are considered).
    /// </summary>
    public static void Matmul(CublasLtHandle handle, int transa, int transb, int m, int n, int k, float alpha,
                              ulong a, int lda, ulong b, int ldb, float beta, ulong c, int ldc, CudaDataType inputType,
                              CublasComputeType compute, CublasLtEpilogue epilogue, ulong bias, ulong workspace, long workspaceBytes, nint stream,
                              ulong d = 0)
    {
        if (d == 0) d = c;
        nint desc = 0, aDesc = 0, bDesc = 0, cDesc = 0, preference = 0;
        try
        {
            Check(CublasLtNative.cublasLtMatmulDescCreate(&desc, (int)compute, (int)CudaDataType.Float32), "cublasLtMatmulDescCreate");
            SetDesc(desc, CublasLtNative.DescTransA, transa);
            SetDesc(desc, CublasLtNative.DescTransB, transb);
            uint epi = (uint)epilogue;
            Check(CublasLtNative.cublasLtMatmulDescSetAttribute(desc, CublasLtNative.DescEpilogue, &epi, sizeof(uint)), "cublasLtMatmulDescSetAttribute(EPILOGUE)");
            if (epilogue is CublasLtEpilogue.Bias or CublasLtEpilogue.GeluBias)
            {
                ulong biasPointer = bias;
                Check(CublasLtNative.cublasLtMatmulDescSetAttribute(desc, CublasLtNative.DescBiasPointer, &biasPointer, sizeof(ulong)), "cublasLtMatmulDescSetAttribute(BIAS_POINTER)");
                int biasType = (int)CudaDataType.Float32;
                Check(CublasLtNative.cublasLtMatmulDescSetAttribute(desc, CublasLtNative.DescBiasDataType, &biasType, sizeof(int)), "cublasLtMatmulDescSetAttribute(BIAS_DATA_TYPE)");
            }
            // Stored shapes: op(A) is m×k, so A is m×k (N) or k×m (T) as stored, column-major.
            Check(CublasLtNative.cublasLtMatrixLayoutCreate(&aDesc, (int)inputType, (ulong)(transa == Cublas.OpN ? m : k), (ulong)(transa == Cublas.OpN ? k : m), lda), "cublasLtMatrixLayoutCreate(A)");
            Check(CublasLtNative.cublasLtMatrixLayoutCreate(&bDesc, (int)inputType, (ulong)(transb == Cublas.OpN ? k : n), (ulong)(transb == Cublas.OpN ? n : k), ldb), "cublasLtMatrixLayoutCreate(B)");
            Check(CublasLtNative.cublasLtMatrixLayoutCreate(&cDesc, (int)CudaDataType.Float32, (ulong)m, (ulong)n, ldc), "cublasLtMatrixLayoutCreate(C)");
            Check(CublasLtNative.cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate");
            ulong maxWorkspace = (ulong)workspaceBytes;
            Check(CublasLtNative.cublasLtMatmulPreferenceSetAttribute(preference, CublasLtNative.PreferenceMaxWorkspaceBytes, &maxWorkspace, sizeof(ulong)), "cublasLtMatmulPreferenceSetAttribute");
            CublasLtHeuristicResult result;
            int returned;
            Check(CublasLtNative.cublasLtMatmulAlgoGetHeuristic(handle.DangerousGetHandle(), desc, aDesc, bDesc, cDesc, cDesc, preference, 1, &result, &returned), "cublasLtMatmulAlgoGetHeuristic");
            if (returned == 0) throw new CublasException(15, "cublasLtMatmulAlgoGetHeuristic", $"no algorithm for {m}×{n}×{k} with epilogue {epilogue}");
            Check(CublasLtNative.cublasLtMatmul(handle.DangerousGetHandle(), desc, &alpha, a, aDesc, b, bDesc, &beta, c, cDesc, d, cDesc,
                  &result.Algo, workspace, (nuint)workspaceBytes, stream), "cublasLtMatmul");
        }
        finally
        {
            if (preference != 0) CublasLtNative.cublasLtMatmulPreferenceDestroy(preference);
            if (cDesc != 0) CublasLtNative.cublasLtMatrixLayoutDestroy(cDesc);
            if (bDesc != 0) CublasLtNative.cublasLtMatrixLayoutDestroy(bDesc);
            if (aDesc != 0) CublasLtNative.cublasLtMatrixLayoutDestroy(aDesc);
            if (desc != 0) CublasLtNative.cublasLtMatmulDescDestroy(desc);
        }
    }

    private static void SetDesc(nint desc, int attribute, int value) =>
        Check(CublasLtNative.cublasLtMatmulDescSetAttribute(desc, attribute, &value, sizeof(int)), $"cublasLtMatmulDescSetAttribute({attribute})");
}
