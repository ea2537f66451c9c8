using System.Text.Json;

namespace DistAlign.Alignment.Data;

/// <summary>
/// Reads and writes preference pairs as JSONL in TRL's layout: one JSON object per line,
/// <c>{"prompt": "...", "chosen": "...", "rejected": "..."}</c>.
/// </summary>
/// <remarks>
/// <para>The rules (each break throws <see cref="DatasetFormatException"/> naming source, line and rule):</para>
/// <list type="bullet">
/// <item>UTF-8. A byte-order mark is tolerated at the start of the file only; at the start of a later line
/// it is <see cref="DatasetRule.MisplacedByteOrderMark"/>. Invalid UTF-8 anywhere is <see cref="DatasetRule.InvalidUtf8"/>.</item>
/// <item>Lines end with LF or CRLF; the last line may lack one. Line numbers count physical lines, 1-based.</item>
/// <item>Blank lines (empty, or only spaces, tabs and CR) are skipped, but still counted for line numbers.</item>
/// <item>Every other line is exactly one JSON object (no comments, no trailing commas, no second value),
/// with no top-level key twice.</item>
/// <item><c>prompt</c>, <c>chosen</c> and <c>rejected</c> must be present and be strings. Other keys (ids, scores,
/// metadata) are ignored. Key names are case-sensitive.</item>
/// <item><c>chosen</c> and <c>rejected</c> must not be empty or whitespace-only. <c>prompt</c> may be empty:
/// TRL accepts prompt-less pairs, and the tokenizer prepends <c>&lt;|endoftext|&gt;</c> to every prompt, so an
/// empty prompt still gives the model one token of context (an unconditional preference).</item>
/// <item>A line is at most <see cref="DefaultMaxLineBytes"/> bytes (16 MiB, without its line ending) unless the
/// caller sets another cap; a longer line fails as soon as the cap is passed, without buffering the rest.</item>
/// <item>At least one example: an empty file, or one with only blank lines, is <see cref="DatasetRule.NoExamples"/>.</item>
/// </list>
/// <para>Loading is all-or-nothing: the whole list, or an exception and nothing. Errors from the file system
/// (missing file, permissions) surface as the usual <see cref="IOException"/>s, not as format errors.</para>
/// </remarks>
public static class PreferenceJsonl
{
    /// <summary>Default cap on one line's length in bytes: 16 MiB.</summary>
    public const int DefaultMaxLineBytes = 16 * 1024 * 1024;

    /// <summary>Loads every pair from a file; errors name the file as <paramref name="path"/> was given.</summary>
    public static List<PreferenceExample> Load(string path, int maxLineBytes = DefaultMaxLineBytes) =>
        JsonlReader.ReadFile(path, maxLineBytes, Map);

    /// <summary>Parses pairs from UTF-8 bytes; <paramref name="sourceName"/> is used in error messages.</summary>
    public static List<PreferenceExample> Parse(Stream stream, string sourceName, int maxLineBytes = DefaultMaxLineBytes) =>
        JsonlReader.Read(stream, sourceName, maxLineBytes, Map);

    /// <summary>
    /// Parses pairs from already-decoded text. The same rules apply; "invalid UTF-8" here means text with an
    /// unpaired surrogate, and the cap counts the UTF-8 length of each line.
    /// </summary>
    public static List<PreferenceExample> Parse(TextReader reader, string sourceName, int maxLineBytes = DefaultMaxLineBytes) =>
        JsonlReader.Read(reader, sourceName, maxLineBytes, Map);

    /// <summary>
    /// Writes pairs as JSONL (UTF-8, no BOM, LF endings, keys in the order prompt, chosen, rejected; the
    /// <see cref="PreferenceExample.Line"/> is not written). Atomic: the lines go to a temporary file in the same
    /// folder, which is flushed to disk and then renamed over <paramref name="path"/>, so a crash leaves either the
    /// old file or the new one. Examples the loader would reject (empty list, empty or whitespace-only response,
    /// text with an unpaired surrogate) are refused with <see cref="ArgumentException"/> before anything is written,
    /// so what is written always loads back equal (up to <see cref="PreferenceExample.Line"/>).
    /// </summary>
    public static void Write(string path, IReadOnlyList<PreferenceExample> examples)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("there are no examples to write; the loader rejects an empty file", nameof(examples));
        for (int i = 0; i < examples.Count; i++)
        {
            PreferenceExample e = examples[i] ?? throw new ArgumentException($"example {i} is null", nameof(examples));
            JsonlWriter.CheckText(e.Prompt, "prompt", i, allowEmpty: true);
            JsonlWriter.CheckText(e.Chosen, "chosen", i, allowEmpty: false);
            JsonlWriter.CheckText(e.Rejected, "rejected", i, allowEmpty: false);
        }
        JsonlWriter.WriteAtomic(path, examples, static (writer, e) =>
        {
            writer.WriteString("prompt", e.Prompt);
            writer.WriteString("chosen", e.Chosen);
            writer.WriteString("rejected", e.Rejected);
        });
    }

    private static PreferenceExample Map(JsonElement root, JsonlReader.LineContext at)
    {
        string prompt = at.RequiredString(root, "prompt");
        string chosen = at.RequiredText(root, "chosen");
        string rejected = at.RequiredText(root, "rejected");
        return new PreferenceExample(prompt, chosen, rejected, at.Line);
    }
}
