using System.Runtime.CompilerServices;
using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Partial-vector loads and stores for the last (fewer than Count) elements of a loop, so that every
/// element goes through the same vector code. Vector and scalar transcendental functions round
/// differently (a vector exp ≠ MathF.Exp in the last bit), and which elements fall in a range's tail
/// depends on the thread count: computing tails as padded vectors keeps element-wise kernels
/// bit-identical for any thread count.
/// Deliberately not inlined and free of stackalloc: a localloc inlined into a kernel's hot loop costs
/// the whole loop (measured 3× on LayerNorm), while a call once per row or range costs nothing.
/// </summary>
internal static class VectorTail
{
    [InlineArray(16)]
    private struct Lanes
    {
        private float element;
    }

    /// <summary>Loads <paramref name="count"/> (&lt; Count) floats from <paramref name="source"/>, the other lanes set to <paramref name="padding"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static unsafe TVector Load<TVector>(float* source, int count, float padding) where TVector : unmanaged, IFloatVector<TVector>
    {
        Lanes lanes = default;
        for (int i = 0; i < TVector.Count; i++) lanes[i] = i < count ? source[i] : padding;
        return TVector.Load(&lanes[0]);
    }

    /// <summary>Stores the first <paramref name="count"/> (&lt; Count) lanes of <paramref name="value"/>.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static unsafe void Store<TVector>(TVector value, float* destination, int count) where TVector : unmanaged, IFloatVector<TVector>
    {
        Lanes lanes = default;
        value.Store(&lanes[0]);
        for (int i = 0; i < count; i++) destination[i] = lanes[i];
    }
}
