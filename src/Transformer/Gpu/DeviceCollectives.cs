using System.Runtime.CompilerServices;
using DistAlign.Engine.Distributed;
using ILGPU.Runtime.Cuda;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// The NCCL communicator of each CUDA accelerator in a data-parallel job, created the first time an engine on it
/// exchanges gradients (every rank reaches that point at the same step, so the unique-id broadcast lines up) and shared
/// by every engine on the accelerator (policy, reference, reward model). It lives as long as the accelerator.
/// </summary>
public static class DeviceCollectives
{
    private static readonly ConditionalWeakTable<CudaAccelerator, NcclCommunicator> Communicators = new();

    /// <summary>The accelerator's communicator over <paramref name="group"/>'s ranks (a collective the first time).</summary>
    public static NcclCommunicator For(CudaAccelerator accelerator, IProcessGroup group)
    {
        lock (Communicators)
        {
            if (Communicators.TryGetValue(accelerator, out var existing)) return existing;
            accelerator.Bind();   // NCCL uses the CUDA context current on this thread: the accelerator's
            var created = NcclCommunicator.Create(group);
            Communicators.Add(accelerator, created);
            return created;
        }
    }
}
