using System.Runtime.InteropServices;

namespace DistAlign.Engine.Cuda;

/// <summary>
/// Source-generated bindings of the CUDA driver API (cuda.h). Every function returns a CUresult (0 = success).
/// Symbol names are the ABI names that drivers for CUDA 12 and 13 export (the <c>_v2</c> suffixes are the
/// 64-bit-size versions the headers have mapped to since CUDA 4). No context is created here: events, modules
/// and launches use the context current on the calling thread (ILGPU's accelerator's), which also avoids
/// cuCtxCreate, whose signature changed in CUDA 13 (cuCtxCreate_v4 with CUctxCreateParams).
/// </summary>
internal static unsafe partial class CudaDriverNative
{
    private const string Lib = CudaLibraries.DriverName;

    [LibraryImport(Lib, EntryPoint = "cuInit")] internal static partial int cuInit(uint flags);
    [LibraryImport(Lib, EntryPoint = "cuDriverGetVersion")] internal static partial int cuDriverGetVersion(int* version);
    [LibraryImport(Lib, EntryPoint = "cuGetErrorName")] internal static partial int cuGetErrorName(int status, byte** name);
    [LibraryImport(Lib, EntryPoint = "cuGetErrorString")] internal static partial int cuGetErrorString(int status, byte** text);

    [LibraryImport(Lib, EntryPoint = "cuDeviceGetCount")] internal static partial int cuDeviceGetCount(int* count);
    [LibraryImport(Lib, EntryPoint = "cuDeviceGet")] internal static partial int cuDeviceGet(int* device, int ordinal);
    [LibraryImport(Lib, EntryPoint = "cuDeviceGetName")] internal static partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Lib, EntryPoint = "cuDeviceGetAttribute")] internal static partial int cuDeviceGetAttribute(int* value, int attribute, int device);
    [LibraryImport(Lib, EntryPoint = "cuDeviceTotalMem_v2")] internal static partial int cuDeviceTotalMem_v2(nuint* bytes, int device);

    [LibraryImport(Lib, EntryPoint = "cuCtxGetCurrent")] internal static partial int cuCtxGetCurrent(nint* context);
    [LibraryImport(Lib, EntryPoint = "cuCtxPushCurrent_v2")] internal static partial int cuCtxPushCurrent_v2(nint context);
    [LibraryImport(Lib, EntryPoint = "cuCtxPopCurrent_v2")] internal static partial int cuCtxPopCurrent_v2(nint* context);
    [LibraryImport(Lib, EntryPoint = "cuCtxSynchronize")] internal static partial int cuCtxSynchronize();

    [LibraryImport(Lib, EntryPoint = "cuMemGetInfo_v2")] internal static partial int cuMemGetInfo_v2(nuint* free, nuint* total);
    [LibraryImport(Lib, EntryPoint = "cuMemcpyDtoDAsync_v2")] internal static partial int cuMemcpyDtoDAsync_v2(ulong destination, ulong source, nuint bytes, nint stream);
    [LibraryImport(Lib, EntryPoint = "cuMemsetD32Async")] internal static partial int cuMemsetD32Async(ulong destination, uint value, nuint count, nint stream);


    [LibraryImport(Lib, EntryPoint = "cuEventCreate")] internal static partial int cuEventCreate(nint* e, uint flags);
    [LibraryImport(Lib, EntryPoint = "cuEventDestroy_v2")] internal static partial int cuEventDestroy_v2(nint e);
    [LibraryImport(Lib, EntryPoint = "cuEventRecord")] internal static partial int cuEventRecord(nint e, nint stream);
    [LibraryImport(Lib, EntryPoint = "cuEventSynchronize")] internal static partial int cuEventSynchronize(nint e);
    [LibraryImport(Lib, EntryPoint = "cuEventElapsedTime")] internal static partial int cuEventElapsedTime(float* milliseconds, nint start, nint end);

    [LibraryImport(Lib, EntryPoint = "cuModuleLoadData")] internal static partial int cuModuleLoadData(nint* module, void* image);
    [LibraryImport(Lib, EntryPoint = "cuModuleUnload")] internal static partial int cuModuleUnload(nint module);
    [LibraryImport(Lib, EntryPoint = "cuModuleGetFunction")] internal static partial int cuModuleGetFunction(nint* function, nint module, byte* name);
    [LibraryImport(Lib, EntryPoint = "cuLaunchKernel")]
    internal static partial int cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ, uint blockX, uint blockY, uint blockZ,
                                               uint sharedMemoryBytes, nint stream, void** parameters, void** extra);

    internal const int AttributeMultiprocessorCount = 16;
    internal const int AttributeComputeCapabilityMajor = 75;
    internal const int AttributeComputeCapabilityMinor = 76;
}
