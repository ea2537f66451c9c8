using System.Runtime.InteropServices;
using System.Text;
using static DistAlign.Engine.Cuda.CudaDriverNative;

namespace DistAlign.Engine.Cuda;

/// <summary>What the driver reports about one device.</summary>
public sealed record CudaDeviceInfo(int Ordinal, string Name, int ComputeMajor, int ComputeMinor, int Multiprocessors, long TotalMemoryBytes)
{
    /// <summary>"sm_90" for compute capability 9.0.</summary>
    public string Architecture => $"sm_{ComputeMajor}{ComputeMinor}";
    public override string ToString() => $"{Name} ({Architecture}, {TotalMemoryBytes / (1024.0 * 1024 * 1024):F0} GiB, {Multiprocessors} SMs)";
}

/// <summary>Whether CUDA can be used here: the devices, or why not.</summary>
public sealed record CudaProbe(bool IsUsable, string? Reason, int DriverVersion, IReadOnlyList<CudaDeviceInfo> Devices)
{
    /// <summary>"13.0" from 13000.</summary>
    public string DriverVersionText => DriverVersion == 0 ? "none" : $"{DriverVersion / 1000}.{DriverVersion % 1000 / 10}";
}

/// <summary>
/// The CUDA driver API with errors turned into <see cref="CudaException"/> (status name and function in
/// the message) and objects owned by SafeHandles. The driver is loaded on first use;
/// <see cref="CudaUnavailableException"/> when it cannot be.
/// </summary>
public static unsafe class CudaDriver
{
    private static readonly Lazy<int> Initialized = new(() =>
    {
        CudaLibraries.EnsureRegistered();
        CudaLibraries.Driver.EnsureAvailable();
        Check(cuInit(0), "cuInit");
        return 1;
    }, LazyThreadSafetyMode.ExecutionAndPublication);

    /// <summary>Throws <see cref="CudaException"/> for a non-zero CUresult.</summary>
    public static void Check(int status, string function)
    {
        if (status != 0) throw new CudaException(status, function);
    }

    /// <summary>Loads the driver and calls cuInit once. Throws <see cref="CudaUnavailableException"/> or <see cref="CudaException"/>.</summary>
    public static void Initialize() => _ = Initialized.Value;

    /// <summary>
    /// Never throws: whether a usable CUDA device exists, with the reason when not ("no CUDA driver found:
    /// tried libcuda.so.1, libcuda.so", "CUDA_ERROR_NO_DEVICE (100) in cuInit", …) and the devices when so.
    /// </summary>
    public static CudaProbe Probe()
    {
        try
        {
            Initialize();
            int version, count;
            Check(cuDriverGetVersion(&version), "cuDriverGetVersion");
            Check(cuDeviceGetCount(&count), "cuDeviceGetCount");
            var devices = new List<CudaDeviceInfo>();
            for (int i = 0; i < count; i++) devices.Add(Device(i));
            return new CudaProbe(count > 0, count > 0 ? null : "the CUDA driver reports 0 devices", version, devices);
        }
        catch (CudaUnavailableException e) { return new CudaProbe(false, e.Message, 0, []); }
        catch (CudaException e) { return new CudaProbe(false, e.Message, 0, []); }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            return new CudaProbe(false, $"the CUDA driver ({CudaLibraries.Driver.LoadedFrom}) lacks a required function: {e.Message}", 0, []);
        }
    }

    /// <summary>Name, compute capability, SM count and memory of device <paramref name="ordinal"/>.</summary>
    public static CudaDeviceInfo Device(int ordinal)
    {
        Initialize();
        int device, major, minor, sms;
        nuint bytes;
        Check(cuDeviceGet(&device, ordinal), "cuDeviceGet");
        byte* name = stackalloc byte[256];
        Check(cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        Check(cuDeviceGetAttribute(&major, AttributeComputeCapabilityMajor, device), "cuDeviceGetAttribute");
        Check(cuDeviceGetAttribute(&minor, AttributeComputeCapabilityMinor, device), "cuDeviceGetAttribute");
        Check(cuDeviceGetAttribute(&sms, AttributeMultiprocessorCount, device), "cuDeviceGetAttribute");
        Check(cuDeviceTotalMem_v2(&bytes, device), "cuDeviceTotalMem_v2");
        return new CudaDeviceInfo(ordinal, Marshal.PtrToStringUTF8((nint)name) ?? "?", major, minor, sms, (long)bytes);
    }

    /// <summary>The context current on this thread (0 if none).</summary>
    public static nint CurrentContext()
    {
        Initialize();
        nint context;
        Check(cuCtxGetCurrent(&context), "cuCtxGetCurrent");
        return context;
    }

    /// <summary>Waits for all work in the current context.</summary>
    public static void Synchronize() => Check(cuCtxSynchronize(), "cuCtxSynchronize");

    /// <summary>(free, total) device memory of the current context's device.</summary>
    public static (long Free, long Total) MemoryInfo()
    {
        nuint free, total;
        Check(cuMemGetInfo_v2(&free, &total), "cuMemGetInfo_v2");
        return ((long)free, (long)total);
    }

    /// <summary>Asynchronous device → device copy on <paramref name="stream"/>.</summary>
    public static void CopyDeviceAsync(ulong destination, ulong source, long bytes, nint stream) =>
        Check(cuMemcpyDtoDAsync_v2(destination, source, (nuint)bytes, stream), "cuMemcpyDtoDAsync_v2");

    /// <summary>Fills <paramref name="count"/> 32-bit words with <paramref name="value"/>.</summary>
    public static void Fill32Async(ulong destination, uint value, long count, nint stream) =>
        Check(cuMemsetD32Async(destination, value, (nuint)count, stream), "cuMemsetD32Async");

    /// <summary>A timing event (CU_EVENT_DEFAULT).</summary>
    public static CudaEventHandle CreateEvent()
    {
        nint e;
        Check(cuEventCreate(&e, 0), "cuEventCreate");
        var handle = new CudaEventHandle { Context = CurrentContext() };
        handle.Set(e);
        return handle;
    }

    public static void Record(CudaEventHandle e, nint stream) => Check(cuEventRecord(e.DangerousGetHandle(), stream), "cuEventRecord");

    /// <summary>Waits for <paramref name="end"/> and returns the milliseconds between the two events.</summary>
    public static float ElapsedMilliseconds(CudaEventHandle start, CudaEventHandle end)
    {
        Check(cuEventSynchronize(end.DangerousGetHandle()), "cuEventSynchronize");
        float ms;
        Check(cuEventElapsedTime(&ms, start.DangerousGetHandle(), end.DangerousGetHandle()), "cuEventElapsedTime");
        return ms;
    }

    /// <summary>Loads a module from NUL-terminated PTX (or a cubin image) in the current context.</summary>
    public static CudaModuleHandle LoadModule(ReadOnlySpan<byte> image)
    {
        byte[] terminated = image.Length > 0 && image[^1] == 0 ? image.ToArray() : [.. image, 0];
        nint module;
        fixed (byte* p = terminated) Check(cuModuleLoadData(&module, p), "cuModuleLoadData");
        var handle = new CudaModuleHandle { Context = CurrentContext() };
        handle.Set(module);
        return handle;
    }

    /// <summary>The CUfunction <paramref name="name"/> (an extern "C" kernel) of a loaded module.</summary>
    public static nint GetFunction(CudaModuleHandle module, string name)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(name + "\0");
        nint function;
        fixed (byte* p = utf8) Check(cuModuleGetFunction(&function, module.DangerousGetHandle(), p), $"cuModuleGetFunction({name})");
        return function;
    }

    /// <summary>cuLaunchKernel; <paramref name="arguments"/> holds one pointer per kernel parameter (to its value).</summary>
    public static void Launch(nint function, (uint X, uint Y, uint Z) grid, (uint X, uint Y, uint Z) block, uint sharedBytes,
                              nint stream, void** arguments) =>
        Check(cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, stream, arguments, null),
              "cuLaunchKernel");

    /// <summary>The driver's own name for a status (e.g. for codes newer than <see cref="StatusNames"/>); null when unknown.</summary>
    public static string? DriverErrorName(int status)
    {
        Initialize();
        byte* name;
        return cuGetErrorName(status, &name) == 0 ? Marshal.PtrToStringUTF8((nint)name) : null;
    }
}
