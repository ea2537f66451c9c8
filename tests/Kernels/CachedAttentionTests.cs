using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Cpu.Simd;
using static DistAlign.Tests.Kernels.KernelTest;
using static DistAlign.Tests.TestSupport.Numerics;

namespace DistAlign.Tests.Kernels;

/// <summary>The KV-cache attention step against an fp64 softmax-weighted sum over the cached positions, at every accelerated vector width.</summary>
[NonParallelizable] // tests set the kernels' vector width
public class CachedAttentionTests
{
    private static double[] Reference(float[] qkv, float[] keys, float[] values, int rows, int maxT, int position, int heads, int c)
    {
        int hs = c / heads;
        var output = new double[rows * c];
        for (int r = 0; r < rows; r++)
            for (int h = 0; h < heads; h++)
            {
                var scores = new double[position + 1];
                for (int s = 0; s <= position; s++)
                {
                    double dot = 0;
                    for (int d = 0; d < hs; d++) dot += (double)qkv[r * 3 * c + h * hs + d] * keys[(r * maxT + s) * c + h * hs + d];
                    scores[s] = dot / Math.Sqrt(hs);
                }
                double max = scores.Max(), sum = scores.Sum(x => Math.Exp(x - max));
                for (int s = 0; s <= position; s++)
                    for (int d = 0; d < hs; d++)
                        output[r * c + h * hs + d] += Math.Exp(scores[s] - max) / sum * values[(r * maxT + s) * c + h * hs + d];
            }
        return output;
    }

    private static IEnumerable<TestCaseData> Shapes() => VectorWidths.Each(
        [1, 4, 1, 0, 4],       // one position: the output is v_0
        [3, 12, 3, 6, 9],      // hs = 4, odd row count
        [2, 130, 2, 16, 17],   // hs = 65: vectors and a scalar tail
        [2, 42, 2, 9, 10],     // hs = 21: one vector and a tail of 5 at width 16, two and 5 at 8, five and 1 at 4
        [5, 128, 2, 30, 31]);  // hs = 64 (GPT-2), last position of the cache

    [TestCaseSource(nameof(Shapes))]
    public void MatchesTheFp64ReferenceForAnyThreadCount(int rows, int c, int heads, int position, int maxT, VectorWidth width) => VectorWidths.At(width, () =>
    {
        var qkv = RandomFloats(rows * 3 * c, 1);
        var keys = RandomFloats(rows * maxT * c, 2);
        var values = RandomFloats(rows * maxT * c, 3);
        var expected = Reference(qkv, keys, values, rows, maxT, position, heads, c);
        float[]? first = null;
        foreach (int threads in new[] { 1, 2, 3 })
            WithThreads(threads, () =>
            {
                var output = new float[rows * c];
                CachedAttention.Forward(qkv, keys, values, rows, maxT, position, heads, output, new float[CachedAttention.ScratchLength(rows, heads, maxT)]);
                AssertClose(output, expected, 1e-6, 1e-5, $"output, {threads} threads");
                if (first is null) first = output; else AssertBitIdentical(first, output, $"{threads} threads");
            });
    });

    [Test]
    public void TooSmallAScratchIsRejected() =>
        Assert.That(() => CachedAttention.Forward(new float[2 * 3 * 8], new float[2 * 4 * 8], new float[2 * 4 * 8], 2, 4, 3, 2, new float[2 * 8], new float[2 * 4]),
            Throws.ArgumentException.With.Message.Contains("R·NH·(t+1)"));
}
