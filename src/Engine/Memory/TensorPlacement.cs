namespace DistAlign.Engine.Memory;

/// <summary>Where one named tensor sits inside its arena.</summary>
/// <param name="Name">Tensor name, unique within its arena (e.g. <c>h.0.ln_1.weight</c>).</param>
/// <param name="ElementCount">Number of elements.</param>
/// <param name="ElementSize">Size of one element in bytes.</param>
/// <param name="ByteOffset">Offset from the start of the arena; a multiple of <see cref="MemoryPlan.Alignment"/>.</param>
public readonly record struct TensorPlacement(string Name, long ElementCount, int ElementSize, long ByteOffset)
{
    /// <summary>Bytes the tensor's elements occupy (without alignment padding).</summary>
    public long SizeInBytes => ElementCount * ElementSize;
}
