using System.Text;

namespace DistAlign.Tests.Reliability;

/// <summary>
/// Format-blind mutations of a valid seed, in the style of AFL's havoc stage: bit flips, interesting bytes,
/// truncation, insertion and deletion of runs, invalid UTF-8, splices of two seeds. Seeded, so a run is repeatable.
/// </summary>
internal sealed class ByteMutator(int seed)
{
    private static readonly byte[] InterestingBytes = [0x00, 0x01, 0x7F, 0x80, 0xFF, (byte)'"', (byte)'\\', (byte)'{', (byte)'}', (byte)'[', (byte)']',
                                                       (byte)',', (byte)':', (byte)'-', (byte)'0', (byte)'9', (byte)'e', (byte)'\n', (byte)'\r', (byte)' '];

    /// <summary>Byte runs that are not UTF-8: lone continuation, truncated sequences, overlong forms, surrogates, 0xF5+.</summary>
    public static readonly byte[][] InvalidUtf8 =
    [
        [0x80], [0xBF], [0xC0, 0xAF], [0xC1, 0xBF], [0xC3], [0xE2, 0x82], [0xED, 0xA0, 0x80], [0xED, 0xBF, 0xBF],
        [0xF0, 0x9F, 0x98], [0xF4, 0x90, 0x80, 0x80], [0xF5], [0xF8, 0x88, 0x80, 0x80, 0x80], [0xFE], [0xFF], [0xE0, 0x80, 0x80],
    ];

    public Random Random { get; } = new(seed);

    /// <summary>One to four stacked havoc mutations of <paramref name="seedBytes"/>.</summary>
    public byte[] Havoc(byte[] seedBytes, IReadOnlyList<byte[]> others)
    {
        var bytes = new List<byte>(seedBytes);
        int rounds = 1 + Random.Next(4);
        for (int r = 0; r < rounds; r++)
        {
            switch (Random.Next(9))
            {
                case 0 when bytes.Count > 0: // flip 1–8 bits
                    for (int k = 1 + Random.Next(8); k > 0; k--)
                    {
                        int at = Random.Next(bytes.Count);
                        bytes[at] ^= (byte)(1 << Random.Next(8));
                    }
                    break;
                case 1 when bytes.Count > 0:
                    bytes[Random.Next(bytes.Count)] = InterestingBytes[Random.Next(InterestingBytes.Length)];
                    break;
                case 2: // truncate
                    if (bytes.Count > 0)
                    {
                        int keep = Random.Next(bytes.Count);
                        bytes.RemoveRange(keep, bytes.Count - keep);
                    }
                    break;
                case 3: // insert random bytes
                    bytes.InsertRange(Random.Next(bytes.Count + 1), RandomBytes(1 + Random.Next(16)));
                    break;
                case 4 when bytes.Count > 0: // delete a run
                {
                    int at = Random.Next(bytes.Count);
                    bytes.RemoveRange(at, Math.Min(bytes.Count - at, 1 + Random.Next(16)));
                    break;
                }
                case 5: // invalid UTF-8
                    bytes.InsertRange(Random.Next(bytes.Count + 1), InvalidUtf8[Random.Next(InvalidUtf8.Length)]);
                    break;
                case 6 when bytes.Count > 1: // duplicate a run in place
                {
                    int at = Random.Next(bytes.Count), length = Math.Min(bytes.Count - at, 1 + Random.Next(64));
                    bytes.InsertRange(at, bytes.GetRange(at, length));
                    break;
                }
                case 7 when others.Count > 0: // splice with another seed
                {
                    var other = others[Random.Next(others.Count)];
                    int cut = Random.Next(bytes.Count + 1), from = Random.Next(other.Length + 1);
                    bytes.RemoveRange(cut, bytes.Count - cut);
                    bytes.AddRange(other.AsSpan(from).ToArray());
                    break;
                }
                default: // overwrite with an interesting ASCII token
                {
                    byte[] token = Encoding.UTF8.GetBytes(InterestingTokens[Random.Next(InterestingTokens.Length)]);
                    bytes.InsertRange(Random.Next(bytes.Count + 1), token);
                    break;
                }
            }
        }
        return [.. bytes];
    }

    public static readonly string[] InterestingTokens =
    [
        "-1", "0", "-0", "1e400", "1.5", "2147483648", "4294967296", "9007199254740993", "9223372036854775807",
        "9223372036854775808", "18446744073709551616", "99999999999999999999999999", "null", "true", "\"\"", "\\u0000",
        "\\ud800", "\\udfff\\ud800", "[]", "{}", "\"__metadata__\"", "\"dtype\"", "\"shape\"", "\"data_offsets\"", "\uFEFF", "\u2028",
    ];

    public byte[] RandomBytes(int count)
    {
        var bytes = new byte[count];
        Random.NextBytes(bytes);
        return bytes;
    }

    /// <summary>Nested arrays <c>[[[…]]]</c> of the given depth (deep-nesting attacks on JSON readers).</summary>
    public static string Nested(int depth) => new string('[', depth) + new string(']', depth);
}
