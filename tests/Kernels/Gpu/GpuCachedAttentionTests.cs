using static DistAlign.Tests.Kernels.Gpu.GpuTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels.Gpu;

/// <summary>
/// <see cref="DistAlign.Kernels.Gpu.GpuCachedAttention"/> (KV-cache append and one-query attention) against an fp64
/// reference at odd shapes: head sizes 5, 7 and 19 (not multiples of 16; 19 wider than the simulator's group), 2 or 3 heads, positions t = 0 (a single cached key:
/// every weight is 1), a middle one and the last one, more positions than some groups have threads.
/// Tolerance 2e-6 + 2e-5·|ref| (fp32 dots over ≤ 19 terms and a softmax over ≤ 300 positions).
/// </summary>
[TestFixture("simulator")]
[TestFixture("cuda")]
public class GpuCachedAttentionTests(string backend) : GpuFixture(backend)
{
    [TestCase(3, 3, 5, 9, 0)]
    [TestCase(3, 3, 5, 9, 4)]
    [TestCase(2, 3, 7, 9, 8)]
    [TestCase(1, 2, 7, 300, 299)]   // span 300 > the simulator's group: threads loop over positions
    [TestCase(2, 2, 19, 40, 37)]    // a head wider than the simulator's group: the weighted sum takes several passes over d
    public void AppendThenAttendMatchesTheFp64Reference(int rows, int heads, int headSize, int maxLength, int position)
    {
        int c = heads * headSize;
        // caches with garbage past `position` (must not be read) and earlier positions already filled
        var keys = RandomFloats(rows * maxLength * c, 1);
        var values = RandomFloats(rows * maxLength * c, 2);
        var qkv = RandomFloats(rows * 3 * c, 3, 2.0);
        using var dQkv = Up(qkv);
        using var dKeys = Up(keys);
        using var dValues = Up(values);
        using var dOut = Up(new float[rows * c]);
        using var dScores = Up(new float[rows * heads * maxLength]);
        var op = Ops.CachedAttention;
        op.Append(V(dQkv, qkv), rows, maxLength, position, heads, V(dKeys, keys), V(dValues, values));
        op.Forward(V(dQkv, qkv), V(dKeys, keys), V(dValues, values), rows, maxLength, position, heads, V(dOut, rows * c), V(dScores, rows * heads * maxLength));

        // the caches: position t of every row now holds the new k and v, everything else is unchanged
        var expectedKeys = (float[])keys.Clone();
        var expectedValues = (float[])values.Clone();
        for (int r = 0; r < rows; r++)
        {
            Array.Copy(qkv, r * 3 * c + c, expectedKeys, (r * maxLength + position) * c, c);
            Array.Copy(qkv, r * 3 * c + 2 * c, expectedValues, (r * maxLength + position) * c, c);
        }
        Assert.That(Down(dKeys, keys.Length), Is.EqualTo(expectedKeys), "key cache");
        Assert.That(Down(dValues, values.Length), Is.EqualTo(expectedValues), "value cache");

        var expected = new double[rows * c];
        double scale = 1.0 / Math.Sqrt(headSize);
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                var z = new double[position + 1];
                for (int s = 0; s <= position; s++)
                {
                    double dot = 0;
                    for (int d = 0; d < headSize; d++)
                        dot += (double)qkv[r * 3 * c + h * headSize + d] * expectedKeys[(r * maxLength + s) * c + h * headSize + d];
                    z[s] = dot * scale;
                }
                double max = z.Max(), sum = z.Sum(v => Math.Exp(v - max));
                for (int d = 0; d < headSize; d++)
                {
                    double acc = 0;
                    for (int s = 0; s <= position; s++) acc += Math.Exp(z[s] - max) / sum * expectedValues[(r * maxLength + s) * c + h * headSize + d];
                    expected[r * c + h * headSize + d] = acc;
                }
            }
        AssertClose(Down(dOut, rows * c), expected, 2e-6, 2e-5, $"output (t = {position})");
        if (position == 0)   // one key: the output is that position's value exactly
            for (int r = 0; r < rows; r++)
                Assert.That(Down(dOut, rows * c).AsSpan(r * c, c).ToArray(), Is.EqualTo(qkv.AsSpan(r * 3 * c + 2 * c, c).ToArray()), $"row {r} at t = 0");
    }

    [Test]
    public void BadShapesAreRefusedWithTheRuleBroken()
    {
        using var buffer = Up(new float[3 * 2 * 4 * 6]);
        var op = Ops.CachedAttention;
        var view = V(buffer, 3 * 6);
        var cache = V(buffer, 4 * 6);
        Assert.That(() => op.Forward(view, cache, cache, 1, 4, 4, 2, V(buffer, 6), V(buffer, 8)),
                    Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("position must be in [0, 4)"));
        Assert.That(() => op.Forward(view, cache, cache, 1, 4, 1, 4, V(buffer, 6), V(buffer, 16)),
                    Throws.ArgumentException.With.Message.Contains("not a positive multiple of NH = 4"));
        Assert.That(() => op.Forward(view, cache, cache, 1, 4, 1, 2, V(buffer, 6), V(buffer, 7)),
                    Throws.ArgumentException.With.Message.Contains("R·NH·maxT = 8"));
        Assert.That(() => op.Append(view, 1, 5, 1, 2, cache, cache),
                    Throws.ArgumentException.With.Message.Contains("[R, maxT, C]"));
    }
}
