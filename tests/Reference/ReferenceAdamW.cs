namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference AdamW step (PyTorch's: p −= lr·λ·p, then the bias-corrected Adam step).</summary>
public static class ReferenceAdamW
{
    public static void Step(double[] p, double[] g, double[] m, double[] v, int t,
                            double lr, double beta1, double beta2, double eps, double weightDecay)
    {
        for (int i = 0; i < p.Length; i++)
        {
            p[i] -= lr * weightDecay * p[i];
            m[i] = beta1 * m[i] + (1 - beta1) * g[i];
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
            double mhat = m[i] / (1 - Math.Pow(beta1, t));
            double vhat = v[i] / (1 - Math.Pow(beta2, t));
            p[i] -= lr * mhat / (Math.Sqrt(vhat) + eps);
        }
    }
}
