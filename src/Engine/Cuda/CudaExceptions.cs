namespace DistAlign.Engine.Cuda;

/// <summary>
/// A CUDA driver call returned an error. The message names the status and the function:
/// "CUDA_ERROR_OUT_OF_MEMORY (2) in cuMemAlloc_v2".
/// </summary>
public sealed class CudaException(int status, string function, string? detail = null)
    : Exception(StatusNames.Format(StatusNames.Cuda(status), status, function, detail))
{
    public int Status { get; } = status;
    public string StatusName { get; } = StatusNames.Cuda(status);
    public string Function { get; } = function;
}

/// <summary>A cuBLAS or cuBLASLt call returned an error: "CUBLAS_STATUS_NOT_SUPPORTED (15) in cublasGemmEx".</summary>
public sealed class CublasException(int status, string function, string? detail = null)
    : Exception(StatusNames.Format(StatusNames.Cublas(status), status, function, detail))
{
    public int Status { get; } = status;
    public string StatusName { get; } = StatusNames.Cublas(status);
    public string Function { get; } = function;
}

/// <summary>An NVRTC call failed; for a failed compile <see cref="Log"/> holds the compiler's log (and the message includes it).</summary>
public sealed class NvrtcException(int status, string function, string? log = null)
    : Exception(StatusNames.Format(StatusNames.Nvrtc(status), status, function, Explain(status, log)))
{
    public int Status { get; } = status;
    public string StatusName { get; } = StatusNames.Nvrtc(status);
    public string Function { get; } = function;
    /// <summary>The program log (compile errors and warnings); null when the call was not a compile.</summary>
    public string? Log { get; } = log;

    private static string? Explain(int status, string? log)
    {
        string? hint = status == 7
            ? "NVRTC could not load its builtins library (libnvrtc-builtins.so.MAJOR.MINOR, next to libnvrtc); install the matching CUDA NVRTC package"
            : null;
        if (string.IsNullOrWhiteSpace(log)) return hint;
        return hint is null ? "compile log:\n" + log.TrimEnd() : hint + "; compile log:\n" + log.TrimEnd();
    }
}

/// <summary>
/// Status names for CUresult, cublasStatus_t and nvrtcResult, as in the CUDA headers (cuda.h, cublas_api.h,
/// nvrtc.h). Kept as tables so a message names the status even when the library that could name it
/// (cuGetErrorName) is the thing that failed. Unknown codes print as e.g. "CUDA_ERROR_UNKNOWN_CODE_1234".
/// </summary>
internal static class StatusNames
{
    private static readonly Dictionary<int, string> CudaNames = new()
    {
        [0] = "CUDA_SUCCESS", [1] = "CUDA_ERROR_INVALID_VALUE", [2] = "CUDA_ERROR_OUT_OF_MEMORY",
        [3] = "CUDA_ERROR_NOT_INITIALIZED", [4] = "CUDA_ERROR_DEINITIALIZED", [5] = "CUDA_ERROR_PROFILER_DISABLED",
        [34] = "CUDA_ERROR_STUB_LIBRARY", [46] = "CUDA_ERROR_DEVICE_UNAVAILABLE",
        [100] = "CUDA_ERROR_NO_DEVICE", [101] = "CUDA_ERROR_INVALID_DEVICE", [102] = "CUDA_ERROR_DEVICE_NOT_LICENSED",
        [200] = "CUDA_ERROR_INVALID_IMAGE", [201] = "CUDA_ERROR_INVALID_CONTEXT", [202] = "CUDA_ERROR_CONTEXT_ALREADY_CURRENT",
        [205] = "CUDA_ERROR_MAP_FAILED", [206] = "CUDA_ERROR_UNMAP_FAILED", [207] = "CUDA_ERROR_ARRAY_IS_MAPPED",
        [208] = "CUDA_ERROR_ALREADY_MAPPED", [209] = "CUDA_ERROR_NO_BINARY_FOR_GPU", [210] = "CUDA_ERROR_ALREADY_ACQUIRED",
        [211] = "CUDA_ERROR_NOT_MAPPED", [214] = "CUDA_ERROR_ECC_UNCORRECTABLE", [215] = "CUDA_ERROR_UNSUPPORTED_LIMIT",
        [216] = "CUDA_ERROR_CONTEXT_ALREADY_IN_USE", [218] = "CUDA_ERROR_INVALID_PTX", [222] = "CUDA_ERROR_UNSUPPORTED_PTX_VERSION",
        [300] = "CUDA_ERROR_INVALID_SOURCE", [301] = "CUDA_ERROR_FILE_NOT_FOUND", [400] = "CUDA_ERROR_INVALID_HANDLE",
        [401] = "CUDA_ERROR_ILLEGAL_STATE", [500] = "CUDA_ERROR_NOT_FOUND", [600] = "CUDA_ERROR_NOT_READY",
        [700] = "CUDA_ERROR_ILLEGAL_ADDRESS", [701] = "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES", [702] = "CUDA_ERROR_LAUNCH_TIMEOUT",
        [709] = "CUDA_ERROR_CONTEXT_IS_DESTROYED", [710] = "CUDA_ERROR_ASSERT", [712] = "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED",
        [714] = "CUDA_ERROR_HARDWARE_STACK_ERROR", [715] = "CUDA_ERROR_ILLEGAL_INSTRUCTION", [716] = "CUDA_ERROR_MISALIGNED_ADDRESS",
        [719] = "CUDA_ERROR_LAUNCH_FAILED", [800] = "CUDA_ERROR_NOT_PERMITTED", [801] = "CUDA_ERROR_NOT_SUPPORTED",
        [802] = "CUDA_ERROR_SYSTEM_NOT_READY", [803] = "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH",
        [804] = "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE", [999] = "CUDA_ERROR_UNKNOWN",
    };

    private static readonly Dictionary<int, string> CublasNames = new()
    {
        [0] = "CUBLAS_STATUS_SUCCESS", [1] = "CUBLAS_STATUS_NOT_INITIALIZED", [3] = "CUBLAS_STATUS_ALLOC_FAILED",
        [7] = "CUBLAS_STATUS_INVALID_VALUE", [8] = "CUBLAS_STATUS_ARCH_MISMATCH", [11] = "CUBLAS_STATUS_MAPPING_ERROR",
        [13] = "CUBLAS_STATUS_EXECUTION_FAILED", [14] = "CUBLAS_STATUS_INTERNAL_ERROR", [15] = "CUBLAS_STATUS_NOT_SUPPORTED",
        [16] = "CUBLAS_STATUS_LICENSE_ERROR",
    };

    private static readonly Dictionary<int, string> NvrtcNames = new()
    {
        [0] = "NVRTC_SUCCESS", [1] = "NVRTC_ERROR_OUT_OF_MEMORY", [2] = "NVRTC_ERROR_PROGRAM_CREATION_FAILURE",
        [3] = "NVRTC_ERROR_INVALID_INPUT", [4] = "NVRTC_ERROR_INVALID_PROGRAM", [5] = "NVRTC_ERROR_INVALID_OPTION",
        [6] = "NVRTC_ERROR_COMPILATION", [7] = "NVRTC_ERROR_BUILTIN_OPERATION_FAILURE",
        [8] = "NVRTC_ERROR_NO_NAME_EXPRESSIONS_AFTER_COMPILATION", [9] = "NVRTC_ERROR_NO_LOWERED_NAMES_BEFORE_COMPILATION",
        [10] = "NVRTC_ERROR_NAME_EXPRESSION_NOT_VALID", [11] = "NVRTC_ERROR_INTERNAL_ERROR",
    };

    /// <summary>The CUresult name, e.g. 2 → "CUDA_ERROR_OUT_OF_MEMORY".</summary>
    public static string Cuda(int status) => CudaNames.GetValueOrDefault(status) ?? $"CUDA_ERROR_UNKNOWN_CODE_{status}";
    /// <summary>The cublasStatus_t name, e.g. 15 → "CUBLAS_STATUS_NOT_SUPPORTED".</summary>
    public static string Cublas(int status) => CublasNames.GetValueOrDefault(status) ?? $"CUBLAS_STATUS_UNKNOWN_CODE_{status}";
    /// <summary>The nvrtcResult name, e.g. 6 → "NVRTC_ERROR_COMPILATION".</summary>
    public static string Nvrtc(int status) => NvrtcNames.GetValueOrDefault(status) ?? $"NVRTC_ERROR_UNKNOWN_CODE_{status}";

    internal static string Format(string name, int status, string function, string? detail) =>
        $"{name} ({status}) in {function}" + (string.IsNullOrEmpty(detail) ? "" : ": " + detail);
}
