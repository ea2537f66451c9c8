namespace DistAlign.Kernels.Cpu;

/// <summary>
/// The one place CPU kernels go parallel. Work is split into <see cref="Threads"/> contiguous,
/// statically sized ranges, so which thread computes which element never depends on scheduling:
/// with the same thread count, every reduction adds the same numbers in the same order and results
/// are bit-identical run to run.
/// </summary>
public static class CpuParallel
{
    private static int threads = Environment.ProcessorCount;

    /// <summary>Worker count used by every CPU kernel (default: the processor count).</summary>
    public static int Threads
    {
        get => threads;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            threads = value;
        }
    }

    /// <summary>
    /// Runs <paramref name="body"/>(start, end) over [0, count) split into at most <see cref="Threads"/>
    /// contiguous ranges (fewer when there are fewer than <paramref name="minPerRange"/> items each).
    /// Range boundaries depend only on count, Threads and minPerRange.
    /// </summary>
    public static void For(int count, int minPerRange, Action<int, int> body)
    {
        if (count <= 0) return;
        int ranges = Math.Min(Threads, Math.Max(1, count / Math.Max(1, minPerRange)));
        if (ranges == 1)
        {
            body(0, count);
            return;
        }
        Parallel.For(0, ranges, new ParallelOptions { MaxDegreeOfParallelism = ranges }, r =>
        {
            (int start, int end) = RangeOf(r, ranges, count);
            body(start, end);
        });
    }

    /// <summary>The r-th of <paramref name="ranges"/> near-equal contiguous ranges of [0, count).</summary>
    public static (int Start, int End) RangeOf(int r, int ranges, int count)
    {
        long start = (long)count * r / ranges;
        long end = (long)count * (r + 1) / ranges;
        return ((int)start, (int)end);
    }
}
