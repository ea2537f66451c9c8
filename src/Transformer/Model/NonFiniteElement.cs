using System.Globalization;

namespace DistAlign.Transformer.Model;

/// <summary>One element that is NaN or ±Inf: the tensor it belongs to (a <see cref="ParameterLayout"/> name), its index there and its value.</summary>
public readonly record struct NonFiniteElement(string Tensor, long Index, float Value)
{
    /// <summary>The first non-finite element of <paramref name="values"/> (laid out as <paramref name="layout"/>), or null when all are finite.</summary>
    public static NonFiniteElement? FindFirst(ParameterLayout layout, ReadOnlySpan<float> values)
    {
        foreach (var t in layout.Tensors)
        {
            var span = values.Slice((int)t.Offset, (int)t.Length);
            for (int i = 0; i < span.Length; i++)
                if (!float.IsFinite(span[i])) return new NonFiniteElement(t.Name, i, span[i]);
        }
        return null;
    }

    /// <summary>E.g. <c>'h.3.attn.c_attn.weight' (element 17 is NaN)</c>.</summary>
    public override string ToString() =>
        $"'{Tensor}' (element {Index.ToString(CultureInfo.InvariantCulture)} is {Value.ToString(CultureInfo.InvariantCulture)})";
}
