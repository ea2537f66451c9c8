namespace DistAlign.Transformer.Model;

/// <summary>
/// Size of a GPT-2-architecture model: pre-LayerNorm blocks of causal self-attention and a GELU MLP,
/// learned position embeddings, LM head tied to the token embedding.
/// </summary>
/// <param name="Layers">number of transformer blocks (L)</param>
/// <param name="Heads">attention heads per block (NH); must divide <paramref name="Channels"/></param>
/// <param name="Channels">model width (C)</param>
/// <param name="VocabSize">vocabulary size (V)</param>
/// <param name="MaxSequenceLength">context length: the number of position embeddings (maxT)</param>
public sealed record GptConfig(int Layers, int Heads, int Channels, int VocabSize, int MaxSequenceLength)
{
    /// <summary>GPT-2 small (124M): 12 layers, 12 heads, width 768, 50,257 tokens, context 1024.</summary>
    public static GptConfig Gpt2Small => new(12, 12, 768, 50257, 1024);

    /// <summary>Channels per head (C / NH).</summary>
    public int HeadSize => Channels / Heads;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first field that is out of range.</summary>
    public GptConfig Validate()
    {
        if (Layers < 1) throw new ArgumentException($"layers must be ≥ 1 (got {Layers})");
        if (Heads < 1) throw new ArgumentException($"heads must be ≥ 1 (got {Heads})");
        if (Channels < 1) throw new ArgumentException($"channels must be ≥ 1 (got {Channels})");
        if (Channels % Heads != 0) throw new ArgumentException($"channels ({Channels}) must be a multiple of heads ({Heads})");
        if (VocabSize < 1) throw new ArgumentException($"vocabulary size must be ≥ 1 (got {VocabSize})");
        if (MaxSequenceLength < 1) throw new ArgumentException($"context length must be ≥ 1 (got {MaxSequenceLength})");
        return this;
    }

    /// <summary>Weights used in matmuls, counting the tied LM head once per use as llm.c's 6·N does (wte counted once).</summary>
    public long ParameterCount => ParameterLayout.For(this).TotalElements;
}
