namespace DistAlign.Transformer.Model;

/// <summary>
/// AdamW hyper-parameters (PyTorch's AdamW semantics). Engines apply weight decay to the matrices only (linear weights
/// and the embeddings), not to biases or LayerNorm parameters, as in GPT-2 training practice.
/// </summary>
public sealed record AdamWSettings(float Beta1 = 0.9f, float Beta2 = 0.95f, float Epsilon = 1e-8f, float WeightDecay = 0.1f);
