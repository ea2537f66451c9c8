using System.Buffers;
using System.Security.Cryptography;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace DistAlign.Engine.SafeTensors;

/// <summary>
/// Writes safetensors files: an 8-byte little-endian header length, a JSON header padded with spaces to a
/// multiple of 8 bytes, then the tensors' bytes back to back. Tensors are laid out in ordinal name order and
/// metadata keys are sorted, so the same input always gives the same bytes.
/// </summary>
public static class SafeTensorsWriter
{
    /// <summary>
    /// Writes the file atomically: everything goes to <c>path + ".tmp-&lt;random&gt;"</c> in the same folder, is
    /// flushed to disk, and is then renamed over <paramref name="path"/>. If anything fails, the temporary file
    /// is removed and an existing file at <paramref name="path"/> is left as it was.
    /// </summary>
    /// <exception cref="ArgumentException">Duplicate tensor names, or a null metadata key or value. Nothing is written.</exception>
    public static void Write(string path, IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        var layout = Prepare(tensors, metadata);
        string fullPath = Path.GetFullPath(path);
        string temporaryPath = fullPath + ".tmp-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
        try
        {
            using (var stream = new FileStream(temporaryPath, FileMode.CreateNew, FileAccess.Write, FileShare.None, bufferSize: 1 << 20))
            {
                WriteLayout(stream, layout);
                stream.Flush(flushToDisk: true);
            }
            File.Move(temporaryPath, fullPath, overwrite: true);
        }
        catch
        {
            try { File.Delete(temporaryPath); }
            catch (IOException) { /* best effort; the original error matters more */ }
            catch (UnauthorizedAccessException) { }
            throw;
        }
    }

    /// <summary>Writes the safetensors bytes to <paramref name="destination"/> (not atomic; for streams and tests).</summary>
    public static void Write(Stream destination, IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        ArgumentNullException.ThrowIfNull(destination);
        WriteLayout(destination, Prepare(tensors, metadata));
    }

    /// <summary>The safetensors bytes as an array.</summary>
    public static byte[] ToBytes(IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        using var memory = new MemoryStream();
        Write(memory, tensors, metadata);
        return memory.ToArray();
    }

    private sealed record Layout(byte[] Header, IReadOnlyList<SafeTensor> Tensors);

    private static Layout Prepare(IEnumerable<SafeTensor> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        ArgumentNullException.ThrowIfNull(tensors);
        var ordered = tensors.ToArray();
        foreach (var t in ordered) ArgumentNullException.ThrowIfNull(t, nameof(tensors));
        Array.Sort(ordered, (a, b) => string.CompareOrdinal(a.Name, b.Name));
        for (int i = 1; i < ordered.Length; i++)
            if (ordered[i].Name == ordered[i - 1].Name)
                throw new ArgumentException($"Tensor name '{ordered[i].Name}' appears more than once.", nameof(tensors));

        var json = new ArrayBufferWriter<byte>();
        using (var writer = new Utf8JsonWriter(json, new JsonWriterOptions { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
        {
            writer.WriteStartObject();
            if (metadata is { Count: > 0 })
            {
                writer.WriteStartObject(SafeTensorsFile.MetadataKey);
                foreach (var (key, value) in metadata.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                {
                    if (key is null || value is null)
                        throw new ArgumentException($"Metadata entry '{key}' has a null key or value; safetensors metadata is string to string.", nameof(metadata));
                    writer.WriteString(key, value);
                }
                writer.WriteEndObject();
            }
            long offset = 0;
            foreach (var t in ordered)
            {
                writer.WriteStartObject(t.Name);
                writer.WriteString("dtype", t.DType.HeaderName());
                writer.WriteStartArray("shape");
                foreach (long d in t.Shape) writer.WriteNumberValue(d);
                writer.WriteEndArray();
                writer.WriteStartArray("data_offsets");
                writer.WriteNumberValue(offset);
                offset = checked(offset + t.Data.Length);
                writer.WriteNumberValue(offset);
                writer.WriteEndArray();
                writer.WriteEndObject();
            }
            writer.WriteEndObject();
        }
        int padded = checked((json.WrittenCount + 7) / 8 * 8);
        var header = new byte[padded];
        json.WrittenSpan.CopyTo(header);
        header.AsSpan(json.WrittenCount).Fill((byte)' ');
        return new Layout(header, ordered);
    }

    private static void WriteLayout(Stream destination, Layout layout)
    {
        Span<byte> lengthPrefix = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(lengthPrefix, (ulong)layout.Header.Length);
        destination.Write(lengthPrefix);
        destination.Write(layout.Header);
        foreach (var t in layout.Tensors) destination.Write(t.Data.Span);
    }
}
