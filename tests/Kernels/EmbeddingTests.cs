using DistAlign.Kernels.Cpu;
using DistAlign.Tests.Reference;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

public class EmbeddingTests
{
    [Test]
    public void ReferenceBackwardMatchesFiniteDifferences()
    {
        const int c = 3, vocab = 5, maxT = 4;
        int[] tokens = [1, 4, 1, 0, 2, 1];
        int[] positions = [0, 1, 2, 0, 1, 3];
        var wte = D(RandomFloats(vocab * c, 1));
        var wpe = D(RandomFloats(maxT * c, 2));
        var g = D(RandomFloats(tokens.Length * c, 3));
        double Loss() => Dot(g, ReferenceEmbedding.Forward(tokens, positions, wte, wpe, c));
        var (dwte, dwpe) = ReferenceEmbedding.Backward(g, tokens, positions, c, vocab, maxT);
        AssertClose(dwte, FiniteDifferenceGradient(Loss, wte), 1e-7, 1e-6, "dwte");
        AssertClose(dwpe, FiniteDifferenceGradient(Loss, wpe), 1e-7, 1e-6, "dwpe");
    }

    [TestCase(0, 3, 7, 4)]
    [TestCase(1, 1, 1, 1)]
    [TestCase(17, 13, 11, 17)]
    [TestCase(40, 77, 9, 8)]   // few token ids: many rows scatter into the same gradient row
    [TestCase(4096, 100, 50, 64)]
    public void ForwardAndAccumulatingBackwardMatchReference(int n, int c, int vocab, int maxT)
    {
        var tokens = RandomInts(n, vocab, 1);
        var positions = RandomInts(n, maxT, 2);   // arbitrary (e.g. restarting) positions are allowed
        var wte = RandomFloats(vocab * c, 3);
        var wpe = RandomFloats(maxT * c, 4);
        var o = new float[n * c];
        Embedding.Forward(tokens, positions, wte, wpe, c, o);
        AssertClose(o, ReferenceEmbedding.Forward(tokens, positions, D(wte), D(wpe), c), 1e-7, 1e-6, "out");

        var dout = RandomFloats(n * c, 5);
        var dwte = RandomFloats(vocab * c, 6);
        var dwpe = RandomFloats(maxT * c, 7);
        var (rte, rpe) = ReferenceEmbedding.Backward(D(dout), tokens, positions, c, vocab, maxT);
        var expectedTe = Plus(dwte, rte);
        var expectedPe = Plus(dwpe, rpe);
        Embedding.Backward(dout, tokens, positions, c, dwte, dwpe);
        AssertClose(dwte, expectedTe, 1e-5, 1e-5, "dwte (accumulated)");
        AssertClose(dwpe, expectedPe, 1e-5, 1e-5, "dwpe (accumulated)");
    }

    [TestCase(-1, 0)]
    [TestCase(7, 0)]
    [TestCase(0, 4)]
    [TestCase(0, -1)]
    public void OutOfRangeIdsAreRejectedWithTheirIndex(int token, int position)
    {
        int[] tokens = [1, token];
        int[] positions = [0, position];
        var ex = Assert.Throws<ArgumentOutOfRangeException>(() =>
            Embedding.Forward(tokens, positions, new float[7 * 2], new float[4 * 2], 2, new float[2 * 2]));
        Assert.That(ex!.Message, Does.Contain("index 1"));
    }

    [Test]
    public void BackwardDoesNotDependOnThreadCount()
    {
        const int n = 4096, c = 100, vocab = 50, maxT = 64;
        var tokens = RandomInts(n, vocab, 1);
        var positions = RandomInts(n, maxT, 2);
        var dout = RandomFloats(n * c, 3);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var dwte = new float[vocab * c];
                var dwpe = new float[maxT * c];
                Embedding.Backward(dout, tokens, positions, c, dwte, dwpe);
                var both = dwte.Concat(dwpe).ToArray();
                if (first == null) first = both; else AssertBitIdentical(first, both, $"{threads} threads");
            });
    }
}
