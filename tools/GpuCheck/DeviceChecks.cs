using System.Diagnostics;
using DistAlign.Engine.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// The Engine's own CUDA device (primary context, cuMemAlloc, pinned staging, async copies on its stream):
/// zero fill, host → device → host round trips across several staging chunks and at odd offsets. Runs before
/// ILGPU creates its context, since this device makes the primary context current on the thread.
/// </summary>
internal static class DeviceChecks
{
    public static void Run(Report report)
    {
        try
        {
            using var device = CudaDevice.Create(0);
            var (free, total) = CudaDriver.MemoryInfo();
            report.Note($"{device.Name}: {free / (1024.0 * 1024 * 1024):F1} of {total / (1024.0 * 1024 * 1024):F1} GiB free");
            int length = 2 * CudaDevice.StagingBytes + 12_345;   // three staging chunks, odd tail
            var data = new byte[length];
            new Random(5).NextBytes(data);
            using var buffer = device.Allocate<byte>(length);
            var back = new byte[length];
            buffer.CopyTo(back);
            int nonZero = back.Count(b => b != 0);
            report.Add(new CheckResult("CudaDevice buffer is zero-filled", length, nonZero, nonZero, "exact", nonZero == 0 ? null : $"{nonZero} non-zero bytes"));
            var clock = Stopwatch.StartNew();
            buffer.CopyFrom(data);
            buffer.CopyTo(back);
            double seconds = clock.Elapsed.TotalSeconds;
            int differ = 0;
            for (int i = 0; i < length; i++) if (back[i] != data[i]) differ++;
            report.Add(new CheckResult($"CudaDevice host→device→host round trip ({length} bytes, pinned staging)", length, differ, differ, "exact",
                                       differ == 0 ? null : $"{differ} bytes differ"));
            report.Note($"CudaDevice round trip of {length / 1e6:F1} MB in {seconds * 1e3:F1} ms (both directions, staged through {CudaDevice.StagingBytes >> 20} MiB pinned)");
            var slice = new float[1000];
            for (int i = 0; i < slice.Length; i++) slice[i] = i * 0.5f;
            using var floats = device.Allocate<float>(4096);
            floats.CopyFrom(slice, destinationOffset: 777);
            var read = new float[slice.Length];
            floats.CopyTo(read, sourceOffset: 777);
            int wrong = slice.Where((x, i) => read[i] != x).Count();
            report.Add(new CheckResult("CudaDevice copy at an element offset", slice.Length, wrong, wrong, "exact", wrong == 0 ? null : $"{wrong} values differ"));
        }
        catch (Exception e)
        {
            report.Add(new CheckResult("CudaDevice (Engine driver bindings)", 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
        }
    }
}
