using DistAlign.Kernels.Cpu;

namespace DistAlign.Tests.Kernels;

public class CpuParallelTests
{
    [TestCase(0, 2)]
    [TestCase(1, 2)]
    [TestCase(7, 2)]
    [TestCase(1000, 3)]
    public void RangesCoverEveryIndexExactlyOnce(int count, int ranges)
    {
        var seen = new int[count];
        for (int r = 0; r < ranges; r++)
        {
            var (s, e) = CpuParallel.RangeOf(r, ranges, count);
            for (int i = s; i < e; i++) seen[i]++;
        }
        Assert.That(seen, Is.All.EqualTo(1));
    }
}
