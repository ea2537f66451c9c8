namespace DistAlign.Engine.Memory;

/// <summary>
/// Thrown by <see cref="MemoryPlan.EnsureFits"/> when a plan needs more bytes than the budget allows. It is raised
/// before anything is allocated, and says how much is needed and which arena is the largest consumer.
/// </summary>
public sealed class MemoryBudgetExceededException : Exception
{
    /// <summary>Creates the exception; the message is built from the figures.</summary>
    public MemoryBudgetExceededException(long neededBytes, long budgetBytes, string largestArena, long largestArenaBytes)
        : base(string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "The memory plan needs {0:N0} bytes ({1}) but the budget is {2:N0} bytes ({3}), {4:N0} bytes short. " +
            "The largest arena is '{5}' with {6:N0} bytes ({7}); " +
            "reduce what drives it (batch size, sequence length, model width) or raise the budget.",
            neededBytes, MemoryPlan.FormatBytes(neededBytes), budgetBytes, MemoryPlan.FormatBytes(budgetBytes),
            neededBytes - budgetBytes, largestArena, largestArenaBytes, MemoryPlan.FormatBytes(largestArenaBytes)))
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
