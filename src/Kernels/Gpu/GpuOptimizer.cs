using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>AdamW constants computed once on the host (as the CPU op computes them).</summary>
internal struct AdamWConstants
{
    public float Decay, Beta1, OneMinusBeta1, Beta2, OneMinusBeta2, Correction1, Correction2, LearningRate, Epsilon;
}

/// <summary>
/// AdamW (PyTorch's decoupled decay), the GPU form of <see cref="Cpu.AdamW"/>: same constants (bias
/// corrections computed in fp64 on the host and rounded to fp32), same operations in the same order, one
/// thread per element. (The GPU compiler may contract a·b + c into an FMA, so results can differ from the
/// CPU op in the last bit; they are identical run to run.)
/// </summary>
public sealed class GpuAdamW
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamWConstants> step;
    private readonly Accelerator accelerator;

    public GpuAdamW(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        step = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>, ArrayView<float>, AdamWConstants>(StepKernel);
    }

    /// <summary>Updates parameters, m and v in place (arguments as <see cref="Cpu.AdamW.Step"/>).</summary>
    public void Step(ArrayView<float> parameters, ArrayView<float> gradients, ArrayView<float> m, ArrayView<float> v,
                     int step, float learningRate, float beta1 = 0.9f, float beta2 = 0.999f,
                     float epsilon = 1e-8f, float weightDecay = 0f)
    {
        long n = parameters.Length;
        GpuLaunch.CheckLength(gradients.Length, n, nameof(gradients), "same length as parameters");
        GpuLaunch.CheckLength(m.Length, n, nameof(m), "same length as parameters");
        GpuLaunch.CheckLength(v.Length, n, nameof(v), "same length as parameters");
        if (step < 1)
            throw new ArgumentOutOfRangeException(nameof(step), step, "The AdamW step number is 1-based: the first update is step 1.");
        if (!(beta1 >= 0f && beta1 < 1f) || !(beta2 >= 0f && beta2 < 1f))
            throw new ArgumentOutOfRangeException(nameof(beta1), $"β1 = {beta1} and β2 = {beta2} must lie in [0, 1).");
        if (n > int.MaxValue) throw new ArgumentException("Too many parameters for one 32-bit-indexed launch.", nameof(parameters));
        var k = new AdamWConstants
        {
            Decay = 1f - learningRate * weightDecay,
            Beta1 = beta1, OneMinusBeta1 = 1f - beta1,
            Beta2 = beta2, OneMinusBeta2 = 1f - beta2,
            Correction1 = (float)(1.0 - Math.Pow(beta1, step)),
            Correction2 = (float)(1.0 - Math.Pow(beta2, step)),
            LearningRate = learningRate, Epsilon = epsilon,
        };
        if (n > 0) this.step(accelerator.DefaultStream, (int)n, parameters, gradients, m, v, k);
    }

    [GpuKernel(false)]
    internal static void StepKernel(Index1D i, ArrayView<float> parameters, ArrayView<float> gradients, ArrayView<float> m,
                                    ArrayView<float> v, AdamWConstants k)
    {
        float g = gradients[i];
        float mi = k.Beta1 * m[i] + k.OneMinusBeta1 * g;
        float vi = k.Beta2 * v[i] + k.OneMinusBeta2 * (g * g);
        float p = parameters[i] * k.Decay;
        p -= k.LearningRate * ((mi / k.Correction1) / (XMath.Sqrt(vi / k.Correction2) + k.Epsilon));
        m[i] = mi;
        v[i] = vi;
        parameters[i] = p;
    }
}

/// <summary>
/// Global L2 gradient norm and clipping, the GPU form of <see cref="Cpu.GradientNorm"/>.
/// Deterministic two-stage reduction in fp64 with a fixed layout:
/// stage 1 (<see cref="PartialSumsOfSquares"/>) runs <see cref="PartialsPerTensor"/> groups per tensor; thread
/// j of group p sums x² in fp64 over elements p·G + j, then every G·P-th one (grid-stride, in order), and the
/// group reduces its threads in a fixed tree; stage 2 (<see cref="SumPartials"/>) adds all partials in a fixed
/// tree. The layout depends only on the tensor lengths and the accelerator's group size, so the norm is
/// bit-identical run to run. The clip scale stays on the device (<see cref="ClipScale"/>, <see cref="Scale"/>),
/// so clipping needs no host round trip; <see cref="ClipByGlobalNorm"/> is the convenience form that reads it back.
/// </summary>
public sealed class GpuGradientNorm
{
    /// <summary>
    /// Stage-1 groups (and fp64 partial sums) per tensor: 1,024 on a GPU (enough loads in flight to stream 124M
    /// gradients at memory speed; 64 groups left the loop latency-bound at about 3 ms), 64 on ILGPU's CPU
    /// accelerator (each simulated thread costs host time).
    /// </summary>
    public int PartialsPerTensor { get; }

    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<float>, ArrayView<double>> partials;
    private readonly Action<AcceleratorStream, KernelConfig, ArrayView<double>, ArrayView<double>> sum;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<double>, float, ArrayView<float>> clipScale;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>> scale;
    private readonly Accelerator accelerator;
    private readonly int groupSize;

    public GpuGradientNorm(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        groupSize = GpuLaunch.ReductionGroupSize(accelerator);
        PartialsPerTensor = accelerator.AcceleratorType == AcceleratorType.CPU ? 64 : 1024;
        partials = accelerator.LoadKernel<ArrayView<float>, ArrayView<double>>(PartialsKernel);
        sum = accelerator.LoadKernel<ArrayView<double>, ArrayView<double>>(SumKernel);
        clipScale = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<double>, float, ArrayView<float>>(ClipScaleKernel);
        scale = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>>(ScaleKernel);
    }

    /// <summary>Stage 1: partials[0 .. <see cref="PartialsPerTensor"/>) = fp64 partial Σx² of <paramref name="values"/> (written).</summary>
    public void PartialSumsOfSquares(ArrayView<float> values, ArrayView<double> partials)
    {
        GpuLaunch.CheckLength(partials.Length, PartialsPerTensor, nameof(partials), "[PartialsPerTensor]");
        if (values.Length > int.MaxValue) throw new ArgumentException("Tensor too large for 32-bit GPU indexing.", nameof(values));
        this.partials(accelerator.DefaultStream, GpuLaunch.Rows(PartialsPerTensor, groupSize), values, partials);
    }

    /// <summary>Stage 2: sumOfSquares[0] = Σ partials (fixed tree; one group), written.</summary>
    public void SumPartials(ArrayView<double> partials, ArrayView<double> sumOfSquares)
    {
        GpuLaunch.CheckLength(sumOfSquares.Length, 1, nameof(sumOfSquares), "[1]");
        sum(accelerator.DefaultStream, GpuLaunch.Rows(1, groupSize), partials, sumOfSquares);
    }

    /// <summary>scale[0] = min(1, maxNorm/(√sumOfSquares[0] + 1e-6)), or 1 when the norm is not finite (as the CPU op).</summary>
    public void ClipScale(ArrayView<double> sumOfSquares, float maxNorm, ArrayView<float> scale)
    {
        if (!(maxNorm > 0f))
            throw new ArgumentOutOfRangeException(nameof(maxNorm), maxNorm, "The clipping threshold must be positive.");
        GpuLaunch.CheckLength(sumOfSquares.Length, 1, nameof(sumOfSquares), "[1]");
        GpuLaunch.CheckLength(scale.Length, 1, nameof(scale), "[1]");
        clipScale(accelerator.DefaultStream, 1, sumOfSquares, maxNorm, scale);
    }

    /// <summary>values[i] *= scale[0] (a device-side factor, e.g. from <see cref="ClipScale"/>).</summary>
    public void Scale(ArrayView<float> values, ArrayView<float> scale)
    {
        GpuLaunch.CheckLength(scale.Length, 1, nameof(scale), "[1]");
        if (values.Length > 0) this.scale(accelerator.DefaultStream, (int)values.Length, values, scale);
    }

    /// <summary>‖(t_0, t_1, …)‖₂ over several tensors (allocates a small scratch and synchronises: convenience form).</summary>
    public double GlobalNorm(params ArrayView<float>[] tensors)
    {
        using var partials = accelerator.Allocate1D<double>(Math.Max(1, tensors.Length) * PartialsPerTensor);
        using var total = accelerator.Allocate1D<double>(1);
        partials.MemSetToZero();
        for (int i = 0; i < tensors.Length; i++)
            PartialSumsOfSquares(tensors[i], partials.View.SubView((long)i * PartialsPerTensor, PartialsPerTensor));
        SumPartials(partials.View, total.View);
        return Math.Sqrt(total.GetAsArray1D()[0]);
    }

    /// <summary>Scales every tensor by one factor so that their global norm is at most maxNorm; returns the CPU op's record.</summary>
    public Cpu.GradientClip ClipByGlobalNorm(float maxNorm, params ArrayView<float>[] tensors)
    {
        using var partials = accelerator.Allocate1D<double>(Math.Max(1, tensors.Length) * PartialsPerTensor);
        using var total = accelerator.Allocate1D<double>(1);
        using var scale = accelerator.Allocate1D<float>(1);
        partials.MemSetToZero();
        for (int i = 0; i < tensors.Length; i++)
            PartialSumsOfSquares(tensors[i], partials.View.SubView((long)i * PartialsPerTensor, PartialsPerTensor));
        SumPartials(partials.View, total.View);
        ClipScale(total.View, maxNorm, scale.View);
        foreach (var t in tensors) Scale(t, scale.View);
        return new Cpu.GradientClip(Math.Sqrt(total.GetAsArray1D()[0]), scale.GetAsArray1D()[0]);
    }

    [GpuKernel(true)]
    internal static void PartialsKernel(ArrayView<float> values, ArrayView<double> partials)
    {
        var scratch = SharedMemory.Allocate<double>(GpuLaunch.MaxGroupSize);
        int stride = Grid.DimX * Group.DimX;
        double sum = 0.0;
        for (long i = (long)Grid.IdxX * Group.DimX + Group.IdxX; i < values.Length; i += stride)
        {
            double x = values[i];
            sum += x * x;
        }
        sum = GpuLaunch.GroupSum(scratch, sum);
        if (Group.IdxX == 0) partials[Grid.IdxX] = sum;
    }

    [GpuKernel(true)]
    internal static void SumKernel(ArrayView<double> partials, ArrayView<double> total)
    {
        var scratch = SharedMemory.Allocate<double>(GpuLaunch.MaxGroupSize);
        double sum = 0.0;
        for (long i = Group.IdxX; i < partials.Length; i += Group.DimX) sum += partials[i];
        sum = GpuLaunch.GroupSum(scratch, sum);
        if (Group.IdxX == 0) total[0] = sum;
    }

    [GpuKernel(false)]
    internal static void ClipScaleKernel(Index1D i, ArrayView<double> sumOfSquares, float maxNorm, ArrayView<float> scale)
    {
        double norm = XMath.Sqrt(sumOfSquares[0]);
        bool finite = !double.IsNaN(norm) && !double.IsInfinity(norm);
        scale[0] = finite ? (float)XMath.Min(1.0, maxNorm / (norm + 1e-6)) : 1f;
    }

    [GpuKernel(false)]
    internal static void ScaleKernel(Index1D i, ArrayView<float> values, ArrayView<float> scale) => values[i] *= scale[0];
}
