namespace DistAlign.Engine.Memory;

/// <summary>
/// Thrown by <see cref="MemoryPlan.EnsureFits"/> when a plan needs more bytes than the budget allows. It is raised
/// before anything is allocated, and says how much is needed and which arena is the largest consumer.
/// </summary>
public sealed class MemoryBudgetExceededException : Exception
{
    /// <summary>Creates the exception; the message is built from the figures.</summary>
    public MemoryBudgetExceededException(long neededBytes, long budgetBytes, string largestArena, long largestArenaBytes)
        : base($"The memory plan needs {neededBytes:N0} bytes ({MemoryPlan.FormatBytes(neededBytes)}) but the budget is " +
               $"{budgetBytes:N0} bytes ({MemoryPlan.FormatBytes(budgetBytes)}), {neededBytes - budgetBytes:N0} bytes short. " +
               $"The largest arena is '{largestArena}' with {largestArenaBytes:N0} bytes ({MemoryPlan.FormatBytes(largestArenaBytes)}); " +
               "reduce what drives it (batch size, sequence length, model width) or raise the budget.")
    {
        NeededBytes = neededBytes;
        BudgetBytes = budgetBytes;
        LargestArena = largestArena;
        LargestArenaBytes = largestArenaBytes;
    }

    /// <summary>Total bytes the plan needs.</summary>
    public long NeededBytes { get; }

    /// <summary>The budget it was checked against.</summary>
    public long BudgetBytes { get; }

    /// <summary>Name of the largest arena.</summary>
    public string LargestArena { get; }

    /// <summary>Size of the largest arena in bytes.</summary>
    public long LargestArenaBytes { get; }
}
