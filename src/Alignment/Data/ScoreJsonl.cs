using System.Text.Json;

namespace DistAlign.Alignment.Data;

/// <summary>
/// Reads what <c>distalign score</c> scores, as JSONL: per line either <c>{"prompt": "...", "response": "..."}</c> (the
/// response is scored given the prompt, which may be empty) or <c>{"text": "..."}</c> (the text is scored from the
/// <c>&lt;|endoftext|&gt;</c> start token). The line rules are <see cref="PreferenceJsonl"/>'s (UTF-8, blank lines
/// skipped but counted, no duplicate keys, other keys ignored, at least one example, all-or-nothing); a line with
/// <c>text</c> and <c>response</c> both, or neither, is refused naming the line.
/// </summary>
public static class ScoreJsonl
{
    /// <summary>Loads every example from a file; errors name the file as <paramref name="path"/> was given.</summary>
    public static List<ScoreExample> Load(string path, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        JsonlReader.ReadFile(path, maxLineBytes, Map);

    /// <summary>Parses examples from UTF-8 bytes; <paramref name="sourceName"/> is used in error messages.</summary>
    public static List<ScoreExample> Parse(Stream stream, string sourceName, int maxLineBytes = PreferenceJsonl.DefaultMaxLineBytes) =>
        JsonlReader.Read(stream, sourceName, maxLineBytes, Map);

    private static ScoreExample Map(JsonElement root, JsonlReader.LineContext at)
    {
        bool hasText = root.TryGetProperty("text", out _), hasResponse = root.TryGetProperty("response", out _);
        if (hasText && hasResponse)
            throw at.Error(DatasetRule.DuplicateKey, "the line has both 'text' and 'response': give a text, or a prompt and a response");
        if (hasText) return new ScoreExample("", at.RequiredText(root, "text"), at.Line);
        if (!hasResponse)
            throw at.Error(DatasetRule.MissingField, "missing field 'response' (or 'text'): give a text, or a prompt and a response");
        string prompt = root.TryGetProperty("prompt", out _) ? at.RequiredString(root, "prompt") : "";
        return new ScoreExample(prompt, at.RequiredText(root, "response"), at.Line);
    }
}
