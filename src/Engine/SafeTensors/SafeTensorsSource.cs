using Microsoft.Win32.SafeHandles;

namespace DistAlign.Engine.SafeTensors;

/// <summary>Positioned reads over the bytes of a safetensors file, wherever they live.</summary>
internal abstract class SafeTensorsSource : IDisposable
{
    public abstract long Length { get; }

    /// <summary>Fills <paramref name="destination"/> from <paramref name="offset"/>; throws if the source ends first.</summary>
    public abstract void ReadExactly(long offset, Span<byte> destination);

    public virtual void Dispose()
    {
    }
}

/// <summary>A file read with positioned reads through one handle: no whole-file buffering.</summary>
internal sealed class FileSource : SafeTensorsSource
{
    private readonly SafeFileHandle handle;

    public FileSource(string path)
    {
        handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read, FileOptions.RandomAccess);
        Length = RandomAccess.GetLength(handle);
    }

    public override long Length { get; }

    public override void ReadExactly(long offset, Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int read = RandomAccess.Read(handle, destination, offset);
            if (read == 0) throw new EndOfStreamException($"The file ended at byte {offset} while {destination.Length} more bytes were expected; was it truncated while open?");
            destination = destination[read..];
            offset += read;
        }
    }

    public override void Dispose() => handle.Dispose();
}

/// <summary>Bytes already in memory.</summary>
internal sealed class MemorySource(ReadOnlyMemory<byte> bytes) : SafeTensorsSource
{
    public override long Length => bytes.Length;

    public override void ReadExactly(long offset, Span<byte> destination) =>
        bytes.Span.Slice(checked((int)offset), destination.Length).CopyTo(destination);
}

/// <summary>A seekable stream; reads are serialised because they move the stream's position.</summary>
internal sealed class StreamSource(Stream stream, bool leaveOpen) : SafeTensorsSource
{
    private readonly Lock gate = new();

    public override long Length { get; } = stream.Length;

    public override void ReadExactly(long offset, Span<byte> destination)
    {
        lock (gate)
        {
            stream.Position = offset;
            stream.ReadExactly(destination);
        }
    }

    public override void Dispose()
    {
        if (!leaveOpen) stream.Dispose();
    }
}
