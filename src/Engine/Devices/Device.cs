namespace DistAlign.Engine.Devices;

/// <summary>
/// A place where buffers live and kernels run. Callers allocate through this type only, so a CUDA backend
/// can be added without changing them: <see cref="Allocate{T}"/> hands back a <see cref="DeviceBuffer{T}"/>
/// whose copies and slices behave the same on every backend.
/// </summary>
/// <remarks>
/// Disposing a device stops further allocation. Buffers already handed out keep their own lifetime and must
/// be disposed by whoever owns them.
/// </remarks>
public abstract class Device : IDisposable
{
    private int _disposed;

    /// <summary>What kind of hardware this is.</summary>
    public abstract DeviceKind Kind { get; }

    /// <summary>A short human-readable name, e.g. <c>cpu</c> or <c>cuda:0 (NVIDIA H200)</c>.</summary>
    public abstract string Name { get; }

    /// <summary>True once <see cref="Dispose()"/> has run.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>
    /// Allocates a zero-filled buffer of <paramref name="length"/> elements of <typeparamref name="T"/>.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="length"/> is negative.</exception>
    /// <exception cref="OverflowException">The byte size does not fit in a signed 64-bit integer.</exception>
    /// <exception cref="DeviceOutOfMemoryException">The device could not provide the memory.</exception>
    /// <exception cref="ObjectDisposedException">The device has been disposed.</exception>
    public DeviceBuffer<T> Allocate<T>(long length) where T : unmanaged
    {
        ThrowIfDisposed();
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        long bytes = checked(length * System.Runtime.CompilerServices.Unsafe.SizeOf<T>());
        return AllocateCore<T>(length, bytes);
    }

    /// <summary>Backend allocation: <paramref name="length"/> elements, <paramref name="sizeInBytes"/> bytes, zeroed.</summary>
    protected abstract DeviceBuffer<T> AllocateCore<T>(long length, long sizeInBytes) where T : unmanaged;

    /// <summary>Blocks until every operation queued on this device has finished. A no-op on the CPU.</summary>
    public abstract void Synchronize();

    /// <summary>Throws <see cref="ObjectDisposedException"/> if the device has been disposed.</summary>
    protected void ThrowIfDisposed()
    {
        if (IsDisposed)
            throw new ObjectDisposedException(GetType().Name, $"Device '{Name}' has been disposed; it can no longer allocate.");
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Dispose(disposing: true);
        GC.SuppressFinalize(this);
    }

    /// <summary>Releases backend resources. Called once.</summary>
    protected virtual void Dispose(bool disposing)
    {
    }

    /// <inheritdoc/>
    public override string ToString() => Name;
}
