using DistAlign.Engine.Random;

namespace DistAlign.Tests.Engine;

public class PhiloxTests
{
    // Known-answer vectors for Philox4x32-10 from the Random123 distribution (kat_vectors).
    private static readonly object[] KnownAnswers =
    [
        new object[] { new uint[] { 0, 0, 0, 0 }, new uint[] { 0, 0 },
                       new uint[] { 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8 } },
        new object[] { new uint[] { 0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff }, new uint[] { 0xffffffff, 0xffffffff },
                       new uint[] { 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd } },
        new object[] { new uint[] { 0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344 }, new uint[] { 0xa4093822, 0x299f31d0 },
                       new uint[] { 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 } },
    ];

    [TestCaseSource(nameof(KnownAnswers))]
    public void MatchesRandom123KnownAnswers(uint[] counter, uint[] key, uint[] expected)
    {
        var actual = new uint[4];
        Philox.Block(counter, key, actual);
        Assert.That(actual, Is.EqualTo(expected), string.Join(" ", actual.Select(w => w.ToString("x8"))));
    }

    [Test]
    public void SeededBlockMapsSeedToKeyAndCountersToWords()
    {
        // Third vector through the seeded API: seed = k1:k0, counterLo = c1:c0, counterHi = c3:c2.
        var philox = new Philox(0x299f31d0_a4093822UL);
        var words = philox.Block(counterHi: 0x03707344_13198a2eUL, counterLo: 0x85a308d3_243f6a88UL);
        Assert.That(words, Is.EqualTo(new uint[] { 0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1 }));
        var block = philox.Block(counterHi: 17, counterLo: 0x1234);
        Assert.That(philox.UInt32At(17, 0x1234 * 4 + 2), Is.EqualTo(block[2]));
    }

    [Test]
    public void SameSeedGivesSameStreamAndDifferentSeedsOrStreamsDiffer()
    {
        var a = new float[1000];
        var b = new float[1000];
        new Philox(42).FillUniform(a, stream: 3, offset: 0);
        new Philox(42).FillUniform(b, stream: 3, offset: 0);
        Assert.That(b, Is.EqualTo(a));
        new Philox(43).FillUniform(b, stream: 3, offset: 0);
        Assert.That(b, Is.Not.EqualTo(a));
        new Philox(42).FillUniform(b, stream: 4, offset: 0);
        Assert.That(b, Is.Not.EqualTo(a));
    }

    [Test]
    public void ParallelFillsAreBitIdenticalToSequential()
    {
        int n = Philox.ParallelChunkElements * 3 + 12345;
        var philox = new Philox(7);
        var one = new float[n];
        var two = new float[n];
        var all = new float[n];
        philox.FillNormal(one, stream: 1, offset: 5, mean: 0f, standardDeviation: 0.02f, maxDegreeOfParallelism: 1);
        philox.FillNormal(two, stream: 1, offset: 5, mean: 0f, standardDeviation: 0.02f, maxDegreeOfParallelism: 2);
        philox.FillNormal(all, stream: 1, offset: 5, mean: 0f, standardDeviation: 0.02f, maxDegreeOfParallelism: -1);
        Assert.That(BitsOf(two), Is.EqualTo(BitsOf(one)));
        Assert.That(BitsOf(all), Is.EqualTo(BitsOf(one)));

        philox.FillUniform(one, stream: 2, offset: 3, maxDegreeOfParallelism: 1);
        philox.FillUniform(two, stream: 2, offset: 3, maxDegreeOfParallelism: 2);
        Assert.That(BitsOf(two), Is.EqualTo(BitsOf(one)));
    }

    [TestCase(0, 10)]
    [TestCase(1, 7)]
    [TestCase(3, 1)]
    [TestCase(5, 100)]
    [TestCase(6, 0)]
    public void SubRangeFillEqualsSliceOfLargerFill(int offset, int length)
    {
        var philox = new Philox(2024);
        var big = new float[200];
        var part = new float[length];
        philox.FillUniform(big, 9, 0);
        philox.FillUniform(part, 9, (ulong)offset);
        Assert.That(part, Is.EqualTo(big.AsSpan(offset, length).ToArray()));

        philox.FillNormal(big, 9, 0, 1f, 2f);
        philox.FillNormal(part, 9, (ulong)offset, 1f, 2f);
        Assert.That(part, Is.EqualTo(big.AsSpan(offset, length).ToArray()));

        var bigWords = new uint[200];
        var partWords = new uint[length];
        philox.FillUInt32(bigWords, 9, 0);
        philox.FillUInt32(partWords, 9, (ulong)offset);
        Assert.That(partWords, Is.EqualTo(bigWords.AsSpan(offset, length).ToArray()));
    }

    [Test]
    public void UniformIsInRangeWithRightMeanAndVariance()
    {
        const int n = 1 << 20;
        var u = new float[n];
        new Philox(1).FillUniform(u, 0, 0, maxDegreeOfParallelism: -1);
        Assert.That(u.Min(), Is.GreaterThanOrEqualTo(0f));
        Assert.That(u.Max(), Is.LessThan(1f));
        double mean = u.Average(x => (double)x);
        double variance = u.Sum(x => (x - mean) * (x - mean)) / n;
        // Five standard errors: sd(mean) = sqrt(1/12/n), sd(var) = sqrt((1/80 - 1/144)/n).
        Assert.That(mean, Is.EqualTo(0.5).Within(5 * Math.Sqrt(1.0 / 12 / n)));
        Assert.That(variance, Is.EqualTo(1.0 / 12).Within(5 * Math.Sqrt((1.0 / 80 - 1.0 / 144) / n)));
    }

    [Test]
    public void NormalHasRequestedMeanAndStandardDeviation()
    {
        const int n = 1 << 20;
        const double mu = 1.5, sigma = 2.0;
        var z = new float[n];
        new Philox(99).FillNormal(z, 4, 0, (float)mu, (float)sigma, maxDegreeOfParallelism: -1);
        Assert.That(z.All(float.IsFinite), Is.True);
        double mean = z.Average(x => (double)x);
        double std = Math.Sqrt(z.Sum(x => (x - mean) * (x - mean)) / n);
        Assert.That(mean, Is.EqualTo(mu).Within(5 * sigma / Math.Sqrt(n)));
        Assert.That(std, Is.EqualTo(sigma).Within(5 * sigma / Math.Sqrt(2.0 * n)));
        // Tails: about 0.27% of a normal lies beyond 3 sigma.
        double beyond3 = z.Count(x => Math.Abs(x - mu) > 3 * sigma) / (double)n;
        Assert.That(beyond3, Is.EqualTo(0.0027).Within(0.0005));
    }

    [Test]
    public void BoxMullerNeverTakesLogOfZero()
    {
        // The all-zero word is the worst case for u1; it must map to a finite value.
        Assert.That(double.IsFinite(Philox.BoxMuller(0, 0, sine: false)), Is.True);
        Assert.That(double.IsFinite(Philox.BoxMuller(0, uint.MaxValue, sine: true)), Is.True);
        Assert.That(Philox.BoxMuller(uint.MaxValue, 0, sine: false), Is.EqualTo(0.0), "u1 = 1 gives radius 0");
    }

    [Test]
    public void BadArgumentsAreRejected()
    {
        var philox = new Philox(0);
        Assert.Throws<ArgumentOutOfRangeException>(() => philox.FillUniform(new float[4], 0, ulong.MaxValue - 1));
        Assert.DoesNotThrow(() => philox.FillUniform(new float[2], 0, ulong.MaxValue - 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => philox.FillUniform(new float[4], 0, 0, maxDegreeOfParallelism: 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => philox.FillNormal(new float[4], 0, 0, 0f, -1f));
        Assert.Throws<ArgumentOutOfRangeException>(() => philox.FillNormal(new float[4], 0, 0, float.NaN, 1f));
        Assert.Throws<ArgumentException>(() => Philox.Block(new uint[3], new uint[2], new uint[4]));
    }

    private static int[] BitsOf(float[] values) => values.Select(BitConverter.SingleToInt32Bits).ToArray();
}

public class PhiloxStreamTests
{
    [Test]
    public void NextUIntMatchesFill()
    {
        var words = new uint[23];
        new Philox(5).FillUInt32(words, stream: 8, offset: 3);
        var stream = new PhiloxStream(5, 8, position: 3);
        var drawn = Enumerable.Range(0, 23).Select(_ => stream.NextUInt()).ToArray();
        Assert.That(drawn, Is.EqualTo(words));
        Assert.That(stream.Position, Is.EqualTo(26UL));
    }

    [Test]
    public void NextFloatAndNextNormalMatchFills()
    {
        var uniforms = new float[10];
        new Philox(11).FillUniform(uniforms, 2, 0);
        var s = new PhiloxStream(11, 2);
        Assert.That(Enumerable.Range(0, 10).Select(_ => s.NextFloat()).ToArray(), Is.EqualTo(uniforms));

        var normals = new float[10];
        new Philox(11).FillNormal(normals, 2, 0, 0f, 1f);
        var n = new PhiloxStream(11, 2);
        for (int j = 0; j < 10; j += 2)
            Assert.That(n.NextNormal(), Is.EqualTo(normals[j]), $"normal {j}");
    }

    [Test]
    public void SavedStateResumesIdentically()
    {
        var original = new PhiloxStream(123, 4);
        for (int i = 0; i < 7; i++) original.NextUInt(); // odd position, mid-block
        PhiloxStreamState saved = original.State;
        var expected = new List<float>();
        for (int i = 0; i < 20; i++) expected.Add(i % 3 == 0 ? original.NextNormal() : original.NextFloat());

        var resumed = new PhiloxStream(saved);
        var actual = new List<float>();
        for (int i = 0; i < 20; i++) actual.Add(i % 3 == 0 ? resumed.NextNormal() : resumed.NextFloat());
        Assert.That(actual, Is.EqualTo(expected));
        Assert.That(resumed.State, Is.EqualTo(original.State));

        // Rewinding through the settable position works too.
        original.Position = saved.Position;
        Assert.That(original.NextNormal(), Is.EqualTo(expected[0]));
    }
}
