using Microsoft.Win32.SafeHandles;
using static DistAlign.Engine.Cuda.CudaDriverNative;

namespace DistAlign.Engine.Cuda;

/// <summary>
/// A driver object that must be destroyed with its context current. Release pushes the context, destroys,
/// and pops it, so a handle finalised on another thread (or the GC's) is still freed correctly. Release never
/// throws; a failure returns false (the runtime then reports a releaseHandleFailed MDA in debug tooling).
/// </summary>
public abstract class CudaContextBoundHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    protected CudaContextBoundHandle() : base(ownsHandle: true) { }

    /// <summary>The CUcontext the object belongs to.</summary>
    public nint Context { get; internal set; }

    protected abstract int Destroy(nint handle);

    protected sealed override unsafe bool ReleaseHandle()
    {
        if (cuCtxPushCurrent_v2(Context) != 0) return false;
        int status = Destroy(handle);
        nint popped;
        cuCtxPopCurrent_v2(&popped);
        return status == 0;
    }
}

/// <summary>A retained primary context of one device (released with cuDevicePrimaryCtxRelease_v2).</summary>
public sealed class CudaPrimaryContextHandle : SafeHandleZeroOrMinusOneIsInvalid
{
    public CudaPrimaryContextHandle() : base(ownsHandle: true) { }
    /// <summary>The device ordinal whose primary context this is.</summary>
    public int Device { get; internal set; }
    internal void Set(nint context) => SetHandle(context);
    protected override bool ReleaseHandle() => cuDevicePrimaryCtxRelease_v2(Device) == 0;
}

/// <summary>A CUstream.</summary>
public sealed class CudaStreamHandle : CudaContextBoundHandle
{
    internal void Set(nint stream) => SetHandle(stream);
    protected override int Destroy(nint h) => cuStreamDestroy_v2(h);
}

/// <summary>A CUevent.</summary>
public sealed class CudaEventHandle : CudaContextBoundHandle
{
    internal void Set(nint e) => SetHandle(e);
    protected override int Destroy(nint h) => cuEventDestroy_v2(h);
}

/// <summary>A loaded CUmodule (PTX or cubin from NVRTC).</summary>
public sealed class CudaModuleHandle : CudaContextBoundHandle
{
    internal void Set(nint module) => SetHandle(module);
    protected override int Destroy(nint h) => cuModuleUnload(h);
}

/// <summary>Device memory from cuMemAlloc_v2; <see cref="Pointer"/> is the CUdeviceptr.</summary>
public sealed class CudaDeviceMemory : CudaContextBoundHandle
{
    /// <summary>Size in bytes.</summary>
    public long Bytes { get; internal set; }
    /// <summary>The device address (valid while the handle is open).</summary>
    public ulong Pointer => (ulong)handle;
    internal void Set(ulong pointer) => SetHandle((nint)pointer);
    protected override int Destroy(nint h) => cuMemFree_v2((ulong)h);
}

/// <summary>Page-locked host memory from cuMemAllocHost_v2 (fast, truly asynchronous copies).</summary>
public sealed class CudaPinnedHostMemory : CudaContextBoundHandle
{
    /// <summary>Size in bytes.</summary>
    public long Bytes { get; internal set; }
    /// <summary>The host address (valid while the handle is open).</summary>
    public nint Pointer => handle;
    internal void Set(nint pointer) => SetHandle(pointer);
    protected override unsafe int Destroy(nint h) => cuMemFreeHost((void*)h);

    /// <summary>The memory as a span of <typeparamref name="T"/> (length = Bytes / sizeof(T)).</summary>
    public unsafe Span<T> AsSpan<T>() where T : unmanaged => new((void*)handle, checked((int)(Bytes / sizeof(T))));
}
