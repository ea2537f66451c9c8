using System.Text;

namespace DistAlign.Transformer.Tokenization;

/// <summary>UTF-8 decoding that keeps lone UTF-16 surrogates, so that decoding inverts the tokenizer's encoding.</summary>
internal static class Utf8Text
{
    private static readonly UTF8Encoding Utf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: false);

    /// <summary>
    /// Decodes <paramref name="bytes"/> as UTF-8, except that a three-byte sequence <c>ED A0..BF 80..BF</c>
    /// (the generalised UTF-8 form of a surrogate code point U+D800–U+DFFF, which strict UTF-8 forbids)
    /// becomes that surrogate <c>char</c>. Microsoft.ML.Tokenizers encodes an unpaired surrogate in the
    /// input string that way, so this makes decode ∘ encode the identity on every .NET string, well-formed
    /// or not. Every other invalid sequence becomes U+FFFD, exactly as <see cref="Encoding.UTF8"/> does;
    /// on valid UTF-8 the result equals <c>Encoding.UTF8.GetString</c>.
    /// </summary>
    public static string Decode(ReadOnlySpan<byte> bytes)
    {
        int first = FindSurrogateSequence(bytes, 0);
        if (first < 0) return Utf8.GetString(bytes);

        var text = new StringBuilder(bytes.Length);
        int start = 0;
        for (int at = first; at >= 0; at = FindSurrogateSequence(bytes, start))
        {
            text.Append(Utf8.GetString(bytes[start..at]));
            text.Append((char)(0xD000 | ((bytes[at + 1] & 0x3F) << 6) | (bytes[at + 2] & 0x3F)));
            start = at + 3;
        }
        text.Append(Utf8.GetString(bytes[start..]));
        return text.ToString();
    }

    // 0xED is never a continuation byte, so a match found by scanning is always a sequence start.
    private static int FindSurrogateSequence(ReadOnlySpan<byte> bytes, int from)
    {
        while (true)
        {
            int found = bytes[from..].IndexOf((byte)0xED);
            if (found < 0) return -1;
            int at = from + found;
            if (at + 2 < bytes.Length && bytes[at + 1] is >= 0xA0 and <= 0xBF && (bytes[at + 2] & 0xC0) == 0x80) return at;
            from = at + 1;
        }
    }
}
