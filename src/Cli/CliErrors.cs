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
}
