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

/// <summary>
/// <see cref="CpuParallel.For"/> on its worker team: every index once, range 0 on the caller and the others on workers, failures
/// reported after every range ended, nested and concurrent calls (which the team does not take) still complete, and a larger
/// thread count grows the team.
/// </summary>
[NonParallelizable]
public class CpuParallelTeamTests
{
    private int savedThreads;

    [SetUp] public void SaveThreads() => savedThreads = CpuParallel.Threads;
    [TearDown] public void RestoreThreads() => CpuParallel.Threads = savedThreads;

    [TestCase(2, 2)]
    [TestCase(3, 1000)]
    [TestCase(4, 37)]
    public void EveryIndexRunsOnceAndRangeZeroOnTheCaller(int threads, int count)
    {
        CpuParallel.Threads = threads;
        for (int call = 0; call < 200; call++)
        {
            var hits = new int[count];
            var threadOfRange = new int[threads];
            CpuParallel.For(count, 1, (start, end) =>
            {
                threadOfRange[RangeStartingAt(start, threads, count)] = Environment.CurrentManagedThreadId;
                for (int i = start; i < end; i++) Interlocked.Increment(ref hits[i]);
            });
            Assert.That(hits, Is.All.EqualTo(1), $"call {call}");
            Assert.That(threadOfRange[0], Is.EqualTo(Environment.CurrentManagedThreadId), "range 0 runs on the calling thread");
            Assert.That(threadOfRange.Distinct().Count(), Is.EqualTo(threads), "each range on its own thread");
        }
    }

    private static int RangeStartingAt(int start, int ranges, int count) =>
        Enumerable.Range(0, ranges).Single(r => CpuParallel.RangeOf(r, ranges, count).Start == start);

    [Test]
    public void FailuresArriveTogetherAfterEveryRangeEnded()
    {
        CpuParallel.Threads = 3;
        int finished = 0;
        var thrown = Assert.Throws<AggregateException>(() => CpuParallel.For(3, 1, (start, _) =>
        {
            if (start == 2) Thread.Sleep(50);   // the slowest range still finishes before the call returns
            Interlocked.Increment(ref finished);
            if (start != 1) throw new InvalidOperationException($"range at {start}");
        }));
        Assert.That(finished, Is.EqualTo(3));
        Assert.That(thrown!.InnerExceptions.Select(e => e.Message), Is.EquivalentTo(new[] { "range at 0", "range at 2" }));

        // The team is usable afterwards.
        int sum = 0;
        CpuParallel.For(3, 1, (start, end) => Interlocked.Add(ref sum, end - start));
        Assert.That(sum, Is.EqualTo(3));
    }

    [Test]
    public void NestedAndConcurrentCallsComplete()
    {
        CpuParallel.Threads = 2;
        const int Outer = 4, Inner = 500;
        var hits = new int[Outer * Inner];
        CpuParallel.For(Outer, 1, (start, end) =>
        {
            for (int o = start; o < end; o++)
            {
                int row = o;
                CpuParallel.For(Inner, 1, (s, e) =>
                {
                    for (int i = s; i < e; i++) Interlocked.Increment(ref hits[row * Inner + i]);
                });
            }
        });
        Assert.That(hits, Is.All.EqualTo(1), "nested");

        var concurrent = new int[8 * Inner];
        Parallel.For(0, 8, caller =>
        {
            for (int repeat = 0; repeat < 50; repeat++)
            {
                CpuParallel.For(Inner, 1, (s, e) =>
                {
                    for (int i = s; i < e; i++) Interlocked.Increment(ref concurrent[caller * Inner + i]);
                });
            }
        });
        Assert.That(concurrent, Is.All.EqualTo(50), "8 threads calling at once");
    }

    [Test]
    public void WorkersThatFellAsleepWakeForTheNextCall()
    {
        CpuParallel.Threads = 3;
        for (int call = 0; call < 30; call++)
        {
            Thread.Sleep(call % 3 == 0 ? 5 : 0);   // past the workers' spin: they sleep and must be woken
            int sum = 0;
            CpuParallel.For(3000, 1, (start, end) => Interlocked.Add(ref sum, end - start));
            Assert.That(sum, Is.EqualTo(3000), $"call {call}");
        }
    }

    [Test]
    public void MoreThreadsGrowTheTeam()
    {
        foreach (int threads in new[] { 2, 4, 3, 5 })
        {
            CpuParallel.Threads = threads;
            var threadIds = new int[threads];
            CpuParallel.For(threads, 1, (start, _) => threadIds[start] = Environment.CurrentManagedThreadId);
            Assert.That(threadIds.Distinct().Count(), Is.EqualTo(threads), $"{threads} threads");
        }
    }
}
