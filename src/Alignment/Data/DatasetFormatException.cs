namespace DistAlign.Alignment.Data;

/// <summary>The rule a dataset line broke; carried by <see cref="DatasetFormatException"/>.</summary>
public enum DatasetRule
{
    /// <summary>The line is not valid JSON (syntax error, trailing text, comments, nesting deeper than 64).</summary>
    InvalidJson,
    /// <summary>The line is valid JSON but not an object (an array, string, number, boolean or null).</summary>
    NotAnObject,
    /// <summary>A required field (<c>prompt</c>, <c>chosen</c>, <c>rejected</c>) is absent.</summary>
    MissingField,
    /// <summary>A required field is present but is not a JSON string (e.g. a number, null or array).</summary>
    WrongType,
    /// <summary><c>chosen</c> or <c>rejected</c> is empty or whitespace-only.</summary>
    EmptyText,
    /// <summary>The line's bytes are not valid UTF-8 (or, read from a <see cref="TextReader"/>, its text has an unpaired surrogate).</summary>
    InvalidUtf8,
    /// <summary>A string uses a <c>\u</c> escape that is an unpaired UTF-16 surrogate, so it is not Unicode text.</summary>
    InvalidUnicode,
    /// <summary>The object names the same top-level key twice (which value is meant is ambiguous).</summary>
    DuplicateKey,
    /// <summary>The line is longer than the byte cap (16 MiB by default).</summary>
    TooLong,
    /// <summary>A UTF-8 byte-order mark starts a line other than the first.</summary>
    MisplacedByteOrderMark,
    /// <summary>The file holds no examples (it is empty or has only blank lines).</summary>
    NoExamples,
    /// <summary>A text contains the literal <c>&lt;|endoftext|&gt;</c>, which the tokenizer would turn into the special token.</summary>
    ReservedToken,
}

/// <summary>
/// A dataset file broke a format rule. Nothing was returned: loaders throw on the first bad line and
/// hand back either every example or none.
/// </summary>
/// <remarks>The message reads <c>source:line: what is wrong</c>, e.g.
/// <c>prefs.jsonl:17: field 'chosen' must be a string, got number</c>; for a whole-file problem
/// (<see cref="Line"/> = 0) it reads <c>source: what is wrong</c>.</remarks>
public sealed class DatasetFormatException : FormatException
{
    public DatasetFormatException(string sourceName, int line, DatasetRule rule, string detail, Exception? inner = null)
        : base(Compose(sourceName, line, detail), inner)
    {
        SourceName = sourceName;
        Line = line;
        Rule = rule;
        Detail = detail;
    }

    /// <summary>The file path or stream name the loader was given.</summary>
    public string SourceName { get; }

    /// <summary>1-based physical line (blank lines count); 0 when the problem is the whole file.</summary>
    public int Line { get; }

    /// <summary>Which rule was broken.</summary>
    public DatasetRule Rule { get; }

    /// <summary>The message without the <c>source:line:</c> prefix.</summary>
    public string Detail { get; }

    private static string Compose(string sourceName, int line, string detail) =>
        line > 0 ? $"{sourceName}:{line}: {detail}" : $"{sourceName}: {detail}";
}
