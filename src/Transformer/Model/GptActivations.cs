using DistAlign.Engine.Memory;
using DistAlign.Kernels.Cpu;

namespace DistAlign.Transformer.Model;

/// <summary>
/// The names and sizes of everything a forward and backward pass of a <see cref="GptConfig"/> keeps, for
/// a batch of B rows × T positions. Sized before the first step (so a batch that does not fit fails with
/// the bytes it needs) and reused every step: the hot path allocates nothing.
/// </summary>
/// <remarks>
/// Saved for the backward, per layer l: ln1 (+ mean, rstd), qkv, att (softmax probabilities), atty (the
/// attention output before its projection), residual2, ln2 (+ mean, rstd), fch, fch_gelu, residual3.
/// Shared scratch: the projection outputs, the gradient of the residual stream, and the gradients of
/// one layer's intermediate tensors (the backward visits one layer at a time). The LM head works on
/// one chunk of rows of logits at a time (<see cref="SequenceLogProbs"/>), so the N×V logits never exist at once.
/// </remarks>
internal static class GptActivations
{
    public const string Arena = "activations";

    /// <param name="attentionScores">false when attention keeps no T×T probabilities (flash attention on the GPU):
    /// each layer's "att" is then planned empty</param>
    public static void Plan(ArenaPlanBuilder arena, GptConfig config, int rows, int length, bool attentionScores = true)
    {
        long n = (long)rows * length, c = config.Channels, nh = config.Heads, t = length;
        arena.Add<float>("encoded", n * c);
        for (int l = 0; l < config.Layers; l++)
        {
            string p = $"h.{l}.";
            arena.Add<float>(p + "ln1", n * c).Add<float>(p + "ln1_mean", n).Add<float>(p + "ln1_rstd", n)
                 .Add<float>(p + "qkv", n * 3 * c).Add<float>(p + "att", attentionScores ? rows * nh * t * t : 0).Add<float>(p + "atty", n * c)
                 .Add<float>(p + "residual2", n * c)
                 .Add<float>(p + "ln2", n * c).Add<float>(p + "ln2_mean", n).Add<float>(p + "ln2_rstd", n)
                 .Add<float>(p + "fch", n * 4 * c).Add<float>(p + "fch_gelu", n * 4 * c)
                 .Add<float>(p + "residual3", n * c);
        }
        arena.Add<float>("lnf", n * c).Add<float>("lnf_mean", n).Add<float>("lnf_rstd", n);
        arena.Add<float>("logits_chunk", SequenceLogProbs.ScratchLength((int)n, config.VocabSize));
        arena.Add<float>("logsumexp", n).Add<float>("logprobs", n).Add<float>("entropy", n);

        // Scratch shared by all layers.
        arena.Add<float>("projection", n * c);
        arena.Add<float>("d_residual", n * c).Add<float>("d_ln", n * c).Add<float>("d_atty", n * c)
             .Add<float>("d_qkv", n * 3 * c)
             .Add<float>("d_fch", n * 4 * c).Add<float>("d_fch_gelu", n * 4 * c);
    }
}
