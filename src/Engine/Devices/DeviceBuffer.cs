using System.Runtime.CompilerServices;

namespace DistAlign.Engine.Devices;

/// <summary>
/// Untyped device memory: a contiguous block of <see cref="SizeInBytes"/> bytes owned by one
/// <see cref="Device"/>. Typed access goes through <see cref="DeviceBuffer{T}"/> or through
/// <see cref="View{TView}"/>, which lets an arena of bytes hand out typed tensor views.
/// </summary>
/// <remarks>
/// A backend implements the two byte-level copy primitives (and, where the memory is host-addressable,
/// <see cref="GetHostAddress"/>); bounds and lifetime checks live here so every backend enforces them the
/// same way. Dispose is idempotent; any use after dispose throws <see cref="ObjectDisposedException"/>.
/// </remarks>
public abstract class DeviceBuffer : IDisposable
{
    private int _disposed;

    /// <summary>Creates the base for a buffer of <paramref name="sizeInBytes"/> bytes on <paramref name="device"/>.</summary>
    protected DeviceBuffer(Device device, long sizeInBytes)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentOutOfRangeException.ThrowIfNegative(sizeInBytes);
        Device = device;
        SizeInBytes = sizeInBytes;
    }

    /// <summary>The device that owns this memory.</summary>
    public Device Device { get; }

    /// <summary>Size of the buffer in bytes.</summary>
    public long SizeInBytes { get; }

    /// <summary>True once <see cref="Dispose()"/> has run.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>True when the memory can be read and written directly by CPU code (spans).</summary>
    public virtual bool IsHostAccessible => false;

    /// <summary>
    /// A typed view of <paramref name="length"/> elements of <typeparamref name="TView"/> starting
    /// <paramref name="byteOffset"/> bytes into this buffer. The offset must be a multiple of the element size.
    /// </summary>
    public BufferSlice<TView> View<TView>(long byteOffset, long length) where TView : unmanaged
    {
        ThrowIfDisposed();
        int elementSize = Unsafe.SizeOf<TView>();
        ArgumentOutOfRangeException.ThrowIfNegative(byteOffset);
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        if (byteOffset % elementSize != 0)
            throw new ArgumentException(
                $"Byte offset {byteOffset} is not a multiple of the {elementSize}-byte size of {typeof(TView).Name}.", nameof(byteOffset));
        long bytes = checked(length * elementSize);
        if (byteOffset > SizeInBytes - bytes)
            throw new ArgumentOutOfRangeException(nameof(length),
                $"A view of {length} {typeof(TView).Name} ({bytes} bytes) at byte {byteOffset} does not fit in this {SizeInBytes}-byte buffer on '{Device.Name}'.");
        return new BufferSlice<TView>(this, byteOffset, length);
    }

    /// <summary>Copies host bytes into the buffer at a byte offset; bounds and lifetime are checked.</summary>
    internal void CopyFromHost(ReadOnlySpan<byte> source, long destinationByteOffset)
    {
        ThrowIfDisposed();
        CheckRange(destinationByteOffset, source.Length, "destination");
        if (source.Length != 0) CopyFromHostCore(source, destinationByteOffset);
    }

    /// <summary>Copies buffer bytes at a byte offset to host memory; bounds and lifetime are checked.</summary>
    internal void CopyToHost(Span<byte> destination, long sourceByteOffset)
    {
        ThrowIfDisposed();
        CheckRange(sourceByteOffset, destination.Length, "source");
        if (destination.Length != 0) CopyToHostCore(destination, sourceByteOffset);
    }

    /// <summary>The host address of byte 0, for host-accessible buffers; checked for lifetime.</summary>
    internal nint HostAddress
    {
        get
        {
            ThrowIfDisposed();
            if (!IsHostAccessible)
                throw new InvalidOperationException(
                    $"This buffer lives on '{Device.Name}' ({Device.Kind}) and is not host-accessible; copy it to host memory with CopyTo first.");
            return GetHostAddress();
        }
    }

    /// <summary>Backend copy from host memory; arguments are already validated and non-empty.</summary>
    protected abstract void CopyFromHostCore(ReadOnlySpan<byte> source, long destinationByteOffset);

    /// <summary>Backend copy to host memory; arguments are already validated and non-empty.</summary>
    protected abstract void CopyToHostCore(Span<byte> destination, long sourceByteOffset);

    /// <summary>The host address of byte 0. Only called when <see cref="IsHostAccessible"/> is true.</summary>
    protected virtual nint GetHostAddress() =>
        throw new NotSupportedException($"{GetType().Name} is not host-accessible.");

    /// <summary>Releases the memory. Called once, from <see cref="Dispose()"/> or a finalizer.</summary>
    protected abstract void Release(bool disposing);

    /// <summary>Throws <see cref="ObjectDisposedException"/> if the buffer has been disposed.</summary>
    protected void ThrowIfDisposed()
    {
        if (IsDisposed)
            throw new ObjectDisposedException(GetType().Name,
                $"This {SizeInBytes}-byte buffer on '{Device.Name}' has been disposed and can no longer be used.");
    }

    private void CheckRange(long byteOffset, long byteCount, string role)
    {
        if (byteOffset < 0 || byteOffset > SizeInBytes - byteCount)
            throw new ArgumentOutOfRangeException(nameof(byteOffset),
                $"Copy of {byteCount} bytes at {role} byte offset {byteOffset} runs outside this {SizeInBytes}-byte buffer on '{Device.Name}'.");
    }

    /// <summary>Frees the memory. Safe to call more than once.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Release(disposing: true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Finalizer path: frees the memory if the owner forgot to dispose.</summary>
    protected void ReleaseFromFinalizer()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Release(disposing: false);
    }
}

/// <summary>
/// A buffer of <see cref="Length"/> elements of <typeparamref name="T"/> on one <see cref="Device"/>.
/// Allocate it with <see cref="Device.Allocate{T}"/>.
/// </summary>
public abstract class DeviceBuffer<T> : DeviceBuffer where T : unmanaged
{
    /// <summary>Creates the base for a buffer of <paramref name="length"/> elements.</summary>
    protected DeviceBuffer(Device device, long length)
        : base(device, checked(length * Unsafe.SizeOf<T>()))
    {
        Length = length;
    }

    /// <summary>Number of elements.</summary>
    public long Length { get; }

    /// <summary>Size of one element in bytes.</summary>
    public static int ElementSize => Unsafe.SizeOf<T>();

    /// <summary>Copies <paramref name="source"/> into the buffer starting at element <paramref name="destinationOffset"/>.</summary>
    /// <exception cref="ArgumentOutOfRangeException">The copy would run outside the buffer.</exception>
    /// <exception cref="ObjectDisposedException">The buffer has been disposed.</exception>
    public void CopyFrom(ReadOnlySpan<T> source, long destinationOffset = 0) => AsSlice().CopyFrom(source, destinationOffset);

    /// <summary>Copies elements starting at <paramref name="sourceOffset"/> into <paramref name="destination"/> (its whole length).</summary>
    /// <exception cref="ArgumentOutOfRangeException">The copy would run outside the buffer.</exception>
    /// <exception cref="ObjectDisposedException">The buffer has been disposed.</exception>
    public void CopyTo(Span<T> destination, long sourceOffset = 0) => AsSlice().CopyTo(destination, sourceOffset);

    /// <summary>A view of <paramref name="length"/> elements starting at element <paramref name="offset"/>.</summary>
    public BufferSlice<T> Slice(long offset, long length) => AsSlice().Slice(offset, length);

    /// <summary>A view of the whole buffer.</summary>
    public BufferSlice<T> AsSlice()
    {
        ThrowIfDisposed();
        return new BufferSlice<T>(this, 0, Length);
    }
}
