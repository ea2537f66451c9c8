namespace DistAlign.Engine.Devices;

/// <summary>The kind of hardware a <see cref="Device"/> runs on.</summary>
public enum DeviceKind
{
    /// <summary>Host memory and CPU kernels.</summary>
    Cpu,

    /// <summary>An NVIDIA GPU reached through the CUDA driver API.</summary>
    Cuda,
}
