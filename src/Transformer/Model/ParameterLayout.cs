namespace DistAlign.Transformer.Model;

/// <summary>One named tensor inside a flat parameter (or gradient, or moment) buffer.</summary>
/// <param name="Name">Hugging Face GPT-2 name, e.g. <c>h.0.attn.c_attn.weight</c></param>
/// <param name="Shape">row-major shape; linear weights are [in, out] (HF Conv1D layout)</param>
/// <param name="Offset">first element in the flat buffer</param>
public sealed record ParameterTensor(string Name, int[] Shape, long Offset)
{
    public long Length => Shape.Aggregate(1L, (a, d) => a * d);
}

/// <summary>Offsets of the parameters of one transformer block inside the flat buffer.</summary>
public readonly record struct BlockOffsets(
    long Ln1Weight, long Ln1Bias, long AttnWeight, long AttnBias, long AttnProjWeight, long AttnProjBias,
    long Ln2Weight, long Ln2Bias, long FcWeight, long FcBias, long FcProjWeight, long FcProjBias);

/// <summary>
/// Where every parameter of a <see cref="GptConfig"/> lives in one contiguous buffer, in Hugging Face
/// GPT-2 order and naming: wte, wpe, then per block ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.c_fc,
/// mlp.c_proj, then ln_f. Gradients and AdamW moments use the same layout, so one offset addresses all four.
/// </summary>
public sealed class ParameterLayout
{
    private readonly Dictionary<string, ParameterTensor> byName;

    public IReadOnlyList<ParameterTensor> Tensors { get; }
    public long TotalElements { get; }
    public long Wte { get; }
    public long Wpe { get; }
    public IReadOnlyList<BlockOffsets> Blocks { get; }
    public long LnFWeight { get; }
    public long LnFBias { get; }

    private ParameterLayout(GptConfig config)
    {
        int c = config.Channels;
        var tensors = new List<ParameterTensor>();
        long next = 0;
        long Add(string name, params int[] shape)
        {
            var t = new ParameterTensor(name, shape, next);
            tensors.Add(t);
            next = checked(next + t.Length);
            return t.Offset;
        }

        Wte = Add("wte.weight", config.VocabSize, c);
        Wpe = Add("wpe.weight", config.MaxSequenceLength, c);
        var blocks = new List<BlockOffsets>();
        for (int l = 0; l < config.Layers; l++)
        {
            string p = $"h.{l}.";
            blocks.Add(new BlockOffsets(
                Ln1Weight: Add(p + "ln_1.weight", c),
                Ln1Bias: Add(p + "ln_1.bias", c),
                AttnWeight: Add(p + "attn.c_attn.weight", c, 3 * c),
                AttnBias: Add(p + "attn.c_attn.bias", 3 * c),
                AttnProjWeight: Add(p + "attn.c_proj.weight", c, c),
                AttnProjBias: Add(p + "attn.c_proj.bias", c),
                Ln2Weight: Add(p + "ln_2.weight", c),
                Ln2Bias: Add(p + "ln_2.bias", c),
                FcWeight: Add(p + "mlp.c_fc.weight", c, 4 * c),
                FcBias: Add(p + "mlp.c_fc.bias", 4 * c),
                FcProjWeight: Add(p + "mlp.c_proj.weight", 4 * c, c),
                FcProjBias: Add(p + "mlp.c_proj.bias", c)));
        }
        Blocks = blocks;
        LnFWeight = Add("ln_f.weight", c);
        LnFBias = Add("ln_f.bias", c);
        Tensors = tensors;
        TotalElements = next;
        byName = tensors.ToDictionary(t => t.Name);
    }

    public static ParameterLayout For(GptConfig config) => new(config.Validate());

    /// <summary>The tensor with this HF name; throws naming it when the model has no such tensor.</summary>
    public ParameterTensor this[string name] =>
        byName.TryGetValue(name, out var t) ? t : throw new KeyNotFoundException($"the model has no parameter named '{name}'");

    public bool Contains(string name) => byName.ContainsKey(name);
}
