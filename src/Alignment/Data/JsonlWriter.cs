using System.Text.Encodings.Web;
using System.Text.Json;

namespace DistAlign.Alignment.Data;

/// <summary>Atomic JSONL writing shared by <see cref="PreferenceJsonl"/> and <see cref="PromptJsonl"/>.</summary>
internal static class JsonlWriter
{
    private static readonly JsonWriterOptions Options = new()
    {
        // Readable non-ASCII text; quotes, backslashes and control characters are still escaped, so each
        // object stays on one line.
        Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping,
        Indented = false,
    };

    public static void CheckText(string? text, string field, int index, bool allowEmpty)
    {
        if (text is null) throw new ArgumentException($"example {index}: {field} is null", "examples");
        if (!allowEmpty && string.IsNullOrWhiteSpace(text))
            throw new ArgumentException($"example {index}: {field} is empty or whitespace-only, which the loader rejects", "examples");
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1])) { i++; continue; }
            if (char.IsSurrogate(c))
                throw new ArgumentException($"example {index}: {field} has an unpaired surrogate at character {i + 1}", "examples");
        }
    }

    public static void WriteAtomic<T>(string path, IReadOnlyList<T> items, Action<Utf8JsonWriter, T> writeFields)
    {
        string full = Path.GetFullPath(path);
        string folder = Path.GetDirectoryName(full) ?? ".";
        string temp = Path.Combine(folder, $".{Path.GetFileName(full)}.{Guid.NewGuid():N}.tmp");
        try
        {
            using (var file = new FileStream(temp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 64 * 1024))
            {
                var buffer = new MemoryStream();
                foreach (T item in items)
                {
                    buffer.SetLength(0);
                    using (var writer = new Utf8JsonWriter(buffer, Options))
                    {
                        writer.WriteStartObject();
                        writeFields(writer, item);
                        writer.WriteEndObject();
                    }
                    if (buffer.Length > PreferenceJsonl.DefaultMaxLineBytes)
                        throw new ArgumentException(
                            $"an example is {buffer.Length:N0} bytes as JSON, over the loader's line cap of {PreferenceJsonl.DefaultMaxLineBytes:N0}", "examples");
                    buffer.WriteByte((byte)'\n');
                    file.Write(buffer.GetBuffer(), 0, (int)buffer.Length);
                }
                file.Flush(flushToDisk: true);
            }
            File.Move(temp, full, overwrite: true);
        }
        catch
        {
            try { File.Delete(temp); } catch (IOException) { } catch (UnauthorizedAccessException) { }
            throw;
        }
    }
}
