using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace DistAlign.Engine.SafeTensors;

/// <summary>
/// One tensor to write: a name, a dtype, a shape and its little-endian bytes. Construction checks that the byte
/// count equals shape × dtype size, so a writer never produces an inconsistent file. Use the factories to build
/// one from typed values.
/// </summary>
public sealed class SafeTensor
{
    /// <summary>Wraps already-encoded little-endian bytes.</summary>
    /// <exception cref="ArgumentException">Empty or reserved name, negative shape entry, or a byte count that does not match the shape.</exception>
    public SafeTensor(string name, SafeTensorDType dtype, IReadOnlyList<long> shape, ReadOnlyMemory<byte> data)
    {
        ArgumentNullException.ThrowIfNull(name);
        ArgumentNullException.ThrowIfNull(shape);
        if (name == SafeTensorsFile.MetadataKey)
            throw new ArgumentException($"'{SafeTensorsFile.MetadataKey}' is reserved for metadata and cannot name a tensor.", nameof(name));
        long count = ElementCountOf(shape, name);
        long bytes;
        try { bytes = checked(count * dtype.SizeInBytes()); }
        catch (OverflowException) { throw new ArgumentException($"Tensor '{name}' is too large: its byte size overflows 64 bits.", nameof(shape)); }
        if (bytes != data.Length)
            throw new ArgumentException(
                $"Tensor '{name}' has shape [{string.Join(", ", shape)}] of {dtype.HeaderName()} ({bytes} bytes) but {data.Length} bytes of data.", nameof(data));
        Name = name;
        DType = dtype;
        Shape = shape.ToArray();
        Data = data;
    }

    /// <summary>Tensor name (e.g. <c>h.0.attn.c_attn.weight</c>).</summary>
    public string Name { get; }

    /// <summary>Element type as stored.</summary>
    public SafeTensorDType DType { get; }

    /// <summary>Dimensions, outermost first. Empty for a scalar.</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>The stored bytes, little-endian.</summary>
    public ReadOnlyMemory<byte> Data { get; }

    /// <summary>Floats stored as <paramref name="storeAs"/>: F32 as is, or rounded to BF16/F16 (nearest, ties to even).</summary>
    /// <exception cref="ArgumentException"><paramref name="storeAs"/> is an integer type, or the shape does not match the value count.</exception>
    public static SafeTensor FromFloats(string name, ReadOnlySpan<float> values, IReadOnlyList<long> shape,
        SafeTensorDType storeAs = SafeTensorDType.F32)
    {
        switch (storeAs)
        {
            case SafeTensorDType.F32:
            {
                var bytes = new byte[checked(values.Length * 4)];
                if (BitConverter.IsLittleEndian) MemoryMarshal.AsBytes(values).CopyTo(bytes);
                else for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(bytes.AsSpan(i * 4), values[i]);
                return new SafeTensor(name, storeAs, shape, bytes);
            }
            case SafeTensorDType.BF16:
            case SafeTensorDType.F16:
            {
                var bytes = new byte[checked(values.Length * 2)];
                for (int i = 0; i < values.Length; i++)
                {
                    ushort bits = storeAs == SafeTensorDType.BF16 ? HalfPrecision.ToBFloat16Bits(values[i]) : HalfPrecision.ToFloat16Bits(values[i]);
                    BinaryPrimitives.WriteUInt16LittleEndian(bytes.AsSpan(i * 2), bits);
                }
                return new SafeTensor(name, storeAs, shape, bytes);
            }
            default:
                throw new ArgumentException($"Floats can be stored as F32, BF16 or F16, not {storeAs.HeaderName()}.", nameof(storeAs));
        }
    }

    /// <summary>A one-dimensional F32 tensor of <paramref name="values"/>.</summary>
    public static SafeTensor FromFloats(string name, ReadOnlySpan<float> values) => FromFloats(name, values, [values.Length]);

    /// <summary>32-bit integers stored as I32.</summary>
    public static SafeTensor FromInt32(string name, ReadOnlySpan<int> values, IReadOnlyList<long> shape)
    {
        var bytes = new byte[checked(values.Length * 4)];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(i * 4), values[i]);
        return new SafeTensor(name, SafeTensorDType.I32, shape, bytes);
    }

    /// <summary>64-bit integers stored as I64.</summary>
    public static SafeTensor FromInt64(string name, ReadOnlySpan<long> values, IReadOnlyList<long> shape)
    {
        var bytes = new byte[checked(values.Length * 8)];
        for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteInt64LittleEndian(bytes.AsSpan(i * 8), values[i]);
        return new SafeTensor(name, SafeTensorDType.I64, shape, bytes);
    }

    internal static long ElementCountOf(IReadOnlyList<long> shape, string name)
    {
        long count = 1;
        foreach (long d in shape)
        {
            if (d < 0) throw new ArgumentException($"Tensor '{name}' has a negative dimension in shape [{string.Join(", ", shape)}].", nameof(shape));
            try { count = checked(count * d); }
            catch (OverflowException) { throw new ArgumentException($"Tensor '{name}': the element count of shape [{string.Join(", ", shape)}] overflows 64 bits.", nameof(shape)); }
        }
        return count;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {DType.HeaderName()}[{string.Join(", ", Shape)}]";
}
