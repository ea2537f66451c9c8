using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Partial-vector loads and stores for the last (fewer than 16) elements of a loop, so that every
/// element goes through the same vector code. Vector and scalar transcendental functions round
/// differently (Vector512.Exp ≠ MathF.Exp in the last bit), and which elements fall in a range's tail
/// depends on the thread count: computing tails as padded vectors keeps element-wise kernels
/// bit-identical for any thread count.
/// </summary>
internal static class VectorTail
{
    /// <summary>Loads <paramref name="count"/> (&lt; 16) floats from <paramref name="source"/>, the other lanes set to <paramref name="padding"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe Vector512<float> Load(float* source, int count, float padding)
    {
        float* lanes = stackalloc float[16];
        for (int i = 0; i < 16; i++) lanes[i] = i < count ? source[i] : padding;
        return Vector512.Load(lanes);
    }

    /// <summary>Stores the first <paramref name="count"/> (&lt; 16) lanes of <paramref name="value"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static unsafe void Store(Vector512<float> value, float* destination, int count)
    {
        float* lanes = stackalloc float[16];
        value.Store(lanes);
        for (int i = 0; i < count; i++) destination[i] = lanes[i];
    }
}
