namespace DistAlign.Engine.Devices;

/// <summary>Thrown when a device cannot provide the memory a buffer needs.</summary>
public sealed class DeviceOutOfMemoryException : OutOfMemoryException
{
    /// <summary>Creates the exception for a failed request of <paramref name="requestedBytes"/> on <paramref name="deviceName"/>.</summary>
    public DeviceOutOfMemoryException(string deviceName, long requestedBytes, Exception? innerException = null)
        : base(string.Format(System.Globalization.CultureInfo.InvariantCulture,
            "Device '{0}' could not allocate {1:N0} bytes ({2:F1} MiB). Reduce the batch size, sequence length or model size, " +
            "or plan memory with MemoryPlan.EnsureFits to see what needs the space.",
            deviceName, requestedBytes, requestedBytes / (1024.0 * 1024.0)), innerException)
    {
        DeviceName = deviceName;
        RequestedBytes = requestedBytes;
    }

    /// <summary>The device that refused the request.</summary>
    public string DeviceName { get; }

    /// <summary>How many bytes were requested.</summary>
    public long RequestedBytes { get; }
}
