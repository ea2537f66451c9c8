using DistAlign.Engine.Distributed;
using DistAlign.Transformer.Model;

namespace DistAlign.Transformer.Training;

/// <summary>
/// How a trainer runs across the ranks of a data-parallel job: each rank takes an equal share of every global batch,
/// the gradients are summed over the ranks before clipping and AdamW, and every <see cref="WeightCheckEvery"/> steps the
/// ranks compare a hash of their weights (a mismatch stops the job on every rank).
/// </summary>
/// <param name="Group">the ranks (<see cref="SingleProcessGroup"/> for one process)</param>
/// <param name="WeightCheckEvery">compare weight hashes after every this many steps (0 = never)</param>
public sealed record DataParallelSettings(IProcessGroup Group, int WeightCheckEvery = 50)
{
    /// <summary>One process: no exchange, no checks.</summary>
    public static DataParallelSettings SingleProcess { get; } = new(SingleProcessGroup.Instance, 0);

    public bool IsDistributed => Group.Size > 1;

    /// <summary>After step <paramref name="completedSteps"/>: compares the ranks' hashes of <paramref name="weights"/> when due.</summary>
    public void CheckWeightsWhenDue(int completedSteps, Func<ulong> weights)
    {
        if (!IsDistributed || WeightCheckEvery <= 0 || completedSteps % WeightCheckEvery != 0) return;
        ReplicaCheck.EnsureSameOnEveryRank(Group, weights(), $"after step {completedSteps}");
    }

    /// <summary>The fingerprint of an engine's parameters (downloaded from a device).</summary>
    public static ulong HashOf(IGptEngine engine)
    {
        var parameters = new float[engine.Layout.TotalElements];
        engine.CopyParametersToHost(parameters);
        return ReplicaCheck.Hash(parameters);
    }
}
