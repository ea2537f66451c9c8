namespace DistAlign.Engine.SafeTensors;

/// <summary>A validated header entry: what a tensor is and where its bytes lie.</summary>
public sealed class SafeTensorInfo
{
    internal SafeTensorInfo(string name, SafeTensorDType dtype, long[] shape, long dataBegin, long dataEnd, long elementCount)
    {
        Name = name;
        DType = dtype;
        Shape = shape;
        DataBegin = dataBegin;
        DataEnd = dataEnd;
        ElementCount = elementCount;
    }

    /// <summary>Tensor name.</summary>
    public string Name { get; }

    /// <summary>Stored element type.</summary>
    public SafeTensorDType DType { get; }

    /// <summary>Dimensions, outermost first.</summary>
    public IReadOnlyList<long> Shape { get; }

    /// <summary>Number of elements (product of the shape; 1 for a scalar).</summary>
    public long ElementCount { get; }

    /// <summary>Start of the tensor's bytes, relative to the start of the data section.</summary>
    public long DataBegin { get; }

    /// <summary>End (exclusive) of the tensor's bytes, relative to the start of the data section.</summary>
    public long DataEnd { get; }

    /// <summary>Size of the stored bytes.</summary>
    public long SizeInBytes => DataEnd - DataBegin;

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {DType.HeaderName()}[{string.Join(", ", Shape)}] @ [{DataBegin}, {DataEnd})";
}
