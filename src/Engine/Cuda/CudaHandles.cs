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
