using System.Text;
using System.Text.Json;
using System.Text.Unicode;

namespace DistAlign.Alignment.Data;

/// <summary>
/// The line layer shared by the JSONL loaders: splits a byte stream (or text) into physical lines,
/// applies the byte cap, the BOM, CRLF and blank-line rules, checks UTF-8, parses each line as one
/// JSON object and hands it to a mapper. Any broken rule throws <see cref="DatasetFormatException"/>.
/// </summary>
internal static class JsonlReader
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private static readonly JsonDocumentOptions DocumentOptions = new()
    {
        AllowTrailingCommas = false,
        CommentHandling = JsonCommentHandling.Disallow,
        MaxDepth = 64,
    };

    /// <summary>Maps a parsed line (an object with no duplicate top-level keys) to an example.</summary>
    public delegate T Mapper<T>(JsonElement root, LineContext at);

    /// <summary>Where a line came from, with helpers that throw the right error for it.</summary>
    public readonly record struct LineContext(string SourceName, int Line)
    {
        public DatasetFormatException Error(DatasetRule rule, string detail) => new(SourceName, Line, rule, detail);

        /// <summary>The string value of a required field, or the MissingField / WrongType error.</summary>
        public string RequiredString(JsonElement root, string field)
        {
            if (!root.TryGetProperty(field, out JsonElement value))
                throw Error(DatasetRule.MissingField, $"missing field '{field}' ({DescribeKeys(root)})");
            if (value.ValueKind != JsonValueKind.String)
                throw Error(DatasetRule.WrongType, $"field '{field}' must be a string, got {KindName(value.ValueKind)}");
            return value.GetString()!;
        }

        /// <summary>Like <see cref="RequiredString"/>, and the text must not be empty or whitespace-only.</summary>
        public string RequiredText(JsonElement root, string field)
        {
            string text = RequiredString(root, field);
            if (string.IsNullOrWhiteSpace(text))
                throw Error(DatasetRule.EmptyText, text.Length == 0
                    ? $"field '{field}' is empty"
                    : $"field '{field}' is whitespace-only");
            return text;
        }
    }

    /// <summary>Reads every line of the file at <paramref name="path"/> (named as given in errors) with <paramref name="map"/>.</summary>
    public static List<T> ReadFile<T>(string path, int maxLineBytes, Mapper<T> map)
    {
        ArgumentNullException.ThrowIfNull(path);
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read, 1, FileOptions.SequentialScan);
        return Read(stream, path, maxLineBytes, map);
    }

    public static List<T> Read<T>(Stream stream, string sourceName, int maxLineBytes, Mapper<T> map)
    {
        ArgumentNullException.ThrowIfNull(stream);
        Validate(sourceName, maxLineBytes);
        ArgumentNullException.ThrowIfNull(map);

        var results = new List<T>();
        byte[] chunk = new byte[64 * 1024];
        byte[] line = new byte[4 * 1024];
        int length = 0;
        int lineNumber = 1;
        bool pending = false; // bytes seen since the last newline (so a final unterminated line is processed)
        int read;
        while ((read = stream.Read(chunk, 0, chunk.Length)) > 0)
        {
            int start = 0;
            while (start < read)
            {
                int newline = Array.IndexOf(chunk, (byte)'\n', start, read - start);
                int end = newline < 0 ? read : newline;
                int add = end - start;
                // One byte of slack for the '\r' of a CRLF, which is not part of the line.
                if ((long)length + add > (long)maxLineBytes + 1)
                    throw TooLong(sourceName, lineNumber, maxLineBytes);
                if (length + add > line.Length)
                    Array.Resize(ref line, (int)Math.Min(Math.Max((long)line.Length * 2, (long)length + add), (long)maxLineBytes + 1));
                Buffer.BlockCopy(chunk, start, line, length, add);
                length += add;
                pending = true;
                if (newline < 0) break;
                ProcessLine(line, length, sourceName, lineNumber, maxLineBytes, map, results);
                lineNumber = checked(lineNumber + 1);
                length = 0;
                pending = false;
                start = newline + 1;
            }
        }
        if (pending) ProcessLine(line, length, sourceName, lineNumber, maxLineBytes, map, results);
        if (results.Count == 0)
            throw new DatasetFormatException(sourceName, 0, DatasetRule.NoExamples, "no examples: the input is empty or has only blank lines");
        return results;
    }

    public static List<T> Read<T>(TextReader reader, string sourceName, int maxLineBytes, Mapper<T> map)
    {
        ArgumentNullException.ThrowIfNull(reader);
        Validate(sourceName, maxLineBytes);
        ArgumentNullException.ThrowIfNull(map);

        var results = new List<T>();
        char[] chunk = new char[16 * 1024];
        var line = new StringBuilder();
        long utf8Length = 0; // the line's length once encoded, for the same cap as the byte reader
        int lineNumber = 1;
        bool pending = false;
        int read;
        while ((read = reader.Read(chunk, 0, chunk.Length)) > 0)
        {
            for (int i = 0; i < read; i++)
            {
                char c = chunk[i];
                if (c == '\n')
                {
                    ProcessTextLine(line, sourceName, lineNumber, maxLineBytes, map, results);
                    lineNumber = checked(lineNumber + 1);
                    line.Clear();
                    utf8Length = 0;
                    pending = false;
                    continue;
                }
                utf8Length += c < 0x80 ? 1 : c < 0x800 ? 2 : char.IsSurrogate(c) ? 2 : 3;
                if (utf8Length > (long)maxLineBytes + 1)
                    throw TooLong(sourceName, lineNumber, maxLineBytes);
                line.Append(c);
                pending = true;
            }
        }
        if (pending) ProcessTextLine(line, sourceName, lineNumber, maxLineBytes, map, results);
        if (results.Count == 0)
            throw new DatasetFormatException(sourceName, 0, DatasetRule.NoExamples, "no examples: the input is empty or has only blank lines");
        return results;
    }

    private static void ProcessTextLine<T>(StringBuilder line, string sourceName, int lineNumber, int maxLineBytes,
        Mapper<T> map, List<T> results)
    {
        string text = line.ToString();
        byte[] bytes;
        try
        {
            bytes = StrictUtf8.GetBytes(text);
        }
        catch (EncoderFallbackException e)
        {
            int at = Math.Max(0, e.Index);
            throw new DatasetFormatException(sourceName, lineNumber, DatasetRule.InvalidUtf8,
                $"text is not valid Unicode: unpaired surrogate U+{(int)text[Math.Min(at, text.Length - 1)]:X4} at character {at + 1}", e);
        }
        ProcessLine(bytes, bytes.Length, sourceName, lineNumber, maxLineBytes, map, results);
    }

    private static void ProcessLine<T>(byte[] buffer, int length, string sourceName, int lineNumber, int maxLineBytes,
        Mapper<T> map, List<T> results)
    {
        var at = new LineContext(sourceName, lineNumber);
        if (length > 0 && buffer[length - 1] == (byte)'\r') length--;
        if (length > maxLineBytes) throw TooLong(sourceName, lineNumber, maxLineBytes);

        int offset = 0;
        if (length >= 3 && buffer[0] == 0xEF && buffer[1] == 0xBB && buffer[2] == 0xBF)
        {
            if (lineNumber != 1)
                throw at.Error(DatasetRule.MisplacedByteOrderMark,
                    "byte-order mark (EF BB BF) at the start of a line; it is allowed only at the start of the file");
            offset = 3;
        }
        var bytes = new ReadOnlySpan<byte>(buffer, offset, length - offset);
        if (IsBlank(bytes)) return;

        if (!Utf8.IsValid(bytes))
        {
            int bad = FirstInvalidUtf8(bytes);
            throw at.Error(DatasetRule.InvalidUtf8,
                $"invalid UTF-8 at byte {offset + bad + 1} of the line (0x{bytes[bad]:X2})");
        }

        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(new ReadOnlyMemory<byte>(buffer, offset, length - offset), DocumentOptions);
        }
        catch (JsonException e)
        {
            long column = e.BytePositionInLine is long p ? offset + p + 1 : 0;
            throw new DatasetFormatException(sourceName, lineNumber, DatasetRule.InvalidJson,
                $"invalid JSON{(column > 0 ? $" at byte {column}" : "")}: {TrimJsonMessage(e.Message)}", e);
        }
        using (document)
        {
            JsonElement root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
                throw at.Error(DatasetRule.NotAnObject, $"expected a JSON object, got {KindName(root.ValueKind)}");
            try
            {
                RejectDuplicateKeys(root, at);
                results.Add(map(root, at));
            }
            catch (InvalidOperationException e)
            {
                // System.Text.Json accepts a lone "\ud800" escape as JSON but cannot turn it into a string.
                throw new DatasetFormatException(sourceName, lineNumber, DatasetRule.InvalidUnicode,
                    "a string has a \\u escape that is an unpaired surrogate, so it is not Unicode text", e);
            }
        }
    }

    private static void RejectDuplicateKeys(JsonElement root, LineContext at)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (JsonProperty property in root.EnumerateObject())
        {
            if (!seen.Add(property.Name))
                throw at.Error(DatasetRule.DuplicateKey, $"key {Quote(property.Name)} appears more than once");
        }
    }

    private static bool IsBlank(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
            if (b != (byte)' ' && b != (byte)'\t' && b != (byte)'\r') return false;
        return true;
    }

    private static int FirstInvalidUtf8(ReadOnlySpan<byte> bytes)
    {
        int i = 0;
        while (i < bytes.Length)
        {
            if (Rune.DecodeFromUtf8(bytes[i..], out _, out int consumed) != System.Buffers.OperationStatus.Done) return i;
            i += consumed;
        }
        return 0; // not reached for invalid input
    }

    private static string TrimJsonMessage(string message)
    {
        // System.Text.Json appends " LineNumber: 0 | BytePositionInLine: n." (positions within this line only).
        int cut = message.IndexOf(" LineNumber:", StringComparison.Ordinal);
        return (cut >= 0 ? message[..cut] : message).TrimEnd();
    }

    private static DatasetFormatException TooLong(string sourceName, int lineNumber, int maxLineBytes) =>
        new(sourceName, lineNumber, DatasetRule.TooLong,
            $"line is longer than the cap of {maxLineBytes:N0} bytes ({maxLineBytes / (1024.0 * 1024.0):0.##} MiB)");

    private static void Validate(string sourceName, int maxLineBytes)
    {
        ArgumentNullException.ThrowIfNull(sourceName);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxLineBytes, 1);
    }

    /// <summary>A key for a message: quoted, control characters escaped, at most 40 characters.</summary>
    private static string Quote(string name)
    {
        const int Max = 40;
        var text = new StringBuilder("'");
        foreach (char c in name.Length > Max ? name[..Max] : name)
            text.Append(char.IsControl(c) ? $"\\u{(int)c:x4}" : c.ToString());
        return text.Append(name.Length > Max ? "…'" : "'").ToString();
    }

    internal static string KindName(JsonValueKind kind) => kind switch
    {
        JsonValueKind.Object => "object",
        JsonValueKind.Array => "array",
        JsonValueKind.String => "string",
        JsonValueKind.Number => "number",
        JsonValueKind.True or JsonValueKind.False => "boolean",
        JsonValueKind.Null => "null",
        _ => "nothing",
    };

    private static string DescribeKeys(JsonElement root)
    {
        var names = root.EnumerateObject().Select(p => Quote(p.Name)).Take(6).ToList();
        if (names.Count == 0) return "the object is empty";
        int total = root.EnumerateObject().Count();
        return "keys present: " + string.Join(", ", names) + (total > names.Count ? $", … ({total} in all)" : "");
    }
}
