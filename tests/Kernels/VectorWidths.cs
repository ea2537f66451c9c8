using DistAlign.Kernels.Cpu.Simd;

namespace DistAlign.Tests.Kernels;

/// <summary>A function of one vector, generic over the width (a lambda cannot be generic).</summary>
internal interface ILaneFunction
{
    TVector Invoke<TVector>(TVector x) where TVector : unmanaged, IFloatVector<TVector>;
}

/// <summary>The vector widths a kernel test runs at: every width this machine accelerates.</summary>
internal static class VectorWidths
{
    /// <summary>Test cases: each accelerated width, widest first.</summary>
    public static IEnumerable<VectorWidth> Accelerated => CpuVectors.Accelerated;

    /// <summary><paramref name="function"/> applied to <paramref name="x"/> in vectors of <paramref name="width"/> (a short last vector padded with 0).</summary>
    public static float[] Apply<TFunction>(VectorWidth width, float[] x, TFunction function) where TFunction : ILaneFunction => width switch
    {
        VectorWidth.Vector512 => Apply<TFunction, Vector512Lanes>(x, function),
        VectorWidth.Vector256 => Apply<TFunction, Vector256Lanes>(x, function),
        VectorWidth.Vector128 => Apply<TFunction, Vector128Lanes>(x, function),
        _ => Apply<TFunction, ScalarLanes>(x, function),
    };

    private static unsafe float[] Apply<TFunction, TVector>(float[] x, TFunction function)
        where TFunction : ILaneFunction where TVector : unmanaged, IFloatVector<TVector>
    {
        int width = TVector.Count;
        var r = new float[x.Length];
        var lanes = new float[width];
        fixed (float* pl = lanes)
            for (int i = 0; i < x.Length; i += width)
            {
                Array.Clear(lanes);
                Array.Copy(x, i, lanes, 0, Math.Min(width, x.Length - i));
                function.Invoke(TVector.Load(pl)).Store(pl);
                Array.Copy(lanes, 0, r, i, Math.Min(width, x.Length - i));
            }
        return r;
    }

    /// <summary>
    /// Test cases: each of <paramref name="cases"/> (a test's other arguments) at each accelerated width, the width last,
    /// so one <c>[TestCaseSource]</c> runs a shape table at every width.
    /// </summary>
    public static IEnumerable<TestCaseData> Each(params object[][] cases) =>
        from arguments in cases from width in CpuVectors.Accelerated select new TestCaseData([.. arguments, width]);

    /// <summary>Runs <paramref name="action"/> with the kernels at <paramref name="width"/>.</summary>
    public static void At(VectorWidth width, Action action)
    {
        using (CpuVectors.Use(width)) action();
    }
}
