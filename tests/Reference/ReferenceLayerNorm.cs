namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference LayerNorm over rows of C, ε = 1e-5, with the textbook backward.</summary>
public static class ReferenceLayerNorm
{
    public const double Epsilon = 1e-5;

    public static (double[] Out, double[] Mean, double[] Rstd) Forward(double[] x, double[] w, double[] b)
    {
        int c = w.Length, n = x.Length / c;
        var o = new double[x.Length];
        var mean = new double[n];
        var rstd = new double[n];
        for (int i = 0; i < n; i++)
        {
            double mu = 0;
            for (int j = 0; j < c; j++) mu += x[i * c + j];
            mu /= c;
            double variance = 0;
            for (int j = 0; j < c; j++) variance += (x[i * c + j] - mu) * (x[i * c + j] - mu);
            variance /= c;
            double r = 1.0 / Math.Sqrt(variance + Epsilon);
            for (int j = 0; j < c; j++) o[i * c + j] = (x[i * c + j] - mu) * r * w[j] + b[j];
            mean[i] = mu;
            rstd[i] = r;
        }
        return (o, mean, rstd);
    }

    public static (double[] DX, double[] DW, double[] DB) Backward(double[] dout, double[] x, double[] w)
    {
        int c = w.Length, n = x.Length / c;
        var (_, mean, rstd) = Forward(x, w, new double[c]);
        var dx = new double[x.Length];
        var dw = new double[c];
        var db = new double[c];
        for (int i = 0; i < n; i++)
        {
            double meanG = 0, meanGX = 0;
            for (int j = 0; j < c; j++)
            {
                double xhat = (x[i * c + j] - mean[i]) * rstd[i];
                double g = dout[i * c + j] * w[j];
                meanG += g;
                meanGX += g * xhat;
                dw[j] += dout[i * c + j] * xhat;
                db[j] += dout[i * c + j];
            }
            meanG /= c;
            meanGX /= c;
            for (int j = 0; j < c; j++)
            {
                double xhat = (x[i * c + j] - mean[i]) * rstd[i];
                dx[i * c + j] = rstd[i] * (dout[i * c + j] * w[j] - meanG - xhat * meanGX);
            }
        }
        return (dx, dw, db);
    }
}
