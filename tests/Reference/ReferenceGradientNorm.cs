namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference global L2 norm and clipping scale.</summary>
public static class ReferenceGradientNorm
{
    public static double Norm(params double[][] tensors) => Math.Sqrt(tensors.Sum(t => t.Sum(x => x * x)));

    public static double ClipScale(double norm, double maxNorm) => Math.Min(1.0, maxNorm / (norm + 1e-6));
}
