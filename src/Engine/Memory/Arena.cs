using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace DistAlign.Engine.Memory;

/// <summary>
/// One contiguous block of host memory (zeroed, <see cref="MemoryPlan.Alignment"/>-byte aligned) holding every
/// tensor of an <see cref="ArenaPlan"/>, handing out spans by tensor name at the offsets the plan fixed.
/// Allocated once; hot paths only look spans up. GPU memory is not here: the GPU engine holds ILGPU buffers.
/// </summary>
public sealed unsafe class Arena : IDisposable
{
    private byte* pointer;
    private int disposed;

    private Arena(ArenaPlan plan, byte* pointer)
    {
        Plan = plan;
        this.pointer = pointer;
    }

    /// <summary>Frees the block if the owner did not dispose the arena.</summary>
    ~Arena() => Release();

    /// <summary>Allocates the arena's single block: zeroed host memory aligned to <see cref="MemoryPlan.Alignment"/> bytes.</summary>
    /// <exception cref="ArenaOutOfMemoryException">The block could not be allocated; the message names the arena and the bytes.</exception>
    public static Arena Allocate(ArenaPlan plan)
    {
        ArgumentNullException.ThrowIfNull(plan);
        long bytes = plan.SizeInBytes;
        if ((ulong)bytes > nuint.MaxValue) throw new ArenaOutOfMemoryException(plan.Name, bytes);
        // At least one alignment unit, so that even an empty arena has a valid, distinct address.
        nuint toAllocate = (nuint)Math.Max(bytes, MemoryPlan.Alignment);
        byte* block;
        try
        {
            block = (byte*)NativeMemory.AlignedAlloc(toAllocate, MemoryPlan.Alignment);
        }
        catch (OutOfMemoryException e)
        {
            throw new ArenaOutOfMemoryException(plan.Name, bytes, e);
        }
        NativeMemory.Clear(block, toAllocate);
        if (bytes > 0) GC.AddMemoryPressure(bytes);
        return new Arena(plan, block);
    }

    /// <summary>The layout this arena was allocated from.</summary>
    public ArenaPlan Plan { get; }

    /// <summary>Arena name.</summary>
    public string Name => Plan.Name;

    /// <summary>Size of the arena's block in bytes.</summary>
    public long SizeInBytes => Plan.SizeInBytes;

    /// <summary>True once <see cref="Dispose"/> has run.</summary>
    public bool IsDisposed => Volatile.Read(ref disposed) != 0;

    /// <summary>Address of the block's first byte (a multiple of <see cref="MemoryPlan.Alignment"/>), for interop; valid until disposal.</summary>
    public nint Address => (nint)Block;

    /// <summary>The whole block as raw bytes (e.g. for zeroing or checkpointing an arena at once).</summary>
    /// <exception cref="InvalidOperationException">The block is larger than a span can be.</exception>
    public Span<byte> Bytes
    {
        get
        {
            byte* block = Block;
            if (SizeInBytes > int.MaxValue)
                throw new InvalidOperationException(
                    $"Arena '{Name}' holds {SizeInBytes:N0} bytes, more than a Span<byte> can ({int.MaxValue:N0}); take its tensors one by one.");
            return new Span<byte>(block, (int)SizeInBytes);
        }
    }

    /// <summary>The raw bytes of tensor <paramref name="tensorName"/> (without alignment padding).</summary>
    /// <exception cref="KeyNotFoundException">The arena plans no such tensor; the message names tensor and arena.</exception>
    public Span<byte> this[string tensorName]
    {
        get
        {
            var p = Plan.GetTensor(tensorName);
            return View<byte>(p, p.SizeInBytes);
        }
    }

    /// <summary>Tensor <paramref name="tensorName"/> as a span of <typeparamref name="T"/>, which must match the planned element size.</summary>
    /// <exception cref="KeyNotFoundException">The arena plans no such tensor; the message names tensor and arena.</exception>
    /// <exception cref="ArgumentException"><typeparamref name="T"/> has a different size from the planned element.</exception>
    /// <exception cref="ObjectDisposedException">The arena has been disposed.</exception>
    public Span<T> Span<T>(string tensorName) where T : unmanaged
    {
        var p = Plan.GetTensor(tensorName);
        int size = Unsafe.SizeOf<T>();
        if (size != p.ElementSize)
            throw new ArgumentException(
                $"Tensor '{tensorName}' in arena '{Name}' was planned with {p.ElementSize}-byte elements, " +
                $"but was requested as {typeof(T).Name} ({size} bytes).", nameof(T));
        return View<T>(p, p.ElementCount);
    }

    private Span<T> View<T>(TensorPlacement p, long length) where T : unmanaged
    {
        byte* block = Block;
        if (length > int.MaxValue)
            throw new InvalidOperationException(
                $"Tensor '{p.Name}' in arena '{Name}' has {length:N0} elements, more than a Span<T> can hold ({int.MaxValue:N0}).");
        return new Span<T>(block + p.ByteOffset, (int)length);
    }

    private byte* Block
    {
        get
        {
            if (IsDisposed)
                throw new ObjectDisposedException(nameof(Arena), $"Arena '{Name}' ({SizeInBytes:N0} bytes) has been disposed and can no longer be used.");
            return pointer;
        }
    }

    /// <summary>Frees the arena's block. Safe to call more than once; spans taken earlier must not be used afterwards.</summary>
    public void Dispose()
    {
        Release();
        GC.SuppressFinalize(this);
    }

    private void Release()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        NativeMemory.AlignedFree(pointer);
        pointer = null;
        if (SizeInBytes > 0) GC.RemoveMemoryPressure(SizeInBytes);
    }

    /// <inheritdoc/>
    public override string ToString() => $"Arena '{Name}' ({Plan.Tensors.Count} tensors, {SizeInBytes} bytes of host memory)";
}
