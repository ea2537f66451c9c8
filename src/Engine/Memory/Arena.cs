using System.Runtime.CompilerServices;
using DistAlign.Engine.Devices;

namespace DistAlign.Engine.Memory;

/// <summary>
/// One contiguous device buffer holding every tensor of an <see cref="ArenaPlan"/>, handing out views by
/// tensor name at the offsets the plan fixed. Allocated once; hot paths only look views up.
/// </summary>
public sealed class Arena : IDisposable
{
    private readonly DeviceBuffer<byte> _buffer;

    private Arena(ArenaPlan plan, DeviceBuffer<byte> buffer)
    {
        Plan = plan;
        _buffer = buffer;
    }

    /// <summary>Allocates the arena's single block (zeroed) on <paramref name="device"/>.</summary>
    public static Arena Allocate(Device device, ArenaPlan plan)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(plan);
        return new Arena(plan, device.Allocate<byte>(plan.SizeInBytes));
    }

    /// <summary>The layout this arena was allocated from.</summary>
    public ArenaPlan Plan { get; }

    /// <summary>Arena name.</summary>
    public string Name => Plan.Name;

    /// <summary>The device the arena lives on.</summary>
    public Device Device => _buffer.Device;

    /// <summary>Size of the arena's block in bytes.</summary>
    public long SizeInBytes => _buffer.SizeInBytes;

    /// <summary>The whole block as raw bytes (e.g. for zeroing or checkpointing an arena at once).</summary>
    public BufferSlice<byte> Bytes => _buffer.AsSlice();

    /// <summary>The raw bytes of tensor <paramref name="tensorName"/>.</summary>
    /// <exception cref="KeyNotFoundException">The arena plans no such tensor; the message names tensor and arena.</exception>
    public BufferSlice<byte> this[string tensorName]
    {
        get
        {
            var p = Plan.GetTensor(tensorName);
            return _buffer.View<byte>(p.ByteOffset, p.SizeInBytes);
        }
    }

    /// <summary>A typed view of tensor <paramref name="tensorName"/>; <typeparamref name="T"/> must match the planned element size.</summary>
    /// <exception cref="KeyNotFoundException">The arena plans no such tensor.</exception>
    /// <exception cref="ArgumentException"><typeparamref name="T"/> has a different size from the planned element.</exception>
    public BufferSlice<T> Tensor<T>(string tensorName) where T : unmanaged
    {
        var p = Plan.GetTensor(tensorName);
        int size = Unsafe.SizeOf<T>();
        if (size != p.ElementSize)
            throw new ArgumentException(
                $"Tensor '{tensorName}' in arena '{Name}' was planned with {p.ElementSize}-byte elements, " +
                $"but was requested as {typeof(T).Name} ({size} bytes).", nameof(T));
        return _buffer.View<T>(p.ByteOffset, p.ElementCount);
    }

    /// <summary>Tensor <paramref name="tensorName"/> as a span, for CPU kernels (host-accessible arenas only).</summary>
    public Span<T> Span<T>(string tensorName) where T : unmanaged => Tensor<T>(tensorName).AsSpan();

    /// <summary>Frees the arena's block. Safe to call more than once; views become unusable.</summary>
    public void Dispose() => _buffer.Dispose();

    /// <inheritdoc/>
    public override string ToString() => $"Arena '{Name}' ({Plan.Tensors.Count} tensors, {SizeInBytes} bytes on {Device.Name})";
}
