using System.Collections.Frozen;
using System.Globalization;

namespace DistAlign.Transformer.Data;

/// <summary>One line of the VADER lexicon.</summary>
/// <param name="Token">The token (word, emoticon or abbreviation; four entries are phrases such as
/// <c>fed up</c>), as written in the file.</param>
/// <param name="MeanValence">Mean of the ten ratings, in [−4, 4].</param>
/// <param name="StandardDeviation">Standard deviation of the ten ratings, as given in the file.</param>
/// <param name="Ratings">The ten human ratings, integers in [−4, 4].</param>
/// <param name="LineNumber">1-based line of the file the entry comes from.</param>
public sealed record VaderLexiconEntry(
    string Token, float MeanValence, float StandardDeviation, IReadOnlyList<sbyte> Ratings, int LineNumber);

/// <summary>
/// Reads the VADER lexicon format: one entry per line,
/// <c>token TAB mean TAB std TAB [r1, r2, ..., r10]</c>, numbers in invariant culture.
/// </summary>
public static class VaderLexiconFormat
{
    /// <summary>Number of human ratings behind each entry.</summary>
    public const int RatingsPerEntry = 10;

    /// <summary>Bound of the valence scale: ratings and means lie in [−MaxValence, MaxValence].</summary>
    public const int MaxValence = 4;

    /// <summary>
    /// Parses every line strictly. Only a final empty line (the file's trailing newline) is allowed to be
    /// empty; everything else must be a well-formed entry.
    /// </summary>
    /// <param name="reader">The lexicon text.</param>
    /// <param name="sourceName">Name of the file or resource, used in error messages.</param>
    /// <exception cref="InvalidDataException">A line is malformed; the message names
    /// <paramref name="sourceName"/>, the line number and the rule broken.</exception>
    public static IReadOnlyList<VaderLexiconEntry> Parse(TextReader reader, string sourceName)
    {
        var entries = new List<VaderLexiconEntry>(8192);
        int lineNumber = 0;
        while (reader.ReadLine() is { } line)
        {
            lineNumber++;
            entries.Add(ParseLine(line, sourceName, lineNumber));
        }
        return entries.AsReadOnly();
    }

    /// <summary>
    /// Collapses entries into token → mean valence. A token that appears more than once takes the value
    /// of its last entry, as in the reference VADER implementation.
    /// </summary>
    public static FrozenDictionary<string, float> ToValenceByToken(IEnumerable<VaderLexiconEntry> entries)
    {
        var valence = new Dictionary<string, float>(StringComparer.Ordinal);
        foreach (var entry in entries) valence[entry.Token] = entry.MeanValence;
        return valence.ToFrozenDictionary(StringComparer.Ordinal);
    }

    private static VaderLexiconEntry ParseLine(string line, string sourceName, int lineNumber)
    {
        string Where() => $"{sourceName}, line {lineNumber}";

        string[] fields = line.Split('\t');
        if (fields.Length != 4)
        {
            throw new InvalidDataException(
                $"{Where()}: expected 4 tab-separated fields (token, mean, std, [{RatingsPerEntry} ratings]), found {fields.Length}.");
        }
        string token = fields[0];
        // A few entries are phrases ("can't stand", "fed up"), so inner spaces are allowed; padding is not.
        if (token.Length == 0 || char.IsWhiteSpace(token[0]) || char.IsWhiteSpace(token[^1]))
            throw new InvalidDataException($"{Where()}: the token must be non-empty with no leading or trailing white space, found '{token}'.");

        float mean = ParseFloat(fields[1], "mean valence", Where);
        if (!(Math.Abs(mean) <= MaxValence))
            throw new InvalidDataException($"{Where()}: mean valence {fields[1]} is outside [-{MaxValence}, {MaxValence}].");
        float std = ParseFloat(fields[2], "standard deviation", Where);
        if (!(std >= 0))
            throw new InvalidDataException($"{Where()}: standard deviation {fields[2]} is negative.");

        string list = fields[3];
        if (list.Length < 2 || list[0] != '[' || list[^1] != ']')
            throw new InvalidDataException($"{Where()}: ratings must be written as [r1, ..., r{RatingsPerEntry}], found '{list}'.");
        string[] items = list[1..^1].Split(", ");
        if (items.Length != RatingsPerEntry)
            throw new InvalidDataException($"{Where()}: expected {RatingsPerEntry} ratings, found {items.Length}.");
        var ratings = new sbyte[RatingsPerEntry];
        for (int i = 0; i < items.Length; i++)
        {
            if (!sbyte.TryParse(items[i], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out ratings[i])
                || Math.Abs((int)ratings[i]) > MaxValence)
            {
                throw new InvalidDataException(
                    $"{Where()}: rating {i + 1} must be an integer in [-{MaxValence}, {MaxValence}], found '{items[i]}'.");
            }
        }
        return new VaderLexiconEntry(token, mean, std, Array.AsReadOnly(ratings), lineNumber);
    }

    private static float ParseFloat(string text, string what, Func<string> where)
    {
        if (!float.TryParse(text, NumberStyles.AllowLeadingSign | NumberStyles.AllowDecimalPoint,
                CultureInfo.InvariantCulture, out float value))
        {
            throw new InvalidDataException($"{where()}: {what} must be a decimal number, found '{text}'.");
        }
        return value;
    }
}
