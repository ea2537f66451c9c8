using System.Runtime.CompilerServices;

namespace DistAlign.Engine.Memory;

/// <summary>
/// Collects named arenas and their tensors, then lays them out with <see cref="Build"/>. Nothing is allocated
/// here: the plan exists so the size of every arena is known, and checked against a budget, before training.
/// </summary>
/// <example>
/// <code>
/// var builder = new MemoryPlanBuilder();
/// builder.Arena("parameters").Add&lt;float&gt;("wte.weight", 50257L * 768).Add&lt;float&gt;("wpe.weight", 1024L * 768);
/// builder.Arena("activations").Add&lt;float&gt;("residual", batch * seq * 768L);
/// MemoryPlan plan = builder.Build();
/// plan.EnsureFits(budgetBytes);
/// </code>
/// </example>
public sealed class MemoryPlanBuilder
{
    private readonly List<ArenaPlanBuilder> arenas = [];

    /// <summary>The arena called <paramref name="name"/>, created (empty) on first use. Arenas keep first-use order.</summary>
    public ArenaPlanBuilder Arena(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        foreach (var a in arenas)
            if (a.Name == name) return a;
        var arena = new ArenaPlanBuilder(name);
        arenas.Add(arena);
        return arena;
    }

    /// <summary>Lays every arena out (64-byte aligned offsets, overflow-checked) into an immutable plan.</summary>
    /// <exception cref="OverflowException">An arena or the total would exceed 2^63 − 1 bytes.</exception>
    public MemoryPlan Build() => new(arenas.Select(a => a.Build()).ToArray());
}

/// <summary>Collects the tensors of one arena, in order. Obtained from <see cref="MemoryPlanBuilder.Arena"/>.</summary>
public sealed class ArenaPlanBuilder
{
    private readonly List<(string Name, long Count, int ElementSize)> tensors = [];
    private readonly HashSet<string> names = new(StringComparer.Ordinal);

    internal ArenaPlanBuilder(string name) => Name = name;

    /// <summary>Arena name.</summary>
    public string Name { get; }

    /// <summary>Plans a tensor of <paramref name="elementCount"/> elements of <typeparamref name="T"/>.</summary>
    public ArenaPlanBuilder Add<T>(string tensorName, long elementCount) where T : unmanaged =>
        Add(tensorName, elementCount, Unsafe.SizeOf<T>());

    /// <summary>Plans a tensor of <paramref name="elementCount"/> elements of <paramref name="elementSize"/> bytes each.</summary>
    /// <exception cref="ArgumentException">The name is empty or already planned in this arena.</exception>
    /// <exception cref="ArgumentOutOfRangeException">The count is negative or the element size is not positive.</exception>
    public ArenaPlanBuilder Add(string tensorName, long elementCount, int elementSize)
    {
        ArgumentException.ThrowIfNullOrEmpty(tensorName);
        if (elementCount < 0)
            throw new ArgumentOutOfRangeException(nameof(elementCount), elementCount,
                $"Tensor '{tensorName}' in arena '{Name}' cannot have a negative element count.");
        if (elementSize <= 0)
            throw new ArgumentOutOfRangeException(nameof(elementSize), elementSize,
                $"Tensor '{tensorName}' in arena '{Name}' needs a positive element size.");
        if (!names.Add(tensorName))
            throw new ArgumentException($"Tensor '{tensorName}' is already planned in arena '{Name}'.", nameof(tensorName));
        tensors.Add((tensorName, elementCount, elementSize));
        return this;
    }

    internal ArenaPlan Build()
    {
        var placements = new TensorPlacement[tensors.Count];
        long cursor = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            var (name, count, size) = tensors[i];
            long offset = MemoryPlan.AlignUp(cursor);
            long bytes;
            try
            {
                bytes = checked(count * size);
                cursor = checked(offset + bytes);
            }
            catch (OverflowException e)
            {
                throw new OverflowException(
                    $"Arena '{Name}' overflows 64-bit byte arithmetic at tensor '{name}' ({count} elements of {size} bytes at offset {offset}).", e);
            }
            placements[i] = new TensorPlacement(name, count, size, offset);
        }
        return new ArenaPlan(Name, placements, MemoryPlan.AlignUp(cursor));
    }
}
