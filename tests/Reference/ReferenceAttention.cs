namespace DistAlign.Tests.Reference;

/// <summary>
/// fp64 reference causal multi-head attention over qkv [B, T, 3C] with optional segment ids [B, T];
/// backward through the explicit softmax Jacobian (Σ_r a·da computed directly, not via out).
/// </summary>
public static class ReferenceAttention
{
    public static bool Allowed(int[]? seg, int b, int T, int t, int s) =>
        s <= t && (seg == null || seg.Length == 0 || seg[b * T + s] == seg[b * T + t]);

    public static (double[] Att, double[] Out) Forward(double[] qkv, int[]? seg, int B, int T, int NH)
    {
        int C = qkv.Length / (3 * B * T), hs = C / NH;
        double scale = 1.0 / Math.Sqrt(hs);
        var att = new double[B * NH * T * T];
        var o = new double[B * T * C];
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++)
                {
                    var z = new double[T];
                    double max = double.NegativeInfinity;
                    for (int s = 0; s < T; s++)
                    {
                        if (!Allowed(seg, b, T, t, s)) continue;
                        double dot = 0;
                        for (int i = 0; i < hs; i++)
                            dot += qkv[(b * T + t) * 3 * C + h * hs + i] * qkv[(b * T + s) * 3 * C + C + h * hs + i];
                        z[s] = dot * scale;
                        max = Math.Max(max, z[s]);
                    }
                    double sum = 0;
                    for (int s = 0; s < T; s++)
                        if (Allowed(seg, b, T, t, s)) sum += Math.Exp(z[s] - max);
                    for (int s = 0; s < T; s++)
                    {
                        double a = Allowed(seg, b, T, t, s) ? Math.Exp(z[s] - max) / sum : 0.0;
                        att[((b * NH + h) * T + t) * T + s] = a;
                        for (int i = 0; i < hs; i++)
                            o[(b * T + t) * C + h * hs + i] += a * qkv[(b * T + s) * 3 * C + 2 * C + h * hs + i];
                    }
                }
        return (att, o);
    }

    public static double[] Backward(double[] dout, double[] qkv, int[]? seg, int B, int T, int NH)
    {
        int C = qkv.Length / (3 * B * T), hs = C / NH;
        double scale = 1.0 / Math.Sqrt(hs);
        var (att, _) = Forward(qkv, seg, B, T, NH);
        var d = new double[qkv.Length];
        for (int b = 0; b < B; b++)
            for (int h = 0; h < NH; h++)
                for (int t = 0; t < T; t++)
                {
                    int q = (b * T + t) * 3 * C + h * hs;
                    var da = new double[T];
                    double weighted = 0;
                    for (int s = 0; s < T; s++)
                    {
                        int v = (b * T + s) * 3 * C + 2 * C + h * hs;
                        double a = att[((b * NH + h) * T + t) * T + s];
                        for (int i = 0; i < hs; i++)
                        {
                            da[s] += dout[(b * T + t) * C + h * hs + i] * qkv[v + i];
                            d[v + i] += a * dout[(b * T + t) * C + h * hs + i];
                        }
                        weighted += a * da[s];
                    }
                    for (int s = 0; s < T; s++)
                    {
                        double a = att[((b * NH + h) * T + t) * T + s];
                        double dz = a * (da[s] - weighted) * scale;
                        int k = (b * T + s) * 3 * C + C + h * hs;
                        for (int i = 0; i < hs; i++)
                        {
                            d[q + i] += dz * qkv[k + i];
                            d[k + i] += dz * qkv[q + i];
                        }
                    }
                }
        return d;
    }
}
