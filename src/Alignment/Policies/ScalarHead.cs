using System.Numerics.Tensors;
using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Policies;

/// <summary>
/// A scalar head on a transformer's final hidden state, y = w·h + b: the reward model's score head and the PPO
/// value head. It keeps its own gradient and AdamW moments (weight decay on w, none on b) and starts at zero.
/// Layout of every buffer: [w_0 … w_{C−1}, b].
/// </summary>
public sealed class ScalarHead
{
    public int Channels { get; }
    /// <summary>[w, b].</summary>
    public float[] Parameters { get; }
    /// <summary>∂L/∂[w, b], accumulated by <see cref="Backward"/>.</summary>
    public float[] Gradients { get; }
    /// <summary>AdamW first moments.</summary>
    public float[] AdamM { get; }
    /// <summary>AdamW second moments.</summary>
    public float[] AdamV { get; }

    public ScalarHead(int channels)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(channels, 1);
        Channels = channels;
        Parameters = new float[channels + 1];
        Gradients = new float[channels + 1];
        AdamM = new float[channels + 1];
        AdamV = new float[channels + 1];
    }

    public Span<float> Weight => Parameters.AsSpan(0, Channels);
    public Span<float> Bias => Parameters.AsSpan(Channels, 1);
    public Span<float> WeightGradient => Gradients.AsSpan(0, Channels);
    public Span<float> BiasGradient => Gradients.AsSpan(Channels, 1);

    // forward: y = w·h + b
    public float Forward(ReadOnlySpan<float> h) => TensorPrimitives.Dot(Weight, h) + Parameters[Channels];

    // backward: ∂h += ∂y·w;  ∂w += ∂y·h;  ∂b += ∂y
    public void Backward(ReadOnlySpan<float> h, float dY, Span<float> dH)
    {
        if (dY == 0f) return;
        TensorPrimitives.MultiplyAdd(Weight, dY, dH, dH);
        var dW = WeightGradient;
        TensorPrimitives.MultiplyAdd(h, dY, dW, dW);
        Gradients[Channels] += dY;
    }

    public void ZeroGradients() => Array.Clear(Gradients);

    /// <summary>The first NaN/Inf gradient element, named <paramref name="weightName"/> or <paramref name="biasName"/>; null when all are finite.</summary>
    public NonFiniteElement? FirstNonFiniteGradient(string weightName, string biasName)
    {
        int i = Array.FindIndex(Gradients, g => !float.IsFinite(g));
        if (i < 0) return null;
        return i < Channels ? new NonFiniteElement(weightName, i, Gradients[i]) : new NonFiniteElement(biasName, 0, Gradients[i]);
    }

    /// <summary>
    /// Global L2 norm over a backbone's gradients and this head's together; when <paramref name="maxNorm"/> &gt; 0 and
    /// the norm is finite, scales all of them by min(1, maxNorm/(norm + 1e-6)). Returns the norm before clipping.
    /// </summary>
    public double ClipWith(Span<float> backboneGradients, float maxNorm)
    {
        double norm = ClipWith(GradientNorm.SumOfSquares(backboneGradients), maxNorm, out float scale);
        if (scale != 1f) TensorPrimitives.Multiply(backboneGradients, scale, backboneGradients);
        return norm;
    }

    /// <summary>
    /// The same clip for a backbone whose gradients live elsewhere (on a GPU): norm = √(<paramref name="backboneSumOfSquares"/>
    /// + Σ head g²); this head's gradients are scaled here, and <paramref name="scale"/> = min(1, maxNorm/(norm + 1e-6)) (1 when
    /// not clipping) is the factor the caller applies to the backbone's. Returns the norm before clipping.
    /// </summary>
    public double ClipWith(double backboneSumOfSquares, float maxNorm, out float scale)
    {
        double norm = Math.Sqrt(backboneSumOfSquares + GradientNorm.SumOfSquares(Gradients));
        scale = 1f;
        if (maxNorm > 0 && double.IsFinite(norm))
        {
            scale = (float)Math.Min(1.0, maxNorm / (norm + 1e-6));
            if (scale != 1f) TensorPrimitives.Multiply(Gradients, scale, Gradients);
        }
        return norm;
    }

    /// <summary>One AdamW step (1-based <paramref name="step"/>): decay on w, none on b.</summary>
    public void OptimizerStep(int step, float learningRate, AdamWSettings s)
    {
        int c = Channels;
        AdamW.Step(Parameters.AsSpan(0, c), Gradients.AsSpan(0, c), AdamM.AsSpan(0, c), AdamV.AsSpan(0, c),
            step, learningRate, s.Beta1, s.Beta2, s.Epsilon, s.WeightDecay);
        AdamW.Step(Parameters.AsSpan(c, 1), Gradients.AsSpan(c, 1), AdamM.AsSpan(c, 1), AdamV.AsSpan(c, 1),
            step, learningRate, s.Beta1, s.Beta2, s.Epsilon, 0f);
    }

    /// <summary>
    /// Reads one head tensor of a checkpoint into <paramref name="destination"/>; a missing or misshapen tensor throws
    /// <see cref="CheckpointMismatchException"/> naming the file and the tensor.
    /// </summary>
    public static void ReadTensor(SafeTensorsFile file, string path, string name, long[] shape, Span<float> destination)
    {
        if (!file.TryGetInfo(name, out var info))
            throw new CheckpointMismatchException($"{path}: tensor '{name}' is missing: the checkpoint has no such head (a plain GPT file has none)");
        if (!info.Shape.SequenceEqual(shape))
            throw new CheckpointMismatchException(
                $"{path}: tensor '{name}' has shape [{string.Join(", ", info.Shape)}], the head needs [{string.Join(", ", shape)}]");
        file.ReadF32(name, destination);
    }
}
