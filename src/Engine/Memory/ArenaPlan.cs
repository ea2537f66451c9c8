using System.Diagnostics.CodeAnalysis;

namespace DistAlign.Engine.Memory;

/// <summary>
/// The layout of one arena: an ordered list of named tensors, each at a 64-byte aligned offset, and the total
/// size of the contiguous block that holds them. Immutable; built by <see cref="MemoryPlanBuilder"/>.
/// </summary>
public sealed class ArenaPlan
{
    private readonly Dictionary<string, int> indexByName;

    internal ArenaPlan(string name, IReadOnlyList<TensorPlacement> tensors, long sizeInBytes)
    {
        Name = name;
        Tensors = tensors;
        SizeInBytes = sizeInBytes;
        indexByName = new Dictionary<string, int>(tensors.Count, StringComparer.Ordinal);
        for (int i = 0; i < tensors.Count; i++) indexByName.Add(tensors[i].Name, i);
    }

    /// <summary>Arena name (e.g. <c>parameters</c>, <c>activations</c>).</summary>
    public string Name { get; }

    /// <summary>Tensors in the order they were planned, with their offsets.</summary>
    public IReadOnlyList<TensorPlacement> Tensors { get; }

    /// <summary>Size of the arena's block in bytes: the end of its last tensor rounded up to the alignment.</summary>
    public long SizeInBytes { get; }

    /// <summary>True when the arena plans a tensor called <paramref name="tensorName"/>.</summary>
    public bool Contains(string tensorName) => indexByName.ContainsKey(tensorName);

    /// <summary>Looks up a tensor's placement without throwing.</summary>
    public bool TryGetTensor(string tensorName, [MaybeNullWhen(false)] out TensorPlacement placement)
    {
        if (indexByName.TryGetValue(tensorName, out int index))
        {
            placement = Tensors[index];
            return true;
        }
        placement = default;
        return false;
    }

    /// <summary>The placement of <paramref name="tensorName"/>.</summary>
    /// <exception cref="KeyNotFoundException">No such tensor in this arena; the message names both.</exception>
    public TensorPlacement GetTensor(string tensorName) =>
        TryGetTensor(tensorName, out var placement)
            ? placement
            : throw new KeyNotFoundException(
                $"Arena '{Name}' has no tensor named '{tensorName}' ({Tensors.Count} tensors planned{NearestNameHint(tensorName)}).");

    private string NearestNameHint(string tensorName)
    {
        // A cheap hint for the common typo: a planned name that shares the longest prefix.
        string? best = null;
        int bestLength = 0;
        foreach (var t in Tensors)
        {
            int common = 0;
            while (common < t.Name.Length && common < tensorName.Length && t.Name[common] == tensorName[common]) common++;
            if (common > bestLength) { bestLength = common; best = t.Name; }
        }
        return best is null ? "" : $"; closest planned name: '{best}'";
    }
}
