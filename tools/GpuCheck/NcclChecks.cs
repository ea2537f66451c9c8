using DistAlign.Engine.Cuda;
using DistAlign.Engine.Distributed;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// A one-rank NCCL smoke test (data-parallel training's device collectives): a communicator over one rank, then
/// all-reduce, broadcast, all-gather and reduce-scatter in place on the accelerator's stream. Over one rank each is the
/// identity, so the check is exact: the buffer must come back bit for bit. Skipped (with the reason) without libnccl.
/// </summary>
internal sealed class NcclChecks(CudaAccelerator accelerator, Report report)
{
    public void Run()
    {
        if (!CudaLibraries.Nccl.IsAvailable)
        {
            report.Note($"NCCL smoke test skipped: {CudaLibraries.Nccl.UnavailableReason}");
            return;
        }
        const int n = 1_000_003;   // odd, not a multiple of a vector width
        string what = $"NCCL one-rank collectives (all-reduce, broadcast, all-gather, reduce-scatter), {n:N0} floats";
        try
        {
            accelerator.Bind();
            using var nccl = NcclCommunicator.Create(SingleProcessGroup.Instance);
            report.Note($"NCCL: {nccl.Description}, loaded {CudaLibraries.Nccl.LoadedFrom}");
            var expected = KernelChecks.RandomFloats(n, 31, 1f);
            using var buffer = accelerator.Allocate1D(expected);
            using var other = accelerator.Allocate1D<float>(n);
            nint stream = ((CudaStream)accelerator.DefaultStream).StreamPtr;
            ulong data = (ulong)buffer.NativePtr, copy = (ulong)other.NativePtr;
            nccl.AllReduceSum(data, n, stream, "smoke all-reduce");
            nccl.Broadcast(data, n, root: 0, stream, "smoke broadcast");
            nccl.AllGather(data, copy, n, stream, "smoke all-gather");
            nccl.ReduceScatterSum(copy, data, n, stream, "smoke reduce-scatter");
            accelerator.Synchronize();
            nccl.ThrowIfFailed("smoke collectives");
            var actual = buffer.GetAsArray1D();
            int mismatches = 0;
            for (int i = 0; i < n; i++) if (BitConverter.SingleToInt32Bits(actual[i]) != BitConverter.SingleToInt32Bits(expected[i])) mismatches++;
            report.Add(new CheckResult(what, n, mismatches, mismatches == 0 ? 0 : double.PositiveInfinity, "bit-identical",
                                       mismatches == 0 ? null : $"{mismatches} elements changed"));
        }
        catch (Exception e)
        {
            report.Add(new CheckResult(what, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}"));
        }
    }
}
