using System.Numerics.Tensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Gpu;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Reward;

/// <summary>
/// What <see cref="RewardModel"/> needs of its transformer: the features forward and backward
/// (h = ln_f(x) at chosen positions; ∂L/∂h back through the transformer), the gradient's squared norm and scaling
/// (the global clip also covers the host-side head), AdamW, and the host <see cref="Gpt"/> that checkpoints read
/// and write. Implemented on the CPU <see cref="Gpt"/> itself and on a <see cref="GpuGpt"/> with a host mirror.
/// </summary>
internal interface IRewardBackbone
{
    /// <summary>The host model: the weights themselves on the CPU; the checkpoint mirror of the device weights on a GPU.</summary>
    Gpt Host { get; }

    /// <summary>Runs the transformer forward on <paramref name="batch"/>; features [S, C] = h[positions[s], :].</summary>
    void ForwardFeatures(GptBatch batch, ReadOnlySpan<int> positions, Span<float> features);

    /// <summary>
    /// Accumulates ∂L/∂θ for the last forward's batch given ∂L/∂h = dRows[s, :] at row positions[s] (distinct), 0 elsewhere.
    /// </summary>
    void BackwardFeatures(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows);

    void ZeroGradients();

    /// <summary>Σ g² over the backbone's gradients.</summary>
    double GradientSumOfSquares();

    /// <summary>g ← factor·g.</summary>
    void ScaleGradients(float factor);

    /// <summary>One AdamW step, weight decay on the matrices (1-based <paramref name="step"/>).</summary>
    void OptimizerStep(int step, float learningRate, AdamWSettings settings);

    /// <summary>Makes <see cref="Host"/> hold the current parameters, gradients and moments (a download on a GPU).</summary>
    void CopyToHost();

    /// <summary>Makes the training state follow <see cref="Host"/>'s parameters and moments, gradients zeroed (an upload on a GPU).</summary>
    void CopyFromHost();
}

/// <summary>The CPU backbone: every call goes straight to the <see cref="Gpt"/>; the host copies are no-ops.</summary>
internal sealed class CpuRewardBackbone(Gpt model) : IRewardBackbone
{
    private float[] dFeatures = [];   // ∂L/∂h [N, C], dense, for Gpt.BackwardFeatures

    public Gpt Host => model;

    public void ForwardFeatures(GptBatch batch, ReadOnlySpan<int> positions, Span<float> features)
    {
        int c = model.Config.Channels;
        var h = model.ForwardFeatures(batch);
        for (int i = 0; i < positions.Length; i++) h.Slice(positions[i] * c, c).CopyTo(features.Slice(i * c, c));
    }

    public void BackwardFeatures(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows)
    {
        int c = model.Config.Channels, n = batch.TokenCount * c;
        if (dFeatures.Length != n) dFeatures = new float[n];
        else Array.Clear(dFeatures);
        for (int i = 0; i < positions.Length; i++) dRows.Slice(i * c, c).CopyTo(dFeatures.AsSpan(positions[i] * c, c));
        model.BackwardFeatures(batch, dFeatures);
    }

    public void ZeroGradients() => model.ZeroGradients();
    public double GradientSumOfSquares() => GradientNorm.SumOfSquares(model.Gradients);
    public void ScaleGradients(float factor) => TensorPrimitives.Multiply(model.Gradients, factor, model.Gradients);
    public void OptimizerStep(int step, float learningRate, AdamWSettings settings) => AdamWOptimizer.Step(model, step, learningRate, settings);
    public void CopyToHost() { }
    public void CopyFromHost() { }
}

/// <summary>
/// The GPU backbone: parameters, gradients, moments and activations on a <see cref="GpuGpt"/>; per step only the batch,
/// the S last-token feature rows (gathered on the device), their gradient rows (scattered on the device) and the gradient's
/// sum of squares for the clip cross the bus. <see cref="Host"/> is refreshed by <see cref="CopyToHost"/> before checkpoints.
/// </summary>
internal sealed class GpuRewardBackbone : IRewardBackbone
{
    private readonly GpuGpt gpu;

    /// <summary>Uploads <paramref name="host"/>'s parameters and moments to <paramref name="gpu"/> (same config).</summary>
    public GpuRewardBackbone(Gpt host, GpuGpt gpu)
    {
        if (gpu.Config != host.Config)
            throw new ArgumentException($"the GPU model's config {gpu.Config} differs from the host model's {host.Config}", nameof(gpu));
        Host = host;
        this.gpu = gpu;
        gpu.Upload(host);
    }

    public Gpt Host { get; }

    public void ForwardFeatures(GptBatch batch, ReadOnlySpan<int> positions, Span<float> features)
    {
        gpu.ForwardFeatures(batch);
        gpu.CopyFeaturesToHost(positions, features);
    }

    public void BackwardFeatures(GptBatch batch, ReadOnlySpan<int> positions, ReadOnlySpan<float> dRows) =>
        gpu.BackwardFeatureRows(batch, positions, dRows);
    public void ZeroGradients() => gpu.ZeroGradients();
    public double GradientSumOfSquares() => gpu.GradientSumOfSquares();
    public void ScaleGradients(float factor) => gpu.ScaleGradients(factor);

    public void OptimizerStep(int step, float learningRate, AdamWSettings settings) =>
        gpu.AdamWStep(step, learningRate, settings.Beta1, settings.Beta2, settings.Epsilon, settings.WeightDecay);

    public void CopyToHost() => gpu.Download(Host);
    public void CopyFromHost() => gpu.Upload(Host);
}
