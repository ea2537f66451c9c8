namespace DistAlign.Engine.Memory;

/// <summary>Every arena of a <see cref="MemoryPlan"/>, each a block of host memory. Disposing it frees them all.</summary>
public sealed class MemoryArenas : IDisposable
{
    private readonly Dictionary<string, Arena> byName;

    private MemoryArenas(MemoryPlan plan, IReadOnlyList<Arena> arenas)
    {
        Plan = plan;
        Arenas = arenas;
        byName = arenas.ToDictionary(a => a.Name, StringComparer.Ordinal);
    }

    /// <summary>
    /// Checks the plan against <paramref name="budgetBytes"/> (when given) and then allocates each arena.
    /// If an allocation fails, the arenas already allocated are freed before the exception propagates.
    /// </summary>
    /// <exception cref="MemoryBudgetExceededException">The plan does not fit the budget; nothing was allocated.</exception>
    /// <exception cref="ArenaOutOfMemoryException">An arena's block could not be allocated; the arenas allocated before it were freed.</exception>
    public static MemoryArenas Allocate(MemoryPlan plan, long? budgetBytes = null)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (budgetBytes is long budget) plan.EnsureFits(budget);
        var arenas = new List<Arena>(plan.Arenas.Count);
        try
        {
            foreach (var arenaPlan in plan.Arenas) arenas.Add(Arena.Allocate(arenaPlan));
        }
        catch
        {
            foreach (var a in arenas) a.Dispose();
            throw;
        }
        return new MemoryArenas(plan, arenas);
    }

    /// <summary>The plan the arenas were allocated from.</summary>
    public MemoryPlan Plan { get; }

    /// <summary>The arenas, in plan order.</summary>
    public IReadOnlyList<Arena> Arenas { get; }

    /// <summary>The arena called <paramref name="arenaName"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such arena; the message lists the allocated ones.</exception>
    public Arena this[string arenaName] =>
        byName.TryGetValue(arenaName, out var arena)
            ? arena
            : throw new KeyNotFoundException(
                $"No arena named '{arenaName}'; allocated arenas: {string.Join(", ", Arenas.Select(a => $"'{a.Name}'"))}.");

    /// <summary>Frees every arena. Safe to call more than once.</summary>
    public void Dispose()
    {
        foreach (var a in Arenas) a.Dispose();
    }
}
