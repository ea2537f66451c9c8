namespace DistAlign.Tests.Reference;

/// <summary>
/// The obvious fp64 GPT-2 forward pass, written straight from the architecture with no reuse of the
/// engine's code: the oracle for whole-model tests. Its gradient is taken by finite differences (the
/// model is tiny in tests), so it needs no backward of its own.
/// Parameters are held by their Hugging Face GPT-2 names, with HF's Conv1D layout (y = x·W + b, W is
/// [in, out]) and the LM head tied to wte.
/// </summary>
public sealed class ReferenceGpt
{
    public int Layers { get; }
    public int Heads { get; }
    public int Channels { get; }
    public int Vocab { get; }
    public int MaxSeq { get; }

    /// <summary>Every parameter tensor by HF name, as a flat row-major double array.</summary>
    public Dictionary<string, double[]> Parameters { get; } = new();

    public ReferenceGpt(int layers, int heads, int channels, int vocab, int maxSeq)
    {
        (Layers, Heads, Channels, Vocab, MaxSeq) = (layers, heads, channels, vocab, maxSeq);
        int c = channels;
        Parameters["wte.weight"] = new double[vocab * c];
        Parameters["wpe.weight"] = new double[maxSeq * c];
        for (int l = 0; l < layers; l++)
        {
            Parameters[$"h.{l}.ln_1.weight"] = new double[c];
            Parameters[$"h.{l}.ln_1.bias"] = new double[c];
            Parameters[$"h.{l}.attn.c_attn.weight"] = new double[c * 3 * c];
            Parameters[$"h.{l}.attn.c_attn.bias"] = new double[3 * c];
            Parameters[$"h.{l}.attn.c_proj.weight"] = new double[c * c];
            Parameters[$"h.{l}.attn.c_proj.bias"] = new double[c];
            Parameters[$"h.{l}.ln_2.weight"] = new double[c];
            Parameters[$"h.{l}.ln_2.bias"] = new double[c];
            Parameters[$"h.{l}.mlp.c_fc.weight"] = new double[c * 4 * c];
            Parameters[$"h.{l}.mlp.c_fc.bias"] = new double[4 * c];
            Parameters[$"h.{l}.mlp.c_proj.weight"] = new double[4 * c * c];
            Parameters[$"h.{l}.mlp.c_proj.bias"] = new double[c];
        }
        Parameters["ln_f.weight"] = new double[c];
        Parameters["ln_f.bias"] = new double[c];
    }

    /// <summary>
    /// Logits [B·T, V] for tokens at the given positions; token (b,t) attends to (b,s) iff s ≤ t and
    /// segment[b,s] == segment[b,t] (an empty segment array means one segment per row).
    /// </summary>
    public double[] Logits(int[] tokens, int[] positions, int[] segments, int batch, int seq)
    {
        int c = Channels, n = batch * seq;
        var final = Features(tokens, positions, segments, batch, seq);
        var wte = Parameters["wte.weight"];
        var logits = new double[n * Vocab];
        for (int i = 0; i < n; i++)
            for (int v = 0; v < Vocab; v++)
            {
                double s = 0;
                for (int j = 0; j < c; j++) s += final[i * c + j] * wte[v * c + j];
                logits[i * Vocab + v] = s;
            }
        return logits;
    }

    /// <summary>The final hidden states ln_f(x) [B·T, C] that the tied LM head reads (same attention rule as <see cref="Logits"/>).</summary>
    public double[] Features(int[] tokens, int[] positions, int[] segments, int batch, int seq)
    {
        int c = Channels, n = batch * seq;
        var x = new double[n * c];
        var wte = Parameters["wte.weight"];
        var wpe = Parameters["wpe.weight"];
        for (int i = 0; i < n; i++)
            for (int j = 0; j < c; j++)
                x[i * c + j] = wte[tokens[i] * c + j] + wpe[positions[i] * c + j];

        for (int l = 0; l < Layers; l++)
        {
            string p = $"h.{l}.";
            var h = LayerNorm(x, Parameters[p + "ln_1.weight"], Parameters[p + "ln_1.bias"], n, c);
            var qkv = Linear(h, Parameters[p + "attn.c_attn.weight"], Parameters[p + "attn.c_attn.bias"], n, c, 3 * c);
            var att = Attention(qkv, segments, batch, seq);
            var proj = Linear(att, Parameters[p + "attn.c_proj.weight"], Parameters[p + "attn.c_proj.bias"], n, c, c);
            for (int i = 0; i < x.Length; i++) x[i] += proj[i];
            var h2 = LayerNorm(x, Parameters[p + "ln_2.weight"], Parameters[p + "ln_2.bias"], n, c);
            var fc = Linear(h2, Parameters[p + "mlp.c_fc.weight"], Parameters[p + "mlp.c_fc.bias"], n, c, 4 * c);
            for (int i = 0; i < fc.Length; i++) fc[i] = Gelu(fc[i]);
            var mlp = Linear(fc, Parameters[p + "mlp.c_proj.weight"], Parameters[p + "mlp.c_proj.bias"], n, 4 * c, c);
            for (int i = 0; i < x.Length; i++) x[i] += mlp[i];
        }
        return LayerNorm(x, Parameters["ln_f.weight"], Parameters["ln_f.bias"], n, c);
    }

    /// <summary>−mean over targets ≠ −1 of ln softmax(logits)[target]; 0 when every target is ignored.</summary>
    public double Loss(int[] tokens, int[] positions, int[] segments, int[] targets, int batch, int seq)
    {
        var logits = Logits(tokens, positions, segments, batch, seq);
        double sum = 0;
        int count = 0;
        for (int i = 0; i < batch * seq; i++)
        {
            if (targets[i] < 0) continue;
            double max = double.NegativeInfinity;
            for (int v = 0; v < Vocab; v++) max = Math.Max(max, logits[i * Vocab + v]);
            double z = 0;
            for (int v = 0; v < Vocab; v++) z += Math.Exp(logits[i * Vocab + v] - max);
            sum += logits[i * Vocab + targets[i]] - max - Math.Log(z);
            count++;
        }
        return count == 0 ? 0 : -sum / count;
    }

    private static double[] LayerNorm(double[] x, double[] w, double[] b, int n, int c)
    {
        var y = new double[n * c];
        for (int i = 0; i < n; i++)
        {
            double mean = 0, var = 0;
            for (int j = 0; j < c; j++) mean += x[i * c + j];
            mean /= c;
            for (int j = 0; j < c; j++) var += (x[i * c + j] - mean) * (x[i * c + j] - mean);
            var /= c;
            double rstd = 1.0 / Math.Sqrt(var + 1e-5);
            for (int j = 0; j < c; j++) y[i * c + j] = (x[i * c + j] - mean) * rstd * w[j] + b[j];
        }
        return y;
    }

    private static double[] Linear(double[] x, double[] w, double[] b, int n, int inDim, int outDim)
    {
        var y = new double[n * outDim];
        for (int i = 0; i < n; i++)
            for (int o = 0; o < outDim; o++)
            {
                double s = b[o];
                for (int k = 0; k < inDim; k++) s += x[i * inDim + k] * w[k * outDim + o];
                y[i * outDim + o] = s;
            }
        return y;
    }

    private static double Gelu(double x) =>
        0.5 * x * (1 + Math.Tanh(Math.Sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

    private double[] Attention(double[] qkv, int[] segments, int batch, int seq)
    {
        int c = Channels, hs = c / Heads;
        var y = new double[batch * seq * c];
        var w = new double[seq];
        for (int b = 0; b < batch; b++)
            for (int h = 0; h < Heads; h++)
                for (int t = 0; t < seq; t++)
                {
                    int qi = (b * seq + t) * 3 * c + h * hs;
                    double max = double.NegativeInfinity;
                    for (int s = 0; s <= t; s++)
                    {
                        w[s] = double.NegativeInfinity;
                        if (segments.Length > 0 && segments[b * seq + s] != segments[b * seq + t]) continue;
                        int ki = (b * seq + s) * 3 * c + c + h * hs;
                        double dot = 0;
                        for (int j = 0; j < hs; j++) dot += qkv[qi + j] * qkv[ki + j];
                        w[s] = dot / Math.Sqrt(hs);
                        max = Math.Max(max, w[s]);
                    }
                    double z = 0;
                    for (int s = 0; s <= t; s++) z += w[s] = Math.Exp(w[s] - max);
                    for (int s = 0; s <= t; s++)
                    {
                        int vi = (b * seq + s) * 3 * c + 2 * c + h * hs;
                        for (int j = 0; j < hs; j++) y[(b * seq + t) * c + h * hs + j] += w[s] / z * qkv[vi + j];
                    }
                }
        return y;
    }
}
