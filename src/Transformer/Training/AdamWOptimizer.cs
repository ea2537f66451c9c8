using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Transformer.Training;

/// <summary>AdamW hyper-parameters (PyTorch's AdamW semantics; decay applies to matrices only).</summary>
public sealed record AdamWSettings(float Beta1 = 0.9f, float Beta2 = 0.95f, float Epsilon = 1e-8f, float WeightDecay = 0.1f);

/// <summary>
/// Steps a <see cref="Gpt"/> with AdamW, in place over its flat parameter, gradient and moment buffers.
/// Weight decay goes to the matrices (linear weights and the embeddings), not to biases or LayerNorm
/// parameters, as in GPT-2 training practice.
/// </summary>
public static class AdamWOptimizer
{
    /// <param name="step">1-based optimizer step (for bias correction)</param>
    public static void Step(Gpt model, int step, float learningRate, AdamWSettings s)
    {
        var p = model.Parameters;
        var g = model.Gradients;
        var m = model.AdamM;
        var v = model.AdamV;
        foreach (var t in model.Layout.Tensors)
        {
            int o = (int)t.Offset, n = (int)t.Length;
            float decay = t.Shape.Length >= 2 ? s.WeightDecay : 0f;
            AdamW.Step(p.Slice(o, n), g.Slice(o, n), m.Slice(o, n), v.Slice(o, n), step, learningRate, s.Beta1, s.Beta2, s.Epsilon, decay);
        }
    }
}
