using System.Globalization;

namespace DistAlign.Cli;

/// <summary>A user error in flags or inputs: printed as one line, exit code 2, nothing written.</summary>
internal sealed class CliUsageException(string message) : Exception(message);

/// <summary>Argument checks shared by the commands.</summary>
internal static class CliErrors
{
    public static int Positive(int value, string flag) =>
        value >= 1 ? value : throw new CliUsageException($"{flag} must be at least 1 (got {value})");

    public static int NonNegative(int value, string flag) =>
        value >= 0 ? value : throw new CliUsageException($"{flag} must be at least 0 (got {value})");

    /// <summary>
    /// A byte count such as <c>2GiB</c>, <c>512MiB</c>, <c>1.5GB</c> or <c>123456</c> (binary suffixes KiB…TiB,
    /// decimal KB…TB, bare number = bytes); null for null/empty text.
    /// </summary>
    public static long? Bytes(string? text, string flag)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        string t = text.Trim();
        (string Suffix, double Factor)[] units =
        [
            ("KiB", 1L << 10), ("MiB", 1L << 20), ("GiB", 1L << 30), ("TiB", 1L << 40),
            ("KB", 1e3), ("MB", 1e6), ("GB", 1e9), ("TB", 1e12), ("B", 1),
        ];
        double factor = 1;
        foreach (var (suffix, f) in units)
            if (t.EndsWith(suffix, StringComparison.OrdinalIgnoreCase))
            {
                factor = f;
                t = t[..^suffix.Length].TrimEnd();
                break;
            }
        if (!double.TryParse(t, NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent, CultureInfo.InvariantCulture, out double value)
            || !double.IsFinite(value * factor) || value * factor < 1 || value * factor > long.MaxValue)
            throw new CliUsageException($"{flag} must be a positive size such as 2GiB, 512MiB or 1000000 (got '{text}')");
        return (long)(value * factor);
    }

    /// <summary>
    /// Creates <paramref name="folder"/> when missing and proves it writable by creating and deleting a probe file,
    /// so a run that could never save its work is refused before it trains.
    /// </summary>
    public static void EnsureWritableFolder(string folder, string flag)
    {
        string probe = Path.Combine(folder, $".write-probe-{Environment.ProcessId}");
        try
        {
            Directory.CreateDirectory(folder);
            using (new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose))
            {
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliUsageException($"{flag} {folder}: cannot write there ({e.Message})");
        }
    }

    /// <summary>
    /// Reads a text file that must be UTF-8 (a leading BOM is skipped): invalid bytes are refused with their offset
    /// instead of being replaced by U+FFFD, so a binary or mis-encoded file never trains silently.
    /// </summary>
    public static string ReadUtf8Text(string path, string flag)
    {
        byte[] bytes = File.ReadAllBytes(path);
        int start = bytes.AsSpan().StartsWith((ReadOnlySpan<byte>)[0xEF, 0xBB, 0xBF]) ? 3 : 0;
        var span = bytes.AsSpan(start);
        if (!System.Text.Unicode.Utf8.IsValid(span))
        {
            int offset = 0;
            while (System.Text.Rune.DecodeFromUtf8(span[offset..], out _, out int consumed) == System.Buffers.OperationStatus.Done) offset += consumed;
            throw new CliUsageException($"{flag} {path}: not UTF-8 text (invalid byte 0x{span[offset]:X2} at byte {start + offset})");
        }
        return System.Text.Encoding.UTF8.GetString(span);
    }
}
