using DistAlign.Engine.Random;

namespace DistAlign.Alignment.Training;

/// <summary>
/// Visits a fixed list of items (pairs or prompts) in an order reshuffled per epoch by a Philox permutation of
/// (seed, epoch + 1), batch after batch; a batch may straddle two epochs. (epoch, index) is all its state, so a
/// resume that restores them continues the same sequence of batches.
/// </summary>
internal sealed class EpochCursor
{
    private readonly int[] items;
    private readonly ulong seed;
    private int[] order = [];

    /// <summary>Epoch of the next item.</summary>
    public int Epoch { get; private set; }
    /// <summary>Position of the next item in this epoch's order.</summary>
    public int Index { get; private set; }
    /// <summary>How many items an epoch has.</summary>
    public int Count => items.Length;
    /// <summary>Epochs completed, fractional.</summary>
    public double Progress => Epoch + (double)Index / items.Length;

    public EpochCursor(int[] items, ulong seed)
    {
        if (items.Length == 0) throw new ArgumentException("a cursor needs at least one item");
        this.items = items;
        this.seed = seed;
        Seek(0, 0);
    }

    /// <summary>Moves to (epoch, index), as a checkpoint saved them.</summary>
    public void Seek(int epoch, int index)
    {
        if (epoch < 0 || index < 0 || index > items.Length)
            throw new ArgumentOutOfRangeException(nameof(index), $"cursor ({epoch}, {index}) is outside an epoch of {items.Length} items");
        Epoch = epoch;
        Index = index;
        var permutation = new PhiloxStream(seed, (ulong)epoch + 1).Permutation(items.Length);
        order = new int[permutation.Length];
        for (int i = 0; i < order.Length; i++) order[i] = items[permutation[i]];
    }

    /// <summary>The next <paramref name="count"/> items.</summary>
    public int[] Next(int count)
    {
        var batch = new int[count];
        for (int i = 0; i < count; i++)
        {
            if (Index == order.Length) Seek(Epoch + 1, 0);
            batch[i] = order[Index++];
        }
        return batch;
    }
}
