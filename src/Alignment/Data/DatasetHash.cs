using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace DistAlign.Alignment.Data;

/// <summary>
/// A stable content hash of tokenized data, for keying caches (e.g. reference-model log-probs).
/// </summary>
/// <remarks>
/// SHA-256, as 64 lowercase hex digits, over: a tag naming the kind of data and the format version, the example count,
/// then for each example and each of its sequences in order (prompt, chosen, rejected), the sequence length and its ids,
/// all as 32-bit little-endian integers. The lengths make the encoding unambiguous: moving a token between prompt and
/// response, or between examples, changes the hash. Only ids count; source lines do not. The ids already depend on the
/// tokenizer, but a cache key should still add the tokenizer spec and the model it caches for.
/// </remarks>
public static class DatasetHash
{
    /// <summary>Hash of tokenized preference pairs.</summary>
    public static string Of(IReadOnlyList<TokenizedPreference> examples)
    {
        ArgumentNullException.ThrowIfNull(examples);
        using var hash = Start("DistAlign.TokenizedPreference.v1", examples.Count);
        foreach (TokenizedPreference e in examples)
        {
            ArgumentNullException.ThrowIfNull(e, nameof(examples));
            AddSequence(hash, e.PromptIds);
            AddSequence(hash, e.ChosenIds);
            AddSequence(hash, e.RejectedIds);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>
    /// Hash of preference pairs held as token ids. It uses the same tag and encoding as the
    /// <see cref="TokenizedPreference"/> overload, so the same ids give the same hash whichever form they are in.
    /// </summary>
    public static string Of(IReadOnlyList<PreferencePair> pairs)
    {
        ArgumentNullException.ThrowIfNull(pairs);
        using var hash = Start("DistAlign.TokenizedPreference.v1", pairs.Count);
        foreach (PreferencePair p in pairs)
        {
            ArgumentNullException.ThrowIfNull(p, nameof(pairs));
            AddSequence(hash, p.Prompt);
            AddSequence(hash, p.Chosen);
            AddSequence(hash, p.Rejected);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    /// <summary>Hash of tokenized prompts (a different tag, so it never equals a preference hash).</summary>
    public static string Of(IReadOnlyList<TokenizedPrompt> examples)
    {
        ArgumentNullException.ThrowIfNull(examples);
        using var hash = Start("DistAlign.TokenizedPrompt.v1", examples.Count);
        foreach (TokenizedPrompt e in examples)
        {
            ArgumentNullException.ThrowIfNull(e, nameof(examples));
            AddSequence(hash, e.PromptIds);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static IncrementalHash Start(string tag, int count)
    {
        var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(Encoding.ASCII.GetBytes(tag + "\0"));
        AddInt(hash, count);
        return hash;
    }

    private static void AddSequence(IncrementalHash hash, int[] ids)
    {
        ArgumentNullException.ThrowIfNull(ids);
        AddInt(hash, ids.Length);
        Span<byte> buffer = stackalloc byte[4 * 256];
        for (int start = 0; start < ids.Length; start += 256)
        {
            int n = Math.Min(256, ids.Length - start);
            for (int i = 0; i < n; i++)
                BinaryPrimitives.WriteInt32LittleEndian(buffer[(4 * i)..], ids[start + i]);
            hash.AppendData(buffer[..(4 * n)]);
        }
    }

    private static void AddInt(IncrementalHash hash, int value)
    {
        Span<byte> bytes = stackalloc byte[4];
        BinaryPrimitives.WriteInt32LittleEndian(bytes, value);
        hash.AppendData(bytes);
    }
}
