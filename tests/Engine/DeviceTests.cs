using DistAlign.Engine.Devices;

namespace DistAlign.Tests.Engine;

public class DeviceTests
{
    [Test]
    public void CpuDeviceDescribesItself()
    {
        using var device = new CpuDevice();
        Assert.That(device.Kind, Is.EqualTo(DeviceKind.Cpu));
        Assert.That(device.Name, Is.EqualTo("cpu"));
        device.Synchronize();
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(17)]
    [TestCase(4096)]
    public unsafe void CpuBufferIsZeroedAndAligned(int length)
    {
        using var device = new CpuDevice();
        using var buffer = device.Allocate<float>(length);
        Assert.That(buffer.Length, Is.EqualTo(length));
        Assert.That(buffer.SizeInBytes, Is.EqualTo(length * 4L));
        Assert.That((long)buffer.Address % CpuDevice.Alignment, Is.EqualTo(0L));
        Assert.That(buffer.AsSpan().ToArray(), Is.All.EqualTo(0f));
        Assert.That(buffer.Device, Is.SameAs(device));
    }

    [Test]
    public void AllocateThroughAbstractDeviceReturnsHostAccessibleBuffer()
    {
        Device device = new CpuDevice();
        using DeviceBuffer<int> buffer = device.Allocate<int>(8);
        Assert.That(buffer, Is.InstanceOf<CpuBuffer<int>>());
        Assert.That(buffer.IsHostAccessible, Is.True);
        device.Dispose();
    }

    [Test]
    public void CopyFromAndCopyToRoundTripWithOffsets()
    {
        using var device = new CpuDevice();
        using var buffer = device.Allocate<float>(10);
        buffer.CopyFrom([1f, 2f, 3f], destinationOffset: 4);
        var all = new float[10];
        buffer.CopyTo(all);
        Assert.That(all, Is.EqualTo(new[] { 0f, 0, 0, 0, 1, 2, 3, 0, 0, 0 }));
        var part = new float[2];
        buffer.CopyTo(part, sourceOffset: 5);
        Assert.That(part, Is.EqualTo(new[] { 2f, 3f }));
    }

    [Test]
    public void CopiesOutsideTheBufferAreRejected()
    {
        using var device = new CpuDevice();
        using var buffer = device.Allocate<float>(4);
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.CopyFrom(new float[3], destinationOffset: 2));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.CopyTo(new float[5]));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.CopyTo(new float[1], sourceOffset: -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => buffer.Slice(3, 2));
    }

    [Test]
    public void SliceSeesAndWritesTheSameMemory()
    {
        using var device = new CpuDevice();
        using var buffer = device.Allocate<int>(8);
        var slice = buffer.Slice(2, 4);
        Assert.That(slice.Length, Is.EqualTo(4));
        Assert.That(slice.ByteOffset, Is.EqualTo(8));
        Assert.That(slice.SizeInBytes, Is.EqualTo(16));
        slice.AsSpan().Fill(7);
        slice.Slice(1, 2).CopyFrom([9, 9]);
        Assert.That(buffer.AsSpan().ToArray(), Is.EqualTo(new[] { 0, 0, 7, 9, 9, 7, 0, 0 }));
        var read = new int[4];
        slice.CopyTo(read);
        Assert.That(read, Is.EqualTo(new[] { 7, 9, 9, 7 }));
        Assert.That(buffer.AsSpan(3, 2).ToArray(), Is.EqualTo(new[] { 9, 9 }));
    }

    [Test]
    public void ByteBufferCanBeViewedAsFloats()
    {
        using var device = new CpuDevice();
        using var bytes = device.Allocate<byte>(128);
        var floats = bytes.View<float>(64, 4);
        floats.CopyFrom([1f, 2f, 3f, 4f]);
        Assert.That(BitConverter.ToSingle(bytes.AsSpan(64 + 8, 4)), Is.EqualTo(3f));
        Assert.Throws<ArgumentException>(() => bytes.View<float>(2, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => bytes.View<float>(120, 4));
    }

    [Test]
    public void DoubleDisposeIsSafeAndUseAfterDisposeThrows()
    {
        using var device = new CpuDevice();
        var buffer = device.Allocate<float>(4);
        var slice = buffer.Slice(0, 2);
        buffer.Dispose();
        buffer.Dispose();
        Assert.That(buffer.IsDisposed, Is.True);
        Assert.Throws<ObjectDisposedException>(() => buffer.AsSpan());
        Assert.Throws<ObjectDisposedException>(() => buffer.CopyFrom(new float[1]));
        Assert.Throws<ObjectDisposedException>(() => buffer.CopyTo(new float[1]));
        Assert.Throws<ObjectDisposedException>(() => buffer.Slice(0, 1));
        Assert.Throws<ObjectDisposedException>(() => slice.AsSpan());
        Assert.Throws<ObjectDisposedException>(() => slice.CopyTo(new float[1]));
    }

    [Test]
    public void DisposedDeviceRefusesToAllocate()
    {
        var device = new CpuDevice();
        device.Dispose();
        device.Dispose();
        Assert.Throws<ObjectDisposedException>(() => device.Allocate<float>(1));
    }

    [Test]
    public void ImpossibleAllocationSaysHowManyBytesWereRequested()
    {
        using var device = new CpuDevice();
        long bytes = long.MaxValue / 2;
        var ex = Assert.Throws<DeviceOutOfMemoryException>(() => device.Allocate<byte>(bytes));
        Assert.That(ex!.RequestedBytes, Is.EqualTo(bytes));
        Assert.That(ex.Message, Does.Contain(bytes.ToString("N0", System.Globalization.CultureInfo.InvariantCulture)).And.Contain("cpu"));
    }

    [Test]
    public void BadLengthsAreRejectedBeforeAllocating()
    {
        using var device = new CpuDevice();
        Assert.Throws<ArgumentOutOfRangeException>(() => device.Allocate<float>(-1));
        Assert.Throws<OverflowException>(() => device.Allocate<double>(long.MaxValue / 4));
    }

    [Test]
    public void DefaultSliceExplainsItself()
    {
        var slice = default(BufferSlice<float>);
        var ex = Assert.Throws<InvalidOperationException>(() => slice.AsSpan());
        Assert.That(ex!.Message, Does.Contain("default"));
    }
}
