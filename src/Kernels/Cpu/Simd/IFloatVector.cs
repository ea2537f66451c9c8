using System.Diagnostics.CodeAnalysis;

namespace DistAlign.Kernels.Cpu.Simd;

/// <summary>
/// One hardware vector of fp32 lanes, whatever its width: the contract every CPU kernel is written against once, as a
/// generic method <c>Kernel&lt;TVector&gt;() where TVector : unmanaged, IFloatVector&lt;TVector&gt;</c>, and run at the
/// widest width the machine accelerates (<see cref="VectorWidth"/>): <see cref="Vector512Lanes"/> (AVX-512),
/// <see cref="Vector256Lanes"/> (AVX2 + FMA), <see cref="Vector128Lanes"/> (SSE, ARM64 NEON), or <see cref="ScalarLanes"/> where
/// no vector width is accelerated. The JIT compiles one copy of the kernel per width, with every member below inlined to its instruction, so a kernel reads like its Vector512
/// original and, where registers are not scarce, compiles to the same instructions (checked on the generated code). Where a
/// kernel's accumulators fill the register file, the JIT may copy wrapper-typed results between registers (vfmadd213ps +
/// vmovaps for one vfmadd231ps): such register-tile loops are written over the raw vector type with
/// <see cref="IRegisterTile{TVector}"/> instead.
/// Nothing here is ever emulated: a width whose vectors are not accelerated is never chosen (scalar code is chosen instead).
/// </summary>
/// <typeparam name="TSelf">The implementing struct.</typeparam>
internal interface IFloatVector<TSelf> where TSelf : unmanaged, IFloatVector<TSelf>
{
    /// <summary>Lanes per vector: 16, 8 or 4.</summary>
    static abstract int Count { get; }

    /// <summary>Whether this width runs in hardware here (never chosen otherwise).</summary>
    static abstract bool IsHardwareAccelerated { get; }

    /// <summary>Every lane 0.</summary>
    static abstract TSelf Zero { get; }

    /// <summary>Every lane <paramref name="value"/>.</summary>
    static abstract TSelf Create(float value);

    /// <summary>Count floats from <paramref name="source"/> (any alignment).</summary>
    static abstract unsafe TSelf Load(float* source);

    /// <summary>Writes the Count lanes to <paramref name="destination"/> (any alignment).</summary>
    unsafe void Store(float* destination);

    static abstract TSelf operator +(TSelf left, TSelf right);
    static abstract TSelf operator -(TSelf left, TSelf right);
    static abstract TSelf operator *(TSelf left, TSelf right);
    static abstract TSelf operator /(TSelf left, TSelf right);
    static abstract TSelf operator -(TSelf value);

    /// <summary>Whether <see cref="MultiplyAdd"/> rounds once here (JIT-time constant).</summary>
    static abstract bool MultiplyAddIsFused { get; }

    /// <summary>a·b + c in one rounding where the hardware fuses it (AVX-512, FMA3, ARM64), two roundings otherwise
    /// (an x86 CPU without FMA): never a software-emulated FMA. Kernels whose accuracy contract depends on fusing say so.</summary>
    static abstract TSelf MultiplyAdd(TSelf a, TSelf b, TSelf c);

    /// <summary>Lane-wise maximum as the hardware computes it (x86 maxps returns <paramref name="right"/> when either is NaN; ARM64 fmax returns NaN).</summary>
    static abstract TSelf MaxNative(TSelf left, TSelf right);

    /// <summary>Lane-wise minimum as the hardware computes it (x86 minps returns <paramref name="right"/> when either is NaN).</summary>
    static abstract TSelf MinNative(TSelf left, TSelf right);

    /// <summary>Lane-wise √x.</summary>
    static abstract TSelf Sqrt(TSelf value);

    /// <summary>Lane-wise round to the nearest integer, ties to even.</summary>
    static abstract TSelf Round(TSelf value);

    /// <summary>Σ of the lanes in fp32 (the order is the hardware's pairwise tree).</summary>
    static abstract float Sum(TSelf value);

    /// <summary>Σ of the lanes, each widened to fp64 first: no rounding but the fp64 additions.</summary>
    static abstract double SumAsDouble(TSelf value);

    /// <summary>Largest lane (NaN lanes as the hardware's max treats them).</summary>
    static abstract float MaxAcross(TSelf value);

    /// <summary>All-ones lanes where left &lt; right, zero elsewhere (false for NaN).</summary>
    static abstract TSelf LessThan(TSelf left, TSelf right);

    /// <summary>All-ones lanes where left &gt; right, zero elsewhere (false for NaN).</summary>
    static abstract TSelf GreaterThan(TSelf left, TSelf right);

    /// <summary>All-ones lanes where left = right, zero elsewhere (false for NaN, so EqualTo(x, x) finds the NaN lanes).</summary>
    static abstract TSelf EqualTo(TSelf left, TSelf right);

    /// <summary>Lanes of <paramref name="ifTrue"/> where <paramref name="mask"/> is all ones, of <paramref name="ifFalse"/> where it is zero.</summary>
    static abstract TSelf Select(TSelf mask, TSelf ifTrue, TSelf ifFalse);

    /// <summary>A mask of the last <paramref name="count"/> lanes (lanes Count − count … Count − 1 all ones, the others zero).</summary>
    static abstract TSelf LastLanes(int count);

    /// <summary>Each lane's 32 bits shifted left as an integer (reinterpreting float bits): the exponent-building step of exp.</summary>
    static abstract TSelf ShiftBitsLeft(TSelf value, [ConstantExpected(Min = 1, Max = 31)] int count);

    /// <summary>
    /// p·2ⁿ for p in [½, 2] and integral <paramref name="n"/> in [−160, 160], rounded once, so results below the smallest normal float come out
    /// as correctly rounded denormals (then 0) and results above the largest as +∞; NaN in p stays NaN. AVX-512: vscalefps.
    /// Elsewhere: n is split into ⌊n/2⌋ + ⌈n/2⌉, both powers of two are normal floats, p·2^⌊n/2⌋ is exact and the second
    /// product rounds once, which gives the same bits.
    /// </summary>
    static abstract TSelf ScaleByPowerOfTwo(TSelf p, TSelf n);
}
