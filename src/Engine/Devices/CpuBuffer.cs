using System.Runtime.InteropServices;

namespace DistAlign.Engine.Devices;

/// <summary>
/// A CPU buffer: <see cref="DeviceBuffer{T}.Length"/> elements of zeroed native memory aligned to
/// <see cref="CpuDevice.Alignment"/> bytes. CPU kernels read and write it through <see cref="AsSpan()"/>.
/// </summary>
public sealed unsafe class CpuBuffer<T> : DeviceBuffer<T> where T : unmanaged
{
    private readonly byte* _pointer;

    internal CpuBuffer(CpuDevice device, long length) : base(device, length)
    {
        long bytes = SizeInBytes;
        if ((ulong)bytes > nuint.MaxValue)
            throw new DeviceOutOfMemoryException(device.Name, bytes);
        // Allocate at least one alignment unit so even an empty buffer has a valid, distinct address.
        nuint toAllocate = (nuint)Math.Max(bytes, CpuDevice.Alignment);
        try
        {
            _pointer = (byte*)NativeMemory.AlignedAlloc(toAllocate, CpuDevice.Alignment);
        }
        catch (OutOfMemoryException e)
        {
            GC.SuppressFinalize(this);
            throw new DeviceOutOfMemoryException(device.Name, bytes, e);
        }
        NativeMemory.Clear(_pointer, toAllocate);
        if (bytes > 0) GC.AddMemoryPressure(bytes);
    }

    /// <summary>Frees the native memory if the owner did not dispose the buffer.</summary>
    ~CpuBuffer() => ReleaseFromFinalizer();

    /// <inheritdoc/>
    public override bool IsHostAccessible => true;

    /// <summary>The whole buffer as a span. Throws if it has more than <see cref="int.MaxValue"/> elements.</summary>
    public Span<T> AsSpan()
    {
        ThrowIfDisposed();
        if (Length > int.MaxValue)
            throw new InvalidOperationException(
                $"This buffer has {Length} elements, more than a Span<T> can hold; use AsSpan(offset, length).");
        return new Span<T>(_pointer, (int)Length);
    }

    /// <summary>A span over <paramref name="length"/> elements starting at element <paramref name="offset"/>.</summary>
    public Span<T> AsSpan(long offset, int length)
    {
        ThrowIfDisposed();
        if (offset < 0 || length < 0 || offset > Length - length)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"Span [{offset}, {offset}+{length}) is outside a buffer of {Length} elements.");
        return new Span<T>((T*)_pointer + offset, length);
    }

    /// <summary>Address of element 0, for interop. Valid until the buffer is disposed.</summary>
    public nint Address
    {
        get
        {
            ThrowIfDisposed();
            return (nint)_pointer;
        }
    }

    /// <inheritdoc/>
    protected override nint GetHostAddress() => (nint)_pointer;

    /// <inheritdoc/>
    protected override void CopyFromHostCore(ReadOnlySpan<byte> source, long destinationByteOffset) =>
        source.CopyTo(new Span<byte>(_pointer + destinationByteOffset, source.Length));

    /// <inheritdoc/>
    protected override void CopyToHostCore(Span<byte> destination, long sourceByteOffset) =>
        new ReadOnlySpan<byte>(_pointer + sourceByteOffset, destination.Length).CopyTo(destination);

    /// <inheritdoc/>
    protected override void Release(bool disposing)
    {
        if (_pointer == null) return;
        NativeMemory.AlignedFree(_pointer);
        if (SizeInBytes > 0) GC.RemoveMemoryPressure(SizeInBytes);
    }
}
