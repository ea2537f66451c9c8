using System.Globalization;
using System.Text;

namespace DistAlign.Engine.Memory;

/// <summary>
/// Every byte a run will need, laid out before anything is allocated: named arenas (parameters, gradients,
/// optimizer moments, activations), each a contiguous block of named tensors at 64-byte aligned offsets.
/// Check it with <see cref="EnsureFits"/>, then allocate it with <see cref="MemoryArenas.Allocate"/>.
/// </summary>
public sealed class MemoryPlan
{
    /// <summary>Alignment of every tensor offset and arena size, in bytes.</summary>
    public const int Alignment = 64;

    private readonly Dictionary<string, ArenaPlan> byName;

    internal MemoryPlan(IReadOnlyList<ArenaPlan> arenas)
    {
        Arenas = arenas;
        byName = arenas.ToDictionary(a => a.Name, StringComparer.Ordinal);
        long total = 0;
        foreach (var a in arenas)
        {
            try { total = checked(total + a.SizeInBytes); }
            catch (OverflowException e)
            {
                throw new OverflowException($"The memory plan's total overflows 64 bits when adding arena '{a.Name}'.", e);
            }
        }
        TotalBytes = total;
    }

    /// <summary>Arenas in the order they were first named.</summary>
    public IReadOnlyList<ArenaPlan> Arenas { get; }

    /// <summary>Sum of all arena sizes in bytes.</summary>
    public long TotalBytes { get; }

    /// <summary>The arena called <paramref name="arenaName"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such arena; the message lists the planned ones.</exception>
    public ArenaPlan this[string arenaName] =>
        byName.TryGetValue(arenaName, out var arena)
            ? arena
            : throw new KeyNotFoundException(
                $"The memory plan has no arena named '{arenaName}'; planned arenas: {string.Join(", ", Arenas.Select(a => $"'{a.Name}'"))}.");

    /// <summary>True when an arena called <paramref name="arenaName"/> is planned.</summary>
    public bool ContainsArena(string arenaName) => byName.ContainsKey(arenaName);

    /// <summary>The largest arena, or null for an empty plan. Ties go to the first planned.</summary>
    public ArenaPlan? LargestArena
    {
        get
        {
            ArenaPlan? largest = null;
            foreach (var a in Arenas)
                if (largest is null || a.SizeInBytes > largest.SizeInBytes) largest = a;
            return largest;
        }
    }

    /// <summary>
    /// Throws <see cref="MemoryBudgetExceededException"/> when <see cref="TotalBytes"/> exceeds
    /// <paramref name="budgetBytes"/>. Call it before allocating.
    /// </summary>
    public void EnsureFits(long budgetBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(budgetBytes);
        if (TotalBytes <= budgetBytes) return;
        var largest = LargestArena!;
        throw new MemoryBudgetExceededException(TotalBytes, budgetBytes, largest.Name, largest.SizeInBytes);
    }

    /// <summary>
    /// A fixed-width table: one row per arena (tensor count, bytes, share of the total) and a total row.
    /// </summary>
    public string Describe()
    {
        var culture = CultureInfo.InvariantCulture;
        int nameWidth = Math.Max("arena".Length, Arenas.Count == 0 ? 0 : Arenas.Max(a => a.Name.Length));
        nameWidth = Math.Max(nameWidth, "total".Length);
        var sb = new StringBuilder();
        string Row(string name, string tensors, string bytes, string human, string share) =>
            $"{name.PadRight(nameWidth)}  {tensors,8}  {bytes,20}  {human,10}  {share,7}";
        sb.AppendLine(Row("arena", "tensors", "bytes", "size", "share"));
        sb.AppendLine(new string('-', nameWidth + 2 + 8 + 2 + 20 + 2 + 10 + 2 + 7));
        foreach (var a in Arenas)
        {
            double share = TotalBytes == 0 ? 0 : 100.0 * a.SizeInBytes / TotalBytes;
            sb.AppendLine(Row(a.Name, a.Tensors.Count.ToString(culture), a.SizeInBytes.ToString("N0", culture),
                FormatBytes(a.SizeInBytes), share.ToString("F1", culture) + "%"));
        }
        sb.Append(Row("total", Arenas.Sum(a => a.Tensors.Count).ToString(culture), TotalBytes.ToString("N0", culture),
            FormatBytes(TotalBytes), TotalBytes == 0 ? "0.0%" : "100.0%"));
        return sb.ToString();
    }

    /// <inheritdoc/>
    public override string ToString() => $"MemoryPlan({Arenas.Count} arenas, {FormatBytes(TotalBytes)})";

    /// <summary>Rounds <paramref name="bytes"/> up to a multiple of <see cref="Alignment"/> (checked).</summary>
    internal static long AlignUp(long bytes) => checked(bytes + (Alignment - 1)) & ~(long)(Alignment - 1);

    /// <summary>Bytes in binary units with one decimal (e.g. <c>1.5 GiB</c>).</summary>
    internal static string FormatBytes(long bytes)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        double value = bytes;
        int unit = 0;
        while (Math.Abs(value) >= 1024 && unit < units.Length - 1) { value /= 1024; unit++; }
        return unit == 0
            ? bytes.ToString(CultureInfo.InvariantCulture) + " B"
            : value.ToString("F1", CultureInfo.InvariantCulture) + " " + units[unit];
    }
}
