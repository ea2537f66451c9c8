using DistAlign.Engine.Devices;

namespace DistAlign.Engine.Cuda;

/// <summary>
/// A CUDA GPU as a <see cref="Device"/>: buffers from cuMemAlloc_v2 (zeroed with cuMemsetD8Async), one
/// non-blocking stream, and host copies staged through a pinned (page-locked) buffer with asynchronous
/// copies on that stream, in chunks of <see cref="StagingBytes"/>. Arenas (<c>Memory.Arena</c>) work on it
/// unchanged, since they allocate through <see cref="Device.Allocate{T}"/>. Uses the device's primary context
/// (the one cuBLAS and the runtime API share) and makes it current on the creating thread.
/// </summary>
public sealed class CudaDevice : Device
{
    /// <summary>Size of the pinned staging buffer for host copies.</summary>
    public const int StagingBytes = 8 << 20;

    private readonly CudaPrimaryContextHandle _context;
    private readonly CudaStreamHandle _stream;
    private readonly CudaPinnedHostMemory _staging;
    private readonly object _stagingLock = new();

    private CudaDevice(CudaDeviceInfo info, CudaPrimaryContextHandle context)
    {
        Info = info;
        _context = context;
        _stream = CudaDriver.CreateStream();
        _staging = CudaDriver.AllocatePinned(StagingBytes);
    }

    /// <summary>
    /// Device <paramref name="ordinal"/>. Throws <see cref="CudaUnavailableException"/> without a driver and
    /// <see cref="CudaException"/> when the driver cannot provide the device.
    /// </summary>
    public static CudaDevice Create(int ordinal = 0)
    {
        CudaDriver.Initialize();
        var info = CudaDriver.Device(ordinal);
        return new CudaDevice(info, CudaDriver.RetainPrimaryContext(ordinal));
    }

    /// <summary>What the driver reports about this device.</summary>
    public CudaDeviceInfo Info { get; }

    public override DeviceKind Kind => DeviceKind.Cuda;
    public override string Name => $"cuda:{Info.Ordinal} ({Info.Name})";

    /// <summary>The CUcontext (primary context) this device's memory and stream belong to.</summary>
    public nint Context => _context.DangerousGetHandle();

    /// <summary>The CUstream all of this device's copies and fills are queued on.</summary>
    public nint Stream => _stream.DangerousGetHandle();

    /// <summary>Makes this device's context current on the calling thread (needed once per thread before driver calls).</summary>
    public void MakeCurrent() => CudaDriver.Check(CudaDriverNative.cuCtxSetCurrent(Context), "cuCtxSetCurrent");

    protected override DeviceBuffer<T> AllocateCore<T>(long length, long sizeInBytes)
    {
        MakeCurrent();
        CudaDeviceMemory memory;
        try
        {
            memory = CudaDriver.Allocate(Math.Max(sizeInBytes, 256));   // an empty buffer still gets a distinct address
        }
        catch (CudaException e) when (e.Status == 2)
        {
            throw new DeviceOutOfMemoryException(Name, sizeInBytes, e);
        }
        CudaDriver.Check(CudaDriverNative.cuMemsetD8Async(memory.Pointer, 0, (nuint)memory.Bytes, Stream), "cuMemsetD8Async");
        return new CudaBuffer<T>(this, length, memory);
    }

    public override void Synchronize() => CudaDriver.SynchronizeStream(Stream);

    /// <summary>Host → device through the pinned buffer: chunk by chunk, copy into pinned memory, then an async copy on the stream.</summary>
    internal unsafe void CopyFromHost(ulong destination, ReadOnlySpan<byte> source)
    {
        lock (_stagingLock)
        {
            MakeCurrent();
            var staging = _staging.AsSpan<byte>();
            for (int at = 0; at < source.Length; at += StagingBytes)
            {
                int count = Math.Min(StagingBytes, source.Length - at);
                Synchronize();   // the previous chunk's copy has left the staging buffer
                source.Slice(at, count).CopyTo(staging);
                CudaDriver.CopyToDeviceAsync(destination + (ulong)at, (void*)_staging.Pointer, count, Stream);
            }
            Synchronize();
        }
    }

    /// <summary>Device → host through the pinned buffer.</summary>
    internal unsafe void CopyToHost(Span<byte> destination, ulong source)
    {
        lock (_stagingLock)
        {
            MakeCurrent();
            var staging = _staging.AsSpan<byte>();
            for (int at = 0; at < destination.Length; at += StagingBytes)
            {
                int count = Math.Min(StagingBytes, destination.Length - at);
                CudaDriver.CopyToHostAsync((void*)_staging.Pointer, source + (ulong)at, count, Stream);
                Synchronize();
                staging[..count].CopyTo(destination.Slice(at, count));
            }
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (!disposing) return;
        _staging.Dispose();
        _stream.Dispose();
        _context.Dispose();
    }
}

/// <summary>Device memory of a <see cref="CudaDevice"/>; not host-accessible (copy with CopyFrom/CopyTo).</summary>
public sealed class CudaBuffer<T> : DeviceBuffer<T> where T : unmanaged
{
    private readonly CudaDeviceMemory _memory;

    internal CudaBuffer(CudaDevice device, long length, CudaDeviceMemory memory) : base(device, length) => _memory = memory;

    /// <summary>The CUdeviceptr of element 0 (for cuBLAS and kernel launches).</summary>
    public ulong DevicePointer
    {
        get
        {
            ThrowIfDisposed();
            return _memory.Pointer;
        }
    }

    private CudaDevice Owner => (CudaDevice)Device;

    protected override void CopyFromHostCore(ReadOnlySpan<byte> source, long destinationByteOffset) =>
        Owner.CopyFromHost(_memory.Pointer + (ulong)destinationByteOffset, source);

    protected override void CopyToHostCore(Span<byte> destination, long sourceByteOffset) =>
        Owner.CopyToHost(destination, _memory.Pointer + (ulong)sourceByteOffset);

    protected override void Release(bool disposing) => _memory.Dispose();
}
