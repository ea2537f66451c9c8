using System.Diagnostics;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// The one place CPU kernels go parallel. Work is split into <see cref="Threads"/> contiguous,
/// statically sized ranges, so which thread computes which element never depends on scheduling:
/// with the same thread count, every reduction adds the same numbers in the same order and results
/// are bit-identical run to run.
/// </summary>
/// <remarks>
/// The ranges run on a team of <see cref="Threads"/> − 1 dedicated worker threads plus the calling thread (the fork-join
/// model of OpenMP and OpenBLAS): a worker spins for <see cref="WorkerSpin"/> after its last range, so the next kernel
/// of a training step starts on it at once, then sleeps until the next call. The .NET thread pool, used before, woke
/// its worker too late for kernels of a millisecond or less: on a 2-vCPU VM, with 100 µs of serial work between calls,
/// the calling thread ran both halves of a 1 ms call itself in 243 of 300 calls (mean 2.13 ms instead of 1 ms), and a
/// 20 µs call took 108 µs. A call made while the team is busy — from a range body (nested) or from another thread —
/// runs its ranges through <see cref="Parallel.For(int, int, ParallelOptions, Action{int})"/> instead, with the same
/// ranges, so results do not change.
/// </remarks>
public static class CpuParallel
{
    private static int threads = Environment.ProcessorCount;

    /// <summary>How long an idle worker spins before it sleeps: longer than the serial gaps between the kernels of a step.</summary>
    private static readonly TimeSpan WorkerSpin = TimeSpan.FromMilliseconds(2);

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
    /// Range boundaries depend only on count, Threads and minPerRange. Exceptions from the ranges are thrown as one
    /// <see cref="AggregateException"/> after every range has finished.
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
        if (Team.Shared.TryRun(count, ranges, body)) return;
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

    /// <summary>
    /// Worker threads 1 … <c>workers</c> waiting for a job. A job is published by replacing <c>job</c>; worker w runs range w of
    /// each job it sees when w &lt; the job's range count, then counts the job's <c>Pending</c> down; the caller runs range 0
    /// and waits for 0. A worker that sees a job once never runs it again, and the caller publishes the next job only
    /// after this one's workers are done, so a worker that falls behind skips only jobs it has no range in.
    /// </summary>
    private sealed class Team
    {
        /// <summary>The process's one team; it grows to the largest range count asked for and never shrinks.</summary>
        public static readonly Team Shared = new();

        [ThreadStatic] private static bool insideTeam;

        private readonly Lock callerLock = new();
        private readonly object sleepLock = new();
        private Job? job;
        private int sleepers, workers;

        /// <summary>
        /// Starts workers up to <paramref name="count"/>. Called with the caller lock held, so no job is in flight: each new
        /// worker is handed the job published last as the one it has seen, and runs every job published after it.
        /// </summary>
        private void GrowTo(int count)
        {
            var last = Volatile.Read(ref job);
            for (int w = workers + 1; w <= count; w++)
            {
                int index = w;
                new Thread(() => WorkerLoop(index, last)) { IsBackground = true, Name = $"DistAlign CPU worker {index}" }.Start();
            }
            workers = Math.Max(workers, count);
        }

        /// <summary>Runs the job on the team; false (nothing run) when the team is busy or this thread is already inside it.</summary>
        public bool TryRun(int count, int ranges, Action<int, int> body)
        {
            if (insideTeam || !callerLock.TryEnter()) return false;
            try
            {
                insideTeam = true;
                if (workers < ranges - 1) GrowTo(ranges - 1);
                var current = new Job(body, count, ranges);
                Publish(current);
                current.Run(0);
                var spin = new SpinWait();
                while (Volatile.Read(ref current.Pending) > 0) spin.SpinOnce(sleep1Threshold: -1);
                if (current.Failures is { } failures) throw new AggregateException(failures.Where(e => e is not null)!);
                return true;
            }
            finally
            {
                insideTeam = false;
                callerLock.Exit();
            }
        }

        private void Publish(Job next)
        {
            Interlocked.Exchange(ref job, next);                       // full fence: the job is complete before any worker sees it
            if (Volatile.Read(ref sleepers) > 0)
            {
                lock (sleepLock) Monitor.PulseAll(sleepLock);
            }
        }

        private void WorkerLoop(int index, Job? seen)
        {
            insideTeam = true;
            long spinTicks = (long)(WorkerSpin.TotalSeconds * Stopwatch.Frequency);
            while (true)
            {
                seen = WaitForJob(seen, spinTicks);
                if (index < seen.Ranges)
                {
                    seen.Run(index);
                    Interlocked.Decrement(ref seen.Pending);
                }
            }
        }

        /// <summary>Spins for a while, then sleeps, until a job other than <paramref name="seen"/> is published; returns it.</summary>
        private Job WaitForJob(Job? seen, long spinTicks)
        {
            long until = Stopwatch.GetTimestamp() + spinTicks;
            var spin = new SpinWait();
            Job? now;
            while ((now = Volatile.Read(ref job)) == seen)
            {
                if (Stopwatch.GetTimestamp() > until) break;
                spin.SpinOnce(sleep1Threshold: -1);
            }
            if (now != seen) return now!;
            lock (sleepLock)
            {
                Interlocked.Increment(ref sleepers);                   // full fence: a caller that publishes after this pulses us
                try
                {
                    while ((now = Volatile.Read(ref job)) == seen) Monitor.Wait(sleepLock);
                    return now!;
                }
                finally
                {
                    Interlocked.Decrement(ref sleepers);
                }
            }
        }
    }

    /// <summary>One call's ranges: the body, where they are, how many workers are still running one, what they threw.</summary>
    private sealed class Job(Action<int, int> body, int count, int ranges)
    {
        /// <summary>What each range threw, by range; null (nothing allocated on the kernels' path) until one throws.</summary>
        public Exception?[]? Failures;
        public int Pending = Math.Max(0, ranges - 1);
        public int Ranges => ranges;

        public void Run(int r)
        {
            try
            {
                (int start, int end) = RangeOf(r, ranges, count);
                body(start, end);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref Failures, new Exception?[ranges], null);
                Failures[r] = e;
            }
        }
    }
}
