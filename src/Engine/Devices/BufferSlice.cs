using System.Runtime.CompilerServices;

namespace DistAlign.Engine.Devices;

/// <summary>
/// A view of <see cref="Length"/> elements of <typeparamref name="T"/> inside a <see cref="DeviceBuffer"/>,
/// starting <see cref="ByteOffset"/> bytes into it. Slices are cheap values; they do not own memory and
/// become unusable (ObjectDisposedException) when the underlying buffer is disposed.
/// </summary>
public readonly struct BufferSlice<T> where T : unmanaged
{
    internal BufferSlice(DeviceBuffer buffer, long byteOffset, long length)
    {
        Buffer = buffer;
        ByteOffset = byteOffset;
        Length = length;
    }

    /// <summary>The buffer this view points into (null for a default-constructed slice).</summary>
    public DeviceBuffer Buffer { get; }

    /// <summary>Offset of element 0 from the start of <see cref="Buffer"/>, in bytes.</summary>
    public long ByteOffset { get; }

    /// <summary>Number of elements in the view.</summary>
    public long Length { get; }

    /// <summary>Size of the view in bytes.</summary>
    public long SizeInBytes => Length * Unsafe.SizeOf<T>();

    /// <summary>The device that owns the memory.</summary>
    public Device Device => BufferOrThrow.Device;

    private DeviceBuffer BufferOrThrow =>
        Buffer ?? throw new InvalidOperationException("This BufferSlice is default-initialised and points at no buffer.");

    /// <summary>A narrower view: <paramref name="length"/> elements from element <paramref name="offset"/> of this view.</summary>
    public BufferSlice<T> Slice(long offset, long length)
    {
        var buffer = BufferOrThrow;
        if (offset < 0 || length < 0 || offset > Length - length)
            throw new ArgumentOutOfRangeException(nameof(offset),
                $"Slice [{offset}, {offset}+{length}) is outside a view of {Length} elements.");
        return new BufferSlice<T>(buffer, ByteOffset + offset * Unsafe.SizeOf<T>(), length);
    }

    /// <summary>Copies <paramref name="source"/> into this view starting at element <paramref name="destinationOffset"/>.</summary>
    public void CopyFrom(ReadOnlySpan<T> source, long destinationOffset = 0)
    {
        var buffer = BufferOrThrow;
        if (destinationOffset < 0 || destinationOffset > Length - source.Length)
            throw new ArgumentOutOfRangeException(nameof(destinationOffset),
                $"Copying {source.Length} elements to element {destinationOffset} runs outside a view of {Length} elements.");
        buffer.CopyFromHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(source),
            ByteOffset + destinationOffset * Unsafe.SizeOf<T>());
    }

    /// <summary>Copies elements starting at <paramref name="sourceOffset"/> into the whole of <paramref name="destination"/>.</summary>
    public void CopyTo(Span<T> destination, long sourceOffset = 0)
    {
        var buffer = BufferOrThrow;
        if (sourceOffset < 0 || sourceOffset > Length - destination.Length)
            throw new ArgumentOutOfRangeException(nameof(sourceOffset),
                $"Copying {destination.Length} elements from element {sourceOffset} runs outside a view of {Length} elements.");
        buffer.CopyToHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(destination),
            ByteOffset + sourceOffset * Unsafe.SizeOf<T>());
    }

    /// <summary>
    /// The view as a span, for CPU kernels. Only for host-accessible memory and at most
    /// <see cref="int.MaxValue"/> elements.
    /// </summary>
    /// <exception cref="InvalidOperationException">The memory is not host-accessible, or the view is too long for a span.</exception>
    public unsafe Span<T> AsSpan()
    {
        var buffer = BufferOrThrow;
        nint address = buffer.HostAddress;
        if (Length > int.MaxValue)
            throw new InvalidOperationException(
                $"A view of {Length} elements is longer than a Span<T> can be ({int.MaxValue}); take a narrower Slice first.");
        return new Span<T>((byte*)address + ByteOffset, (int)Length);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        Buffer is null ? "BufferSlice<default>" : $"BufferSlice<{typeof(T).Name}>[{Length}] at byte {ByteOffset} on {Buffer.Device.Name}";
}
