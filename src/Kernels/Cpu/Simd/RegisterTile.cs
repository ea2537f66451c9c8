using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>
/// The few operations of a register-tile kernel (GEMM's micro-kernels, the few-rows GEMM): broadcast, load and multiply-add on
/// the raw vector type. Such a kernel keeps its whole tile of accumulators in registers, and there the JIT handles the raw
/// vector types better than <see cref="IFloatVector{TSelf}"/>'s wrapper structs: with every register taken, it copied each
/// wrapper-typed FMA result into its accumulator (vfmadd213ps + vmovaps instead of one vfmadd231ps) and broadcast A values
/// through a register (vmovss + a shuffle-port vbroadcastss) instead of straight from memory, which made the 6×16 AVX2 kernel
/// front-end bound and the 8-row AVX-512 pass shuffle-bound. Everything outside the k loop (stores, epilogues) converts to
/// <see cref="IRegisterTile{TVector, TLanes}.Lanes"/> and uses the readable operators.
/// </summary>
/// <typeparam name="TVector">Vector512&lt;float&gt;, Vector256&lt;float&gt; or Vector128&lt;float&gt;.</typeparam>
internal interface IRegisterTile<TVector> where TVector : unmanaged
{
    /// <summary>fp32 lanes per vector.</summary>
    static abstract int Count { get; }

    /// <summary>Every lane 0.</summary>
    static abstract TVector Zero { get; }

    /// <summary>Count floats from <paramref name="source"/>.</summary>
    static abstract unsafe TVector Load(float* source);

    /// <summary>Every lane <paramref name="value"/> (from memory, this compiles to one vbroadcastss load).</summary>
    static abstract TVector Broadcast(float value);

    /// <summary>a·b + c, fused where the hardware fuses (never emulated).</summary>
    static abstract TVector MultiplyAdd(TVector a, TVector b, TVector c);
}

/// <summary><see cref="IRegisterTile{TVector}"/> with its <see cref="IFloatVector{TSelf}"/> counterpart.</summary>
internal interface IRegisterTile<TVector, TLanes> : IRegisterTile<TVector> where TVector : unmanaged where TLanes : unmanaged, IFloatVector<TLanes>
{
    /// <summary>The same lanes as <typeparamref name="TLanes"/> (no instruction).</summary>
    static abstract TLanes Lanes(TVector value);
}

internal readonly struct RegisterTile512 : IRegisterTile<Vector512<float>, Vector512Lanes>
{
    public static int Count => 16;
    public static Vector512<float> Zero { [MethodImpl(MethodImplOptions.AggressiveInlining)] get => Vector512<float>.Zero; }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector512<float> Load(float* source) => Vector512.Load(source);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512<float> Broadcast(float value) => Vector512.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector512<float> MultiplyAdd(Vector512<float> a, Vector512<float> b, Vector512<float> c) => Vector512.FusedMultiplyAdd(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector512Lanes Lanes(Vector512<float> value) => new(value);
}

internal readonly struct RegisterTile256 : IRegisterTile<Vector256<float>, Vector256Lanes>
{
    public static int Count => 8;
    public static Vector256<float> Zero { [MethodImpl(MethodImplOptions.AggressiveInlining)] get => Vector256<float>.Zero; }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector256<float> Load(float* source) => Vector256.Load(source);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256<float> Broadcast(float value) => Vector256.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector256<float> MultiplyAdd(Vector256<float> a, Vector256<float> b, Vector256<float> c) => Vector256.MultiplyAddEstimate(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector256Lanes Lanes(Vector256<float> value) => new(value);
}

internal readonly struct RegisterTile128 : IRegisterTile<Vector128<float>, Vector128Lanes>
{
    public static int Count => 4;
    public static Vector128<float> Zero { [MethodImpl(MethodImplOptions.AggressiveInlining)] get => Vector128<float>.Zero; }
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static unsafe Vector128<float> Load(float* source) => Vector128.Load(source);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128<float> Broadcast(float value) => Vector128.Create(value);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static Vector128<float> MultiplyAdd(Vector128<float> a, Vector128<float> b, Vector128<float> c) => Vector128.MultiplyAddEstimate(a, b, c);
    [MethodImpl(MethodImplOptions.AggressiveInlining)] public static Vector128Lanes Lanes(Vector128<float> value) => new(value);
}
