using System.Collections.Frozen;
using System.Reflection;
using System.Text;
using System.Text.Json;

namespace DistAlign.Transformer.Data;

/// <summary>
/// The data sets that ship inside <c>DistAlign.Transformer.dll</c>: the text of <i>Moby-Dick</i>, the VADER
/// sentiment lexicon and the UCI "Sentiment Labelled Sentences" (IMDB, Yelp, Amazon). They are embedded
/// resources built from the repository's <c>data/</c> folder (origins, licences and checksums in
/// <c>data/PROVENANCE.md</c>), so they are available from any working directory and in a self-contained
/// publish, with no network. Results are parsed once and cached; everything returned is immutable.
/// </summary>
public static class ShippedData
{
    /// <summary>Resource name of the <i>Moby-Dick</i> text (UTF-8, LF line endings).</summary>
    public const string MobyDickResource = "DistAlign.Data.corpus.moby-dick.txt";

    /// <summary>Resource name of the VADER lexicon (<c>token\tmean\tstd\t[10 ratings]</c> per line).</summary>
    public const string VaderLexiconResource = "DistAlign.Data.lexicon.vader_lexicon.txt";

    /// <summary>Prefix of the labelled-sentence resources; the source name and <c>.json</c> follow.</summary>
    public const string SentencesResourcePrefix = "DistAlign.Data.sentences.";

    /// <summary>The fraction of the corpus <see cref="SplitMobyDick"/> gives to training.</summary>
    public const double DefaultTrainFraction = 0.9;

    private static readonly Assembly ResourceAssembly = typeof(ShippedData).Assembly;
    private static readonly Lazy<string> MobyDickText = new(() => ReadText(MobyDickResource));
    private static readonly Lazy<IReadOnlyList<VaderLexiconEntry>> LexiconEntries = new(LoadLexiconEntries);
    private static readonly Lazy<FrozenDictionary<string, float>> LexiconValence = new(
        () => VaderLexiconFormat.ToValenceByToken(LexiconEntries.Value));
    private static readonly Lazy<IReadOnlyList<LabelledSentence>>[] Sentences =
    [
        new(() => LoadSentences(SentenceSource.Imdb)),
        new(() => LoadSentences(SentenceSource.Yelp)),
        new(() => LoadSentences(SentenceSource.Amazon)),
    ];

    /// <summary>
    /// The text of <i>Moby-Dick</i> (Herman Melville, 1851; public domain): chapters 1–135, from the line
    /// <c>CHAPTER 1. Loomings.</c> to the end of chapter 135, 1,204,997 UTF-8 bytes, <c>\n</c> line
    /// endings, chapter lines wrapped at about 70 columns.
    /// </summary>
    public static string MobyDick() => MobyDickText.Value;

    /// <summary>
    /// Splits <see cref="MobyDick"/> into the project's standard training text (the first 90%) and
    /// held-out text (the last 10%, for validation loss and prompts). See <see cref="TextSplit.AtParagraph"/>
    /// for exactly where the cut falls; the two parts concatenate to the whole text.
    /// </summary>
    public static TextSplit SplitMobyDick() => TextSplit.AtParagraph(MobyDick(), DefaultTrainFraction);

    /// <summary>
    /// The VADER lexicon as token → mean valence (in [−4, 4]; negative is negative sentiment).
    /// The file has 7,517 lines but 7,503 distinct tokens: 14 tokens (e.g. <c>lol</c>, <c>ok</c>,
    /// <c>xd</c>) appear twice, and, as in the reference VADER implementation, the later line wins.
    /// Tokens are case-sensitive exactly as in the file (almost all are lower case).
    /// </summary>
    /// <exception cref="InvalidDataException">A line of the embedded lexicon is malformed (names the line).</exception>
    public static IReadOnlyDictionary<string, float> VaderLexicon() => LexiconValence.Value;

    /// <summary>
    /// Every line of the VADER lexicon, in file order (7,517 entries, duplicates included), with the
    /// standard deviation and the ten raw human ratings (integers in [−4, 4]) behind each mean.
    /// </summary>
    /// <exception cref="InvalidDataException">A line of the embedded lexicon is malformed (names the line).</exception>
    public static IReadOnlyList<VaderLexiconEntry> VaderLexiconEntries() => LexiconEntries.Value;

    /// <summary>
    /// The 1,000 human-labelled sentences of one source (500 positive, label 1; 500 negative, label 0),
    /// in file order. From the UCI "Sentiment Labelled Sentences" data set (Kotzias et al., 2015; CC BY 4.0).
    /// </summary>
    /// <param name="source">Which review site the sentences come from.</param>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="source"/> is not a defined source.</exception>
    /// <exception cref="InvalidDataException">A record of the embedded file is malformed (names the record).</exception>
    public static IReadOnlyList<LabelledSentence> LabelledSentences(SentenceSource source)
    {
        if ((uint)source >= (uint)Sentences.Length)
        {
            throw new ArgumentOutOfRangeException(nameof(source), source,
                $"Unknown sentence source; expected one of {string.Join(", ", Enum.GetNames<SentenceSource>())}.");
        }
        return Sentences[(int)source].Value;
    }

    /// <summary>The resource name that holds the sentences of <paramref name="source"/>.</summary>
    public static string SentencesResource(SentenceSource source) =>
        SentencesResourcePrefix + source.ToString().ToLowerInvariant() + ".json";

    /// <summary>Opens an embedded data resource by name, or fails naming the resources that do exist.</summary>
    internal static Stream OpenResource(string name) =>
        ResourceAssembly.GetManifestResourceStream(name)
        ?? throw new InvalidOperationException(
            $"Embedded resource '{name}' is missing from {ResourceAssembly.GetName().Name}. It is built from the " +
            $"repository's data/ folder (see src/Transformer/Transformer.csproj). Resources present: " +
            $"{string.Join(", ", ResourceAssembly.GetManifestResourceNames())}.");

    private static string ReadText(string resource)
    {
        using var stream = OpenResource(resource);
        // Strict UTF-8: a corrupt resource fails loudly instead of turning into U+FFFD.
        using var reader = new StreamReader(stream, new UTF8Encoding(false, throwOnInvalidBytes: true));
        return reader.ReadToEnd();
    }

    private static IReadOnlyList<VaderLexiconEntry> LoadLexiconEntries()
    {
        using var stream = OpenResource(VaderLexiconResource);
        using var reader = new StreamReader(stream, new UTF8Encoding(false, throwOnInvalidBytes: true));
        return VaderLexiconFormat.Parse(reader, VaderLexiconResource);
    }

    private static IReadOnlyList<LabelledSentence> LoadSentences(SentenceSource source)
    {
        string resource = SentencesResource(source);
        using var stream = OpenResource(resource);
        return LabelledSentenceFormat.Parse(stream, resource);
    }
}

/// <summary>The review site a labelled sentence comes from.</summary>
public enum SentenceSource
{
    /// <summary>IMDB movie reviews.</summary>
    Imdb,

    /// <summary>Yelp restaurant reviews.</summary>
    Yelp,

    /// <summary>Amazon product reviews (mostly phones and accessories).</summary>
    Amazon,
}

/// <summary>A sentence with a human sentiment label.</summary>
/// <param name="Text">The sentence, as shipped (some have trailing spaces).</param>
/// <param name="Label">1 for positive, 0 for negative.</param>
public readonly record struct LabelledSentence(string Text, int Label)
{
    /// <summary>True when the sentence is labelled positive.</summary>
    public bool IsPositive => Label == 1;
}

/// <summary>Reads the <c>[{"text": string, "class": 0|1}, ...]</c> layout of the labelled-sentence files.</summary>
public static class LabelledSentenceFormat
{
    /// <summary>
    /// Parses a JSON array of <c>{"text", "class"}</c> records strictly: every record must have a string
    /// <c>text</c> and a <c>class</c> of exactly 0 or 1.
    /// </summary>
    /// <param name="json">UTF-8 JSON.</param>
    /// <param name="sourceName">Name of the file or resource, used in error messages.</param>
    /// <exception cref="InvalidDataException">The JSON is malformed or a record breaks the layout; the message
    /// names <paramref name="sourceName"/>, the record's index and the rule broken.</exception>
    public static IReadOnlyList<LabelledSentence> Parse(Stream json, string sourceName)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json);
        }
        catch (JsonException e)
        {
            throw new InvalidDataException(
                $"{sourceName}: not valid JSON (line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}): {e.Message}", e);
        }

        using (document)
        {
            if (document.RootElement.ValueKind != JsonValueKind.Array)
                throw new InvalidDataException($"{sourceName}: expected a JSON array of {{text, class}} records, found {document.RootElement.ValueKind}.");

            var sentences = new List<LabelledSentence>(document.RootElement.GetArrayLength());
            int index = 0;
            foreach (var record in document.RootElement.EnumerateArray())
            {
                if (record.ValueKind != JsonValueKind.Object)
                    throw new InvalidDataException($"{sourceName}, record {index}: expected an object, found {record.ValueKind}.");
                if (!record.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{sourceName}, record {index}: \"text\" must be a string.");
                if (!record.TryGetProperty("class", out var label) || label.ValueKind != JsonValueKind.Number
                    || !label.TryGetInt32(out int value) || value is not (0 or 1))
                {
                    throw new InvalidDataException(
                        $"{sourceName}, record {index}: \"class\" must be 0 (negative) or 1 (positive), found {(label.ValueKind == JsonValueKind.Undefined ? "no class" : label.GetRawText())}.");
                }
                sentences.Add(new LabelledSentence(text.GetString()!, value));
                index++;
            }
            return sentences.AsReadOnly();
        }
    }
}
