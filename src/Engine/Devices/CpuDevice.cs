namespace DistAlign.Engine.Devices;

/// <summary>The host CPU: buffers are 64-byte aligned, zeroed native memory that CPU kernels reach as spans.</summary>
public sealed class CpuDevice : Device
{
    /// <summary>Alignment of every CPU buffer, in bytes: one cache line, and a full Vector512.</summary>
    public const int Alignment = 64;

    /// <inheritdoc/>
    public override DeviceKind Kind => DeviceKind.Cpu;

    /// <inheritdoc/>
    public override string Name => "cpu";

    /// <summary>Allocates a zeroed, 64-byte aligned CPU buffer; same as <see cref="Device.Allocate{T}"/> but typed.</summary>
    public new CpuBuffer<T> Allocate<T>(long length) where T : unmanaged => (CpuBuffer<T>)base.Allocate<T>(length);

    /// <inheritdoc/>
    protected override DeviceBuffer<T> AllocateCore<T>(long length, long sizeInBytes) => new CpuBuffer<T>(this, length);

    /// <inheritdoc/>
    public override void Synchronize()
    {
        // CPU work is synchronous: nothing is queued.
    }
}
