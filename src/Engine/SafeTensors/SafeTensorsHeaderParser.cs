using System.Text;
using System.Text.Json;

namespace DistAlign.Engine.SafeTensors;

/// <summary>
/// Parses and validates a safetensors JSON header with a forward-only reader, so every rejection can point at a
/// byte offset. Checks structure (types, required and unknown fields, duplicates) while reading, then the byte
/// ranges (size, bounds, overlap, gaps) once all entries are known.
/// </summary>
internal ref struct SafeTensorsHeaderParser
{
    /// <summary>Header bytes start here in the file: right after the 8-byte length prefix.</summary>
    private const int HeaderFileOffset = 8;

    private readonly string source;
    private Utf8JsonReader reader;

    private SafeTensorsHeaderParser(string source, ReadOnlySpan<byte> header)
    {
        this.source = source;
        reader = new Utf8JsonReader(header, new JsonReaderOptions { CommentHandling = JsonCommentHandling.Disallow, MaxDepth = 8 });
    }

    public static (List<SafeTensorInfo> Tensors, Dictionary<string, string> Metadata) Parse(
        string source, ReadOnlySpan<byte> header, long dataSectionLength)
    {
        CheckUtf8(source, header);
        var parser = new SafeTensorsHeaderParser(source, header);
        List<SafeTensorInfo> tensors;
        Dictionary<string, string> metadata;
        try
        {
            (tensors, metadata) = parser.ParseDocument();
        }
        catch (JsonException e)
        {
            // System.Text.Json appends its own position and a hint about reader options; keep only the reason.
            string reason = e.Message;
            int cut = reason.IndexOf(" LineNumber:", StringComparison.Ordinal);
            if (cut >= 0) reason = reason[..cut];
            reason = reason.Replace(" Change the reader options.", "", StringComparison.Ordinal).Trim();
            long? offset = e.LineNumber == 0 && e.BytePositionInLine is long column ? HeaderFileOffset + column : null;
            string where = offset is null ? $" (header line {e.LineNumber + 1}, byte {e.BytePositionInLine} of that line)" : "";
            throw new SafeTensorsFormatException(source, SafeTensorsRule.InvalidJson,
                $"the header is not valid JSON{where}: {reason}", byteOffset: offset, innerException: e);
        }
        CheckRanges(source, tensors, dataSectionLength, HeaderFileOffset + header.Length);
        return (tensors, metadata);
    }

    private static void CheckUtf8(string source, ReadOnlySpan<byte> header)
    {
        if (System.Text.Unicode.Utf8.IsValid(header)) return;
        int offset = 0;
        while (offset < header.Length)
        {
            var status = System.Text.Rune.DecodeFromUtf8(header[offset..], out _, out int consumed);
            if (status != System.Buffers.OperationStatus.Done) break;
            offset += consumed;
        }
        throw new SafeTensorsFormatException(source, SafeTensorsRule.InvalidUtf8,
            $"the header is not valid UTF-8 (bad byte 0x{header[offset]:X2})", byteOffset: HeaderFileOffset + offset);
    }

    private long Here => HeaderFileOffset + reader.TokenStartIndex;

    private SafeTensorsFormatException Error(SafeTensorsRule rule, string detail, string? tensor = null, long? offset = null) =>
        new(source, rule, detail, tensor, offset ?? Here);

    private (List<SafeTensorInfo>, Dictionary<string, string>) ParseDocument()
    {
        if (!reader.Read())
            throw new SafeTensorsFormatException(source, SafeTensorsRule.InvalidJson, "the header is empty; it must be a JSON object", byteOffset: HeaderFileOffset);
        if (reader.TokenType != JsonTokenType.StartObject)
            throw Error(SafeTensorsRule.HeaderNotObject, $"the header must be a JSON object, but it is {Describe(reader.TokenType)}");

        var tensors = new List<SafeTensorInfo>();
        var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
        var names = new HashSet<string>(StringComparer.Ordinal);
        while (Next() != JsonTokenType.EndObject)
        {
            long nameOffset = Here;
            string name = ReadString();
            if (!names.Add(name))
                throw Error(SafeTensorsRule.DuplicateName,
                    name == SafeTensorsFile.MetadataKey ? "the header has two __metadata__ entries" : "the name appears more than once in the header",
                    name == SafeTensorsFile.MetadataKey ? null : name, nameOffset);
            if (name == SafeTensorsFile.MetadataKey) ParseMetadata(metadata);
            else tensors.Add(ParseEntry(name, nameOffset));
        }
        // Anything but whitespace after the object makes the reader throw here.
        if (reader.Read())
            throw Error(SafeTensorsRule.InvalidJson, "unexpected content after the header object");
        return (tensors, metadata);
    }

    /// <summary>The current string token, unescaped; a lone surrogate escape (e.g. \ud800) is invalid JSON text.</summary>
    private string ReadString()
    {
        try
        {
            return reader.GetString()!;
        }
        catch (InvalidOperationException e)
        {
            throw new SafeTensorsFormatException(source, SafeTensorsRule.InvalidJson,
                "the header contains a string escape that is not valid Unicode (a lone surrogate)", byteOffset: Here, innerException: e);
        }
    }

    private JsonTokenType Next()
    {
        if (!reader.Read())
            throw new SafeTensorsFormatException(source, SafeTensorsRule.InvalidJson, "the header JSON ends unexpectedly",
                byteOffset: HeaderFileOffset + reader.BytesConsumed);
        return reader.TokenType;
    }

    private void ParseMetadata(Dictionary<string, string> metadata)
    {
        if (Next() != JsonTokenType.StartObject)
            throw Error(SafeTensorsRule.InvalidMetadata, $"__metadata__ must be an object of strings, but it is {Describe(reader.TokenType)}");
        while (Next() != JsonTokenType.EndObject)
        {
            long keyOffset = Here;
            string key = ReadString();
            if (Next() != JsonTokenType.String)
                throw Error(SafeTensorsRule.InvalidMetadata, $"__metadata__ value for key '{key}' must be a string, but it is {Describe(reader.TokenType)}");
            if (!metadata.TryAdd(key, ReadString()))
                throw Error(SafeTensorsRule.DuplicateName, $"__metadata__ key '{key}' appears more than once", offset: keyOffset);
        }
    }

    private SafeTensorInfo ParseEntry(string name, long nameOffset)
    {
        if (Next() != JsonTokenType.StartObject)
            throw Error(SafeTensorsRule.EntryNotObject,
                $"the entry must be an object with dtype, shape and data_offsets, but it is {Describe(reader.TokenType)}", name);

        SafeTensorDType? dtype = null;
        long[]? shape = null;
        long[]? offsets = null;
        while (Next() != JsonTokenType.EndObject)
        {
            string field = ReadString();
            long fieldOffset = Here;
            switch (field)
            {
                case "dtype":
                    if (dtype is not null) throw Error(SafeTensorsRule.DuplicateField, "field 'dtype' appears twice", name, fieldOffset);
                    dtype = ParseDType(name);
                    break;
                case "shape":
                    if (shape is not null) throw Error(SafeTensorsRule.DuplicateField, "field 'shape' appears twice", name, fieldOffset);
                    shape = ParseIntegerArray(name, "shape", SafeTensorsRule.InvalidShape).ToArray();
                    break;
                case "data_offsets":
                    if (offsets is not null) throw Error(SafeTensorsRule.DuplicateField, "field 'data_offsets' appears twice", name, fieldOffset);
                    var list = ParseIntegerArray(name, "data_offsets", SafeTensorsRule.InvalidDataOffsets);
                    if (list.Count != 2)
                        throw Error(SafeTensorsRule.InvalidDataOffsets, $"data_offsets must hold exactly two integers [begin, end], but it holds {list.Count}", name, fieldOffset);
                    offsets = list.ToArray();
                    break;
                default:
                    throw Error(SafeTensorsRule.UnknownField, $"unknown field '{field}'; an entry has only dtype, shape and data_offsets", name, fieldOffset);
            }
        }
        if (dtype is null) throw Error(SafeTensorsRule.MissingField, "the entry has no 'dtype' field", name, nameOffset);
        if (shape is null) throw Error(SafeTensorsRule.MissingField, "the entry has no 'shape' field", name, nameOffset);
        if (offsets is null) throw Error(SafeTensorsRule.MissingField, "the entry has no 'data_offsets' field", name, nameOffset);

        long count = 1;
        foreach (long d in shape)
        {
            if (d != 0 && count > long.MaxValue / d)
                throw Error(SafeTensorsRule.InvalidShape, $"the element count of shape [{string.Join(", ", shape)}] overflows 64 bits", name, nameOffset);
            count *= d;
        }
        int elementSize = dtype.Value.SizeInBytes();
        if (count > long.MaxValue / elementSize)
            throw Error(SafeTensorsRule.InvalidShape, $"the byte size of shape [{string.Join(", ", shape)}] of {dtype.Value.HeaderName()} overflows 64 bits", name, nameOffset);
        return new SafeTensorInfo(name, dtype.Value, shape, offsets[0], offsets[1], count);
    }

    private SafeTensorDType ParseDType(string name)
    {
        if (Next() != JsonTokenType.String)
            throw Error(SafeTensorsRule.WrongFieldType, $"dtype must be a string, but it is {Describe(reader.TokenType)}", name);
        string text = ReadString();
        if (!SafeTensorDTypes.TryParse(text, out var dtype))
            throw Error(SafeTensorsRule.UnknownDType, $"dtype '{text}' is not supported; supported dtypes: {SafeTensorDTypes.SupportedNames}", name);
        return dtype;
    }

    private List<long> ParseIntegerArray(string name, string field, SafeTensorsRule rule)
    {
        if (Next() != JsonTokenType.StartArray)
            throw Error(SafeTensorsRule.WrongFieldType, $"{field} must be an array of integers, but it is {Describe(reader.TokenType)}", name);
        var values = new List<long>();
        while (Next() != JsonTokenType.EndArray)
        {
            if (reader.TokenType != JsonTokenType.Number)
                throw Error(rule, $"{field}[{values.Count}] must be a non-negative integer, but it is {Describe(reader.TokenType)}", name);
            string raw = Encoding.UTF8.GetString(reader.ValueSpan);
            if (!reader.TryGetInt64(out long value) || raw.Contains('.') || raw.Contains('e') || raw.Contains('E'))
                throw Error(rule, $"{field}[{values.Count}] must be a non-negative integer that fits in 64 bits, but it is {raw}", name);
            if (value < 0)
                throw Error(rule, $"{field}[{values.Count}] must be non-negative, but it is {value}", name);
            values.Add(value);
        }
        return values;
    }

    private static void CheckRanges(string source, List<SafeTensorInfo> tensors, long dataSectionLength, long dataSectionFileOffset)
    {
        foreach (var t in tensors)
        {
            long fileOffset = dataSectionFileOffset + t.DataBegin;
            string range = $"data_offsets [{t.DataBegin}, {t.DataEnd}]";
            if (t.DataBegin > t.DataEnd)
                throw new SafeTensorsFormatException(source, SafeTensorsRule.BeginAfterEnd, $"{range} begins after it ends", t.Name, fileOffset);
            long expected = t.ElementCount * t.DType.SizeInBytes();
            if (t.DataEnd - t.DataBegin != expected)
                throw new SafeTensorsFormatException(source, SafeTensorsRule.SizeMismatch,
                    $"shape [{string.Join(", ", t.Shape)}] of {t.DType.HeaderName()} needs {expected} bytes, but {range} cover {t.DataEnd - t.DataBegin}",
                    t.Name, fileOffset);
            if (t.DataEnd > dataSectionLength)
                throw new SafeTensorsFormatException(source, SafeTensorsRule.OutOfBounds,
                    $"{range} run past the end of the {dataSectionLength}-byte data section (the file may be truncated)", t.Name, fileOffset);
        }

        // The ranges must tile the data section exactly: sorted by position, each starts where the previous ended.
        tensors.Sort((a, b) => a.DataBegin != b.DataBegin ? a.DataBegin.CompareTo(b.DataBegin) : a.DataEnd.CompareTo(b.DataEnd));
        long cursor = 0;
        SafeTensorInfo? previous = null;
        foreach (var t in tensors)
        {
            if (t.DataBegin < cursor)
                throw new SafeTensorsFormatException(source, SafeTensorsRule.Overlap,
                    $"data_offsets [{t.DataBegin}, {t.DataEnd}] overlap tensor '{previous!.Name}' at [{previous.DataBegin}, {previous.DataEnd}]",
                    t.Name, dataSectionFileOffset + t.DataBegin);
            if (t.DataBegin > cursor)
                throw new SafeTensorsFormatException(source, SafeTensorsRule.Gap,
                    $"data bytes [{cursor}, {t.DataBegin}) before this tensor belong to no tensor",
                    t.Name, dataSectionFileOffset + cursor);
            cursor = t.DataEnd;
            previous = t;
        }
        if (cursor != dataSectionLength)
            throw new SafeTensorsFormatException(source, SafeTensorsRule.Gap,
                $"data bytes [{cursor}, {dataSectionLength}) at the end of the file belong to no tensor",
                byteOffset: dataSectionFileOffset + cursor);
    }

    private static string Describe(JsonTokenType token) => token switch
    {
        JsonTokenType.StartObject => "an object",
        JsonTokenType.StartArray => "an array",
        JsonTokenType.String => "a string",
        JsonTokenType.Number => "a number",
        JsonTokenType.True or JsonTokenType.False => "a boolean",
        JsonTokenType.Null => "null",
        _ => token.ToString(),
    };
}
