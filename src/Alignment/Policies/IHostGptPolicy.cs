using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A GPT policy whose weights and AdamW moments are saved from, and restored into, a host <see cref="Gpt"/>
/// (<see cref="GptCheckpoint"/>'s format). The CPU <see cref="GptPolicy"/> trains that model in place; the CUDA
/// <see cref="GpuGptPolicy"/> trains a device copy and keeps the host model as its mirror, so a checkpoint first
/// copies the device state down and a restore copies it back up.
/// </summary>
public interface IHostGptPolicy : IPolicy
{
    /// <summary>The host model: the one trained (CPU) or the mirror of the device copy (CUDA; current after <see cref="CopyToHost"/>).</summary>
    Gpt Model { get; }

    /// <summary>Makes <see cref="Model"/> hold the current weights and AdamW moments (a download on the GPU, nothing on the CPU).</summary>
    void CopyToHost();

    /// <summary>
    /// After <see cref="Model"/>'s weights and moments were overwritten (a checkpoint restore), makes training continue
    /// from them (an upload on the GPU, nothing on the CPU). Gradients are zeroed on the GPU.
    /// </summary>
    void CopyFromHost();
}
