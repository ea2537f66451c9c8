namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference: gelu(x) = 0.5x(1 + tanh(√(2/π)(x + 0.044715x³))) and its derivative, written directly.</summary>
public static class ReferenceGelu
{
    private static readonly double K = Math.Sqrt(2.0 / Math.PI);

    public static double Value(double x) => 0.5 * x * (1.0 + Math.Tanh(K * (x + 0.044715 * x * x * x)));

    public static double Derivative(double x)
    {
        double u = K * (x + 0.044715 * x * x * x);
        double th = Math.Tanh(u);
        double du = K * (1.0 + 3.0 * 0.044715 * x * x);
        return 0.5 * (1.0 + th) + 0.5 * x * (1.0 - th * th) * du;
    }

    public static double[] Forward(double[] x) => x.Select(Value).ToArray();

    public static double[] Backward(double[] dout, double[] x)
    {
        var d = new double[x.Length];
        for (int i = 0; i < x.Length; i++) d[i] = dout[i] * Derivative(x[i]);
        return d;
    }
}
