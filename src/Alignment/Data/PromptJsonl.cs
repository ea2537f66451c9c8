using System.Text.Json;

namespace DistAlign.Alignment.Data;

/// <summary>
/// Reads and writes prompt datasets as JSONL: one <c>{"prompt": "..."}</c> object per line.
/// </summary>
/// <remarks>
/// The same line rules as <see cref="PreferenceJsonl"/> (UTF-8, BOM on the first line only, LF or CRLF, blank
/// lines skipped but counted, one object per line, no duplicate keys, other keys ignored, 16 MiB line cap,
/// at least one example, all-or-nothing). The only required field is <c>prompt</c>, a string, which may be
/// empty (sampling from the <c>&lt;|endoftext|&gt;</c> start token alone is unconditional generation).
/// </remarks>
public static class PromptJsonl
{
    /// <summary>Loads every prompt from a file; errors name the file as <paramref name="path"/> was given.</summary>
    public static List<PromptExample> Load(string path, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        JsonlReader.ReadFile(path, maxLineBytes, Map);

    /// <summary>Parses prompts from UTF-8 bytes; <paramref name="sourceName"/> is used in error messages.</summary>
    public static List<PromptExample> Parse(Stream stream, string sourceName, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        JsonlReader.Read(stream, sourceName, maxLineBytes, Map);

    /// <summary>Parses prompts from already-decoded text (see <see cref="PreferenceJsonl.Parse(TextReader, string, int)"/>).</summary>
    public static List<PromptExample> Parse(TextReader reader, string sourceName, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        JsonlReader.Read(reader, sourceName, maxLineBytes, Map);

    /// <summary>Writes prompts as JSONL, atomically, like <see cref="PreferenceJsonl.Write"/>.</summary>
    public static void Write(string path, IReadOnlyList<PromptExample> examples)
    {
        ArgumentNullException.ThrowIfNull(path);
        ArgumentNullException.ThrowIfNull(examples);
        if (examples.Count == 0) throw new ArgumentException("there are no examples to write; the loader rejects an empty file", nameof(examples));
        for (int i = 0; i < examples.Count; i++)
        {
            PromptExample e = examples[i] ?? throw new ArgumentException($"example {i} is null", nameof(examples));
            JsonlWriter.CheckText(e.Prompt, "prompt", i, allowEmpty: true);
        }
        JsonlWriter.WriteAtomic(path, examples, static (writer, e) => writer.WriteString("prompt", e.Prompt));
    }

    private static PromptExample Map(JsonElement root, JsonlReader.LineContext at) =>
        new(at.RequiredString(root, "prompt"), at.Line);
}
