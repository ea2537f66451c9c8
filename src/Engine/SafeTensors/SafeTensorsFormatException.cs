namespace DistAlign.Engine.SafeTensors;

/// <summary>Which rule of the safetensors format a file broke.</summary>
public enum SafeTensorsRule
{
    /// <summary>The file is shorter than the 8-byte header-length prefix.</summary>
    FileTooShort,

    /// <summary>The header length points past the end of the file.</summary>
    HeaderLengthBeyondFile,

    /// <summary>The header length exceeds the sanity cap (<see cref="SafeTensorsFile.MaxHeaderBytes"/>).</summary>
    HeaderTooLarge,

    /// <summary>The header is not valid UTF-8.</summary>
    InvalidUtf8,

    /// <summary>The header is not valid JSON.</summary>
    InvalidJson,

    /// <summary>The header's JSON is not an object.</summary>
    HeaderNotObject,

    /// <summary>A tensor entry is not a JSON object.</summary>
    EntryNotObject,

    /// <summary>A tensor entry lacks <c>dtype</c>, <c>shape</c> or <c>data_offsets</c>.</summary>
    MissingField,

    /// <summary>A field has the wrong JSON type.</summary>
    WrongFieldType,

    /// <summary>A tensor entry has a field the format does not define.</summary>
    UnknownField,

    /// <summary>A tensor entry repeats a field.</summary>
    DuplicateField,

    /// <summary>The dtype is not one this library supports.</summary>
    UnknownDType,

    /// <summary>A shape entry is not a non-negative integer, or the element count overflows.</summary>
    InvalidShape,

    /// <summary><c>data_offsets</c> is not two non-negative 64-bit integers.</summary>
    InvalidDataOffsets,

    /// <summary><c>data_offsets</c> begins after it ends.</summary>
    BeginAfterEnd,

    /// <summary>The byte range does not match shape × dtype size.</summary>
    SizeMismatch,

    /// <summary>The byte range runs past the end of the data section.</summary>
    OutOfBounds,

    /// <summary>Two tensors' byte ranges overlap.</summary>
    Overlap,

    /// <summary>Some bytes of the data section belong to no tensor.</summary>
    Gap,

    /// <summary>Two tensors (or two metadata keys) have the same name.</summary>
    DuplicateName,

    /// <summary><c>__metadata__</c> is not an object of string values.</summary>
    InvalidMetadata,
}

/// <summary>
/// The one exception a safetensors file is rejected with. The message names the file, the tensor (when there is
/// one), the byte offset in the file (when relevant) and the rule broken; the same facts are properties.
/// </summary>
public sealed class SafeTensorsFormatException : Exception
{
    /// <summary>Creates the exception; the message is composed from the parts.</summary>
    public SafeTensorsFormatException(string source, SafeTensorsRule rule, string detail, string? tensorName = null,
        long? byteOffset = null, Exception? innerException = null)
        : base(Compose(source, rule, detail, tensorName, byteOffset), innerException)
    {
        SourceName = source;
        Rule = rule;
        TensorName = tensorName;
        ByteOffset = byteOffset;
    }

    /// <summary>The file path, or the name given to an in-memory source.</summary>
    public string SourceName { get; }

    /// <summary>The rule broken.</summary>
    public SafeTensorsRule Rule { get; }

    /// <summary>The offending tensor, when the problem belongs to one.</summary>
    public string? TensorName { get; }

    /// <summary>Offset in the file (from its first byte) where the problem is, when it has a place.</summary>
    public long? ByteOffset { get; }

    private static string Compose(string source, SafeTensorsRule rule, string detail, string? tensorName, long? byteOffset)
    {
        string where = (tensorName, byteOffset) switch
        {
            (not null, not null) => $"tensor '{tensorName}' at byte {byteOffset}: ",
            (not null, null) => $"tensor '{tensorName}': ",
            (null, not null) => $"at byte {byteOffset}: ",
            _ => "",
        };
        return $"Invalid safetensors file '{source}': {where}{detail} [rule: {rule}]";
    }
}
