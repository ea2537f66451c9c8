using System.Buffers.Binary;
using System.Diagnostics.CodeAnalysis;
using System.Runtime.InteropServices;

namespace DistAlign.Engine.SafeTensors;

/// <summary>
/// A validated safetensors file. <see cref="Open"/> reads and checks the whole header — every rule of the
/// format, including that the tensors tile the data section exactly — before any tensor can be read; any
/// violation is a <see cref="SafeTensorsFormatException"/>. Tensor data is then read on demand with positioned
/// reads, so a large file is never held in memory twice.
/// </summary>
/// <example>
/// <code>
/// using var file = SafeTensorsFile.Open("model.safetensors");
/// float[] wte = file.ReadF32("wte.weight");          // F32, or BF16/F16 widened to float
/// file.ReadF32("h.0.ln_1.weight", arena.Span&lt;float&gt;("h.0.ln_1.weight"));   // straight into an arena
/// </code>
/// </example>
public sealed class SafeTensorsFile : IDisposable
{
    /// <summary>The reserved header key for string metadata.</summary>
    public const string MetadataKey = "__metadata__";

    /// <summary>Largest header accepted, in bytes (the cap the reference implementation uses).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private const int ConversionChunkElements = 16 * 1024;

    private readonly SafeTensorsSource source;
    private readonly Dictionary<string, SafeTensorInfo> byName;
    private bool disposed;

    private SafeTensorsFile(string sourceName, SafeTensorsSource source, List<SafeTensorInfo> tensors,
        Dictionary<string, string> metadata, long dataSectionOffset)
    {
        SourceName = sourceName;
        this.source = source;
        Tensors = tensors;
        byName = tensors.ToDictionary(t => t.Name, StringComparer.Ordinal);
        Names = tensors.Select(t => t.Name).Order(StringComparer.Ordinal).ToArray();
        Metadata = metadata;
        DataSectionOffset = dataSectionOffset;
    }

    /// <summary>Opens and validates the file at <paramref name="path"/>.</summary>
    /// <exception cref="SafeTensorsFormatException">The file breaks a rule of the format.</exception>
    /// <exception cref="FileNotFoundException">No file at <paramref name="path"/>.</exception>
    public static SafeTensorsFile Open(string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return Load(path, new FileSource(path));
    }

    /// <summary>Validates safetensors bytes held in memory. <paramref name="sourceName"/> is used in error messages.</summary>
    public static SafeTensorsFile FromBytes(ReadOnlyMemory<byte> bytes, string sourceName = "<memory>") =>
        Load(sourceName, new MemorySource(bytes));

    /// <summary>Validates safetensors bytes from a seekable, readable stream, read with positioned reads.</summary>
    public static SafeTensorsFile FromStream(Stream stream, string sourceName = "<stream>", bool leaveOpen = false)
    {
        ArgumentNullException.ThrowIfNull(stream);
        if (!stream.CanSeek || !stream.CanRead)
            throw new ArgumentException("The stream must be readable and seekable; copy it to a MemoryStream or a file first.", nameof(stream));
        return Load(sourceName, new StreamSource(stream, leaveOpen));
    }

    private static SafeTensorsFile Load(string sourceName, SafeTensorsSource source)
    {
        try
        {
            long length = source.Length;
            if (length < 8)
                throw new SafeTensorsFormatException(sourceName, SafeTensorsRule.FileTooShort,
                    $"the file has {length} bytes, fewer than the 8-byte header-length prefix", byteOffset: 0);
            Span<byte> prefix = stackalloc byte[8];
            source.ReadExactly(0, prefix);
            ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(prefix);
            if (headerLength > MaxHeaderBytes)
                throw new SafeTensorsFormatException(sourceName, SafeTensorsRule.HeaderTooLarge,
                    $"the header length field says {headerLength} bytes, above the {MaxHeaderBytes}-byte cap; the file is corrupt or not safetensors",
                    byteOffset: 0);
            if ((long)headerLength > length - 8)
                throw new SafeTensorsFormatException(sourceName, SafeTensorsRule.HeaderLengthBeyondFile,
                    $"the header length field says {headerLength} bytes, but only {length - 8} bytes follow it (the file may be truncated)",
                    byteOffset: 0);
            var header = new byte[headerLength];
            source.ReadExactly(8, header);
            long dataSectionOffset = 8 + (long)headerLength;
            var (tensors, metadata) = SafeTensorsHeaderParser.Parse(sourceName, header, length - dataSectionOffset);
            return new SafeTensorsFile(sourceName, source, tensors, metadata, dataSectionOffset);
        }
        catch
        {
            source.Dispose();
            throw;
        }
    }

    /// <summary>The file path, or the name given to an in-memory source.</summary>
    public string SourceName { get; }

    /// <summary>Tensor names in ordinal order.</summary>
    public IReadOnlyList<string> Names { get; }

    /// <summary>Every tensor's header entry, in data-section order.</summary>
    public IReadOnlyList<SafeTensorInfo> Tensors { get; }

    /// <summary>The <c>__metadata__</c> entries (empty when the file has none).</summary>
    public IReadOnlyDictionary<string, string> Metadata { get; }

    /// <summary>Offset of the data section from the start of the file (8 + header length).</summary>
    public long DataSectionOffset { get; }

    /// <summary>True when the file holds a tensor called <paramref name="name"/>.</summary>
    public bool Contains(string name) => byName.ContainsKey(name);

    /// <summary>Looks a tensor's entry up without throwing.</summary>
    public bool TryGetInfo(string name, [MaybeNullWhen(false)] out SafeTensorInfo info) => byName.TryGetValue(name, out info);

    /// <summary>The entry for tensor <paramref name="name"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor; the message names the file.</exception>
    public SafeTensorInfo GetInfo(string name) =>
        byName.TryGetValue(name, out var info)
            ? info
            : throw new KeyNotFoundException($"'{SourceName}' has no tensor named '{name}' (it holds {byName.Count} tensors).");

    /// <summary>Tensor <paramref name="name"/> as floats: F32 as stored, BF16 and F16 widened exactly.</summary>
    /// <exception cref="InvalidOperationException">The tensor is an integer type, or too large for an array.</exception>
    public float[] ReadF32(string name)
    {
        var info = GetInfo(name);
        var values = new float[ArrayLength(info)];
        ReadF32(name, values);
        return values;
    }

    /// <summary>Reads tensor <paramref name="name"/> as floats into <paramref name="destination"/>, whose length must equal the element count.</summary>
    public void ReadF32(string name, Span<float> destination)
    {
        var info = GetInfo(name);
        CheckDestination(info, destination.Length);
        switch (info.DType)
        {
            case SafeTensorDType.F32:
                ReadRaw(info, MemoryMarshal.AsBytes(destination));
                if (!BitConverter.IsLittleEndian)
                {
                    var asInts = MemoryMarshal.Cast<float, int>(destination);
                    BinaryPrimitives.ReverseEndianness(asInts, asInts);
                }
                break;
            case SafeTensorDType.BF16:
            case SafeTensorDType.F16:
                ReadHalf(info, destination);
                break;
            default:
                throw WrongType(info, "ReadF32", "F32, BF16 or F16", "ReadI32 or ReadI64");
        }
    }

    /// <summary>Tensor <paramref name="name"/>, stored as I32, as ints.</summary>
    public int[] ReadI32(string name)
    {
        var info = GetInfo(name);
        if (info.DType != SafeTensorDType.I32) throw WrongType(info, "ReadI32", "I32", info.DType == SafeTensorDType.I64 ? "ReadI64" : "ReadF32");
        var values = new int[ArrayLength(info)];
        ReadRaw(info, MemoryMarshal.AsBytes(values.AsSpan()));
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(values, values);
        return values;
    }

    /// <summary>Tensor <paramref name="name"/>, stored as I64 or I32 (widened), as longs.</summary>
    public long[] ReadI64(string name)
    {
        var info = GetInfo(name);
        if (info.DType == SafeTensorDType.I32) return Array.ConvertAll(ReadI32(name), v => (long)v);
        if (info.DType != SafeTensorDType.I64) throw WrongType(info, "ReadI64", "I64 or I32", "ReadF32");
        var values = new long[ArrayLength(info)];
        ReadRaw(info, MemoryMarshal.AsBytes(values.AsSpan()));
        if (!BitConverter.IsLittleEndian) BinaryPrimitives.ReverseEndianness(values, values);
        return values;
    }

    /// <summary>The stored bytes of tensor <paramref name="name"/>, unconverted (little-endian).</summary>
    public byte[] ReadBytes(string name)
    {
        var info = GetInfo(name);
        if (info.SizeInBytes > Array.MaxLength)
            throw new InvalidOperationException($"Tensor '{name}' in '{SourceName}' has {info.SizeInBytes} bytes, more than an array can hold.");
        var bytes = new byte[info.SizeInBytes];
        ReadRaw(info, bytes);
        return bytes;
    }

    private void ReadHalf(SafeTensorInfo info, Span<float> destination)
    {
        Span<byte> chunk = new byte[Math.Min(info.ElementCount, ConversionChunkElements) * 2];
        long position = DataSectionOffset + info.DataBegin;
        bool bf16 = info.DType == SafeTensorDType.BF16;
        for (int done = 0; done < destination.Length;)
        {
            int count = Math.Min(ConversionChunkElements, destination.Length - done);
            var bytes = chunk[..(count * 2)];
            ReadAt(position, bytes);
            for (int i = 0; i < count; i++)
            {
                ushort bits = BinaryPrimitives.ReadUInt16LittleEndian(bytes[(i * 2)..]);
                destination[done + i] = bf16 ? HalfPrecision.FromBFloat16Bits(bits) : HalfPrecision.FromFloat16Bits(bits);
            }
            done += count;
            position += count * 2;
        }
    }

    private void ReadRaw(SafeTensorInfo info, Span<byte> destination) => ReadAt(DataSectionOffset + info.DataBegin, destination);

    private void ReadAt(long fileOffset, Span<byte> destination)
    {
        ObjectDisposedException.ThrowIf(disposed, this);
        source.ReadExactly(fileOffset, destination);
    }

    private int ArrayLength(SafeTensorInfo info) =>
        info.ElementCount <= Array.MaxLength
            ? (int)info.ElementCount
            : throw new InvalidOperationException(
                $"Tensor '{info.Name}' in '{SourceName}' has {info.ElementCount} elements, more than an array can hold; read it into a span in parts.");

    private void CheckDestination(SafeTensorInfo info, int length)
    {
        if (length != info.ElementCount)
            throw new ArgumentException(
                $"Tensor '{info.Name}' in '{SourceName}' has {info.ElementCount} elements (shape [{string.Join(", ", info.Shape)}]) but the destination holds {length}.",
                "destination");
    }

    private InvalidOperationException WrongType(SafeTensorInfo info, string method, string accepted, string alternative) =>
        new($"{method} reads {accepted} tensors, but '{info.Name}' in '{SourceName}' is {info.DType.HeaderName()}; use {alternative}.");

    /// <summary>Closes the file.</summary>
    public void Dispose()
    {
        if (disposed) return;
        disposed = true;
        source.Dispose();
    }
}
