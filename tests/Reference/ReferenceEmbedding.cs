namespace DistAlign.Tests.Reference;

/// <summary>fp64 reference: out[n] = wte[token[n]] + wpe[position[n]]; backward scatters dout into both tables.</summary>
public static class ReferenceEmbedding
{
    public static double[] Forward(int[] tokens, int[] positions, double[] wte, double[] wpe, int c)
    {
        var o = new double[tokens.Length * c];
        for (int n = 0; n < tokens.Length; n++)
            for (int j = 0; j < c; j++)
                o[n * c + j] = wte[tokens[n] * c + j] + wpe[positions[n] * c + j];
        return o;
    }

    public static (double[] DWte, double[] DWpe) Backward(double[] dout, int[] tokens, int[] positions, int c, int vocab, int maxT)
    {
        var dwte = new double[vocab * c];
        var dwpe = new double[maxT * c];
        for (int n = 0; n < tokens.Length; n++)
            for (int j = 0; j < c; j++)
            {
                dwte[tokens[n] * c + j] += dout[n * c + j];
                dwpe[positions[n] * c + j] += dout[n * c + j];
            }
        return (dwte, dwpe);
    }
}
