namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference target log-probabilities via a two-pass log-sum-exp, and the softmax gradient.</summary>
public static class ReferenceTargetLogProbs
{
    public static (double[] LogProbs, double[] Lse) Forward(double[] logits, int[] targets, int V)
    {
        int n = targets.Length;
        var lp = new double[n];
        var lse = new double[n];
        for (int i = 0; i < n; i++)
        {
            double max = double.NegativeInfinity;
            for (int v = 0; v < V; v++) max = Math.Max(max, logits[i * V + v]);
            double sum = 0;
            for (int v = 0; v < V; v++) sum += Math.Exp(logits[i * V + v] - max);
            lse[i] = max + Math.Log(sum);
            lp[i] = targets[i] < 0 ? 0.0 : logits[i * V + targets[i]] - lse[i];
        }
        return (lp, lse);
    }

    public static double[] Backward(double[] logits, int[] targets, int V, double[] dLogProbs)
    {
        var (_, lse) = Forward(logits, targets, V);
        var d = new double[logits.Length];
        for (int i = 0; i < targets.Length; i++)
        {
            if (targets[i] < 0) continue;
            for (int v = 0; v < V; v++)
                d[i * V + v] = dLogProbs[i] * ((v == targets[i] ? 1.0 : 0.0) - Math.Exp(logits[i * V + v] - lse[i]));
        }
        return d;
    }
}
