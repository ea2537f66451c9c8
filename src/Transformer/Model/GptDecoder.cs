using DistAlign.Kernels.Cpu;

namespace DistAlign.Transformer.Model;

/// <summary>
/// Incremental (KV-cache) inference for a <see cref="Gpt"/>: one new position per row per call, each
/// layer's keys and values kept for the positions already seen. Rows advance in lockstep, one position
/// per <see cref="Step"/>. Buffers are sized once for (rows, maxLength); a step allocates nothing.
/// </summary>
public sealed class GptDecoder : IIncrementalDecoder
{
    private readonly Gpt model;
    private readonly float[][] keyCache, valueCache; // per layer: [R, maxT, C]
    private readonly float[] x, ln, mean, rstd, qkv, atty, projection, fch, fchGelu, attScratch, residual;
    private readonly int[] positionIds;

    public int Rows { get; }
    public int MaxLength { get; }
    /// <summary>Positions already processed (the next <see cref="Step"/> processes this one).</summary>
    public int Position { get; private set; }
    /// <summary>Logits [R, V] of the last step: the distribution of the token after it.</summary>
    public float[] Logits { get; }
    /// <summary>Final hidden states ln_f(x) [R, C] of the last step: what the LM head (and any head on the features) reads.</summary>
    public ReadOnlySpan<float> Features => ln;

    ReadOnlySpan<float> IIncrementalDecoder.Logits => Logits;

    public GptDecoder(Gpt model, int rows, int maxLength)
    {
        var cfg = model.Config;
        if (maxLength > cfg.MaxSequenceLength)
            throw new ArgumentException($"decoding length {maxLength} exceeds the model's context of {cfg.MaxSequenceLength}");
        ArgumentOutOfRangeException.ThrowIfLessThan(rows, 1);
        this.model = model;
        Rows = rows;
        MaxLength = maxLength;
        int c = cfg.Channels;
        keyCache = new float[cfg.Layers][];
        valueCache = new float[cfg.Layers][];
        for (int l = 0; l < cfg.Layers; l++)
        {
            keyCache[l] = new float[rows * maxLength * c];
            valueCache[l] = new float[rows * maxLength * c];
        }
        x = new float[rows * c];
        residual = new float[rows * c];
        ln = new float[rows * c];
        mean = new float[rows];
        rstd = new float[rows];
        qkv = new float[rows * 3 * c];
        atty = new float[rows * c];
        projection = new float[rows * c];
        fch = new float[rows * 4 * c];
        fchGelu = new float[rows * 4 * c];
        attScratch = new float[CachedAttention.ScratchLength(rows, cfg.Heads, maxLength)];
        positionIds = new int[rows];
        Logits = new float[rows * cfg.VocabSize];
    }

    /// <summary>Forgets the cache: the next step is position 0.</summary>
    public void Reset() => Position = 0;

    /// <summary>
    /// Feeds tokens[r] at the current position of every row and leaves the next-token logits in
    /// <see cref="Logits"/>. Same math as <see cref="Gpt.Forward"/> restricted to one position.
    /// </summary>
    public void Step(ReadOnlySpan<int> tokens)
    {
        var cfg = model.Config;
        int r = Rows, c = cfg.Channels, t = Position;
        if (tokens.Length != r) throw new ArgumentException($"one token per row ({r}) expected, got {tokens.Length}");
        if (t >= MaxLength) throw new InvalidOperationException($"the decoder is full: {MaxLength} positions already processed");
        foreach (int id in tokens)
            if ((uint)id >= (uint)cfg.VocabSize) throw new ArgumentException($"token id {id} is outside the vocabulary [0, {cfg.VocabSize})", nameof(tokens));
        var layout = model.Layout;
        ReadOnlySpan<float> p = model.Parameters;
        Array.Fill(positionIds, t);
        Embedding.Forward(tokens, positionIds, p.Slice((int)layout.Wte, cfg.VocabSize * c), p.Slice((int)layout.Wpe, cfg.MaxSequenceLength * c), c, x);

        for (int l = 0; l < cfg.Layers; l++)
        {
            var o = layout.Blocks[l];
            LayerNorm.Forward(x, p.Slice((int)o.Ln1Weight, c), p.Slice((int)o.Ln1Bias, c), ln, mean, rstd);
            Linear.Forward(ln, p.Slice((int)o.AttnWeight, c * 3 * c), p.Slice((int)o.AttnBias, 3 * c), qkv, r, c, 3 * c);
            for (int row = 0; row < r; row++)
            {
                int at = (row * MaxLength + t) * c;
                qkv.AsSpan(row * 3 * c + c, c).CopyTo(keyCache[l].AsSpan(at, c));
                qkv.AsSpan(row * 3 * c + 2 * c, c).CopyTo(valueCache[l].AsSpan(at, c));
            }
            CachedAttention.Forward(qkv, keyCache[l], valueCache[l], r, MaxLength, t, cfg.Heads, atty, attScratch);
            Linear.Forward(atty, p.Slice((int)o.AttnProjWeight, c * c), p.Slice((int)o.AttnProjBias, c), projection, r, c, c);
            Residual.Forward(x, projection, residual);
            LayerNorm.Forward(residual, p.Slice((int)o.Ln2Weight, c), p.Slice((int)o.Ln2Bias, c), ln, mean, rstd);
            Linear.Forward(ln, p.Slice((int)o.FcWeight, c * 4 * c), p.Slice((int)o.FcBias, 4 * c), fch, r, c, 4 * c);
            Gelu.Forward(fch, fchGelu);
            Linear.Forward(fchGelu, p.Slice((int)o.FcProjWeight, 4 * c * c), p.Slice((int)o.FcProjBias, c), projection, r, 4 * c, c);
            Residual.Forward(residual, projection, x);
        }
        LayerNorm.Forward(x, p.Slice((int)layout.LnFWeight, c), p.Slice((int)layout.LnFBias, c), ln, mean, rstd);
        Gemm.Multiply(Transpose.No, Transpose.Yes, r, cfg.VocabSize, c, 1f, ln, c, p.Slice((int)layout.Wte, cfg.VocabSize * c), c, 0f, Logits, cfg.VocabSize);
        Position++;
    }
}
