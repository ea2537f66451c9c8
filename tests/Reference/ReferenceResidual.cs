namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference: out = a + b; da = db = dout.</summary>
public static class ReferenceResidual
{
    public static double[] Forward(double[] a, double[] b)
    {
        var o = new double[a.Length];
        for (int i = 0; i < a.Length; i++) o[i] = a[i] + b[i];
        return o;
    }

    public static (double[] DA, double[] DB) Backward(double[] dout) => ((double[])dout.Clone(), (double[])dout.Clone());
}
