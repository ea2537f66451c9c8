namespace DistAlign.Tests.Reference;

/// <summary>
/// fp64 reference of the fused LM head: per row, logits = h·Eᵀ, log-softmax, the target's log-prob and the
/// entropy (both 0 on rows with target −1). Used by the CPU and GPU SequenceLogProbs tests, directly and
/// through finite differences for the gradients.
/// </summary>
public static class ReferenceSequenceLogProbs
{
    public static (double[] LogProbs, double[] Entropy) Forward(double[] h, double[] e, int[] targets, int c, int v)
    {
        int n = targets.Length;
        var lp = new double[n];
        var ent = new double[n];
        var logits = new double[v];
        for (int i = 0; i < n; i++)
        {
            if (targets[i] < 0) continue;
            for (int k = 0; k < v; k++)
            {
                double s = 0;
                for (int j = 0; j < c; j++) s += h[i * c + j] * e[k * c + j];
                logits[k] = s;
            }
            double max = logits.Max(), z = 0;
            for (int k = 0; k < v; k++) z += Math.Exp(logits[k] - max);
            double lse = max + Math.Log(z);
            lp[i] = logits[targets[i]] - lse;
            for (int k = 0; k < v; k++)
            {
                double logP = logits[k] - lse;
                ent[i] -= Math.Exp(logP) * logP;
            }
        }
        return (lp, ent);
    }
}
