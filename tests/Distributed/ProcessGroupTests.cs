using DistAlign.Engine.Distributed;

namespace DistAlign.Tests.Distributed;

/// <summary>The process-group contract that needs no second process: one-process collectives, shares and replica hashes.</summary>
public class ProcessGroupTests
{
    [Test]
    public void OneProcessCollectivesAreTheIdentity()
    {
        var group = SingleProcessGroup.Instance;
        float[] values = [1.5f, -2f, float.Epsilon];
        group.AllReduceSum(values, "test");
        Assert.That(values, Is.EqualTo(new[] { 1.5f, -2f, float.Epsilon }));
        var gathered = new float[3];
        group.AllGather(values, gathered, "test");
        Assert.That(gathered, Is.EqualTo(values));
        var scattered = new float[3];
        group.ReduceScatterSum(values, scattered, "test");
        Assert.That(scattered, Is.EqualTo(values));
        Assert.That(group.AllGather(42UL, "test"), Is.EqualTo(new[] { 42UL }));
        Assert.That(group.Sum(2.5, "test"), Is.EqualTo(2.5));
        Assert.Throws<ArgumentException>(() => group.AllGather(values, new float[2], "test"));
        Assert.Throws<ArgumentOutOfRangeException>(() => group.Broadcast(new byte[1], root: 1, "test"));
    }

    [TestCase(0, 2, 0, 4)]
    [TestCase(1, 2, 4, 4)]
    [TestCase(2, 3, 8, 4)]
    public void ShareOfGivesEqualContiguousSharesInRankOrder(int rank, int size, int start, int count)
    {
        var group = new FakeGroup(rank, size);
        Assert.That(group.ShareOf(4 * size, "rows"), Is.EqualTo((start, count)));
    }

    [TestCase(7, 3, new[] { 0, 2, 4, 7 })]
    [TestCase(2, 3, new[] { 0, 0, 1, 2 })]
    [TestCase(0, 2, new[] { 0, 0, 0 })]
    public void PartOfCoversEveryItemOnceInRankOrderEvenWhenTheRanksOutnumberThem(int total, int size, int[] bounds)
    {
        for (int rank = 0; rank < size; rank++)
            Assert.That(new FakeGroup(rank, size).PartOf(total).GetOffsetAndLength(total), Is.EqualTo((bounds[rank], bounds[rank + 1] - bounds[rank])), $"rank {rank}");
    }

    [Test]
    public void ShareOfRefusesATotalThatIsNotAMultipleOfTheRanksAndNamesIt()
    {
        var e = Assert.Throws<ArgumentException>(() => new FakeGroup(0, 2).ShareOf(5, "the rows of a batch"));
        Assert.That(e!.Message, Is.EqualTo("the rows of a batch (5) must be a multiple of the number of ranks (2) so that every rank takes an equal share"));
    }

    [Test]
    public void TheReplicaHashSeesOneBitAndTheCheckNamesTheRankThatDiffers()
    {
        float[] weights = [0.25f, -1f, 3f];
        ulong hash = ReplicaCheck.Hash(weights);
        weights[1] = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(weights[1]) ^ 1);
        Assert.That(ReplicaCheck.Hash(weights), Is.Not.EqualTo(hash));

        var diverged = new FakeGroup(0, 3) { Gathered = [7UL, 7UL, 9UL] };
        var e = Assert.Throws<ProcessGroupException>(() => ReplicaCheck.EnsureSameOnEveryRank(diverged, 7UL, "after step 40"));
        Assert.That(e!.Message, Is.EqualTo("the ranks' weights diverged after step 40: rank 2 has 0x0000000000000009, rank 0 has 0x0000000000000007; stopping"));
        Assert.DoesNotThrow(() => ReplicaCheck.EnsureSameOnEveryRank(new FakeGroup(1, 3) { Gathered = [5UL, 5UL, 5UL] }, 5UL, "after step 1"));
    }

    [Test]
    public void WithoutOpenMpiTheMessageSaysWhatToInstall()
    {
        Assert.That(Mpi.UnavailableReason, Does.Contain("libmpi.so.40").And.Contain("apt-get install openmpi-bin"));
    }

    /// <summary>A rank of a pretend job: shares and gathers answer from fixed values, nothing is sent.</summary>
    private sealed class FakeGroup(int rank, int size) : IProcessGroup
    {
        public ulong[] Gathered { get; init; } = [];
        public int Rank => rank;
        public int Size => size;
        public string Description => $"pretend, {size} ranks";
        public void Barrier(string purpose) { }
        public void Broadcast(Span<byte> data, int root, string purpose) { }
        public void AllReduceSum(Span<float> data, string purpose) { }
        public void AllReduceSum(Span<double> data, string purpose) { }
        public void AllGather(ReadOnlySpan<float> mine, Span<float> all, string purpose) { }
        public void AllGather(ReadOnlySpan<byte> mine, Span<byte> all, string purpose) =>
            System.Runtime.InteropServices.MemoryMarshal.AsBytes(Gathered.AsSpan()).CopyTo(all);
        public void ReduceScatterSum(ReadOnlySpan<float> all, Span<float> mine, string purpose) { }
        public void AllGatherInPlace(Span<float> all, string purpose) { }
        public void Dispose() { }
    }
}
