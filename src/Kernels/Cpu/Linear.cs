using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Fully connected layer, weights stored [inDim, outDim] (Hugging Face GPT-2 Conv1D layout).
/// </summary>
/// <remarks>
/// <code>
/// forward:  y[rows, outDim] = x[rows, inDim] · W[inDim, outDim] + b[outDim]     (b broadcast over rows)
/// backward, given dy = ∂L/∂y [rows, outDim]:
///   dx[rows, inDim]   += dy · Wᵀ            (GEMM NT)
///   dW[inDim, outDim] += xᵀ · dy            (GEMM TN)
///   db[outDim]        += Σ_rows dy          (column sums)
/// </code>
/// The backward accumulates (+=) into its gradients, as llm.c does, so gradients of a weight used several
/// times (or over several micro-batches) add up; zero them before the first backward of a step.
/// </remarks>
public static class Linear
{
    /// <summary>Columns of dOutput summed per thread range at least (keeps tiny layers on one thread).</summary>
    private const int MinColumnsPerThread = 256;

    /// <summary><c>output = input · weight + bias</c>; <paramref name="bias"/> may be empty (no bias).</summary>
    /// <param name="input">[rows, inDim].</param>
    /// <param name="weight">[inDim, outDim].</param>
    /// <param name="bias">[outDim] or empty.</param>
    /// <param name="output">[rows, outDim], overwritten.</param>
    /// <param name="rows">Number of input vectors (batch × tokens).</param>
    /// <param name="inDim">Input features.</param>
    /// <param name="outDim">Output features.</param>
    public static void Forward(ReadOnlySpan<float> input, ReadOnlySpan<float> weight, ReadOnlySpan<float> bias,
        Span<float> output, int rows, int inDim, int outDim)
    {
        CheckShapes(rows, inDim, outDim);
        Check(output.Length, (long)rows * outDim, nameof(output), "rows × outDim");
        Check(input.Length, (long)rows * inDim, nameof(input), "rows × inDim");
        Check(weight.Length, (long)inDim * outDim, nameof(weight), "inDim × outDim");
        if (!bias.IsEmpty) Check(bias.Length, outDim, nameof(bias), "outDim (or empty)");

        Gemm.Multiply(Transpose.No, Transpose.No, rows, outDim, inDim, 1f,
            input, inDim, weight, outDim, 0f, output, outDim, bias.IsEmpty ? default : bias[..outDim]);
    }

    /// <summary>
    /// Accumulates the gradients of the layer: <c>dInput += dOutput·weightᵀ</c>, <c>dWeight += inputᵀ·dOutput</c>,
    /// <c>dBias += column sums of dOutput</c> (skipped when <paramref name="dBias"/> is empty).
    /// </summary>
    /// <param name="dOutput">[rows, outDim]: ∂L/∂output.</param>
    /// <param name="input">[rows, inDim]: the forward's input.</param>
    /// <param name="weight">[inDim, outDim].</param>
    /// <param name="dInput">[rows, inDim], accumulated into.</param>
    /// <param name="dWeight">[inDim, outDim], accumulated into.</param>
    /// <param name="dBias">[outDim] accumulated into, or empty for a layer without bias.</param>
    /// <param name="rows">Number of input vectors.</param>
    /// <param name="inDim">Input features.</param>
    /// <param name="outDim">Output features.</param>
    public static void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<float> input, ReadOnlySpan<float> weight,
        Span<float> dInput, Span<float> dWeight, Span<float> dBias, int rows, int inDim, int outDim)
    {
        CheckShapes(rows, inDim, outDim);
        Check(dInput.Length, (long)rows * inDim, nameof(dInput), "rows × inDim");
        Check(dWeight.Length, (long)inDim * outDim, nameof(dWeight), "inDim × outDim");
        if (!dBias.IsEmpty) Check(dBias.Length, outDim, nameof(dBias), "outDim (or empty)");
        Check(dOutput.Length, (long)rows * outDim, nameof(dOutput), "rows × outDim");
        Check(input.Length, (long)rows * inDim, nameof(input), "rows × inDim");
        Check(weight.Length, (long)inDim * outDim, nameof(weight), "inDim × outDim");

        // dx[rows, inDim] += dy[rows, outDim] · W[inDim, outDim]ᵀ
        Gemm.Multiply(Transpose.No, Transpose.Yes, rows, inDim, outDim, 1f,
            dOutput, outDim, weight, outDim, 1f, dInput, inDim);
        // dW[inDim, outDim] += x[rows, inDim]ᵀ · dy[rows, outDim]
        Gemm.Multiply(Transpose.Yes, Transpose.No, inDim, outDim, rows, 1f,
            input, inDim, dOutput, outDim, 1f, dWeight, outDim);
        if (!dBias.IsEmpty) AccumulateColumnSums(dBias[..outDim], dOutput, rows, outDim);
    }

    /// <summary>
    /// sums[j] += Σ_r matrix[r, j]. Threads own disjoint column ranges and add rows in order, so every
    /// sum is formed in the same order whatever the thread count.
    /// </summary>
    private static unsafe void AccumulateColumnSums(Span<float> sums, ReadOnlySpan<float> matrix, int rows, int cols)
    {
        fixed (float* pSums = sums, pMatrix = matrix)
        {
            float* s = pSums, x = pMatrix; // lambdas cannot capture the fixed locals themselves
            CpuParallel.For(cols, MinColumnsPerThread, (start, end) =>
            {
                var sum = new Span<float>(s + start, end - start);
                for (int r = 0; r < rows; r++)
                    TensorPrimitives.Add(sum, new ReadOnlySpan<float>(x + (nint)r * cols + start, end - start), sum);
            });
        }
    }

    private static void CheckShapes(int rows, int inDim, int outDim)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        ArgumentOutOfRangeException.ThrowIfNegative(inDim);
        ArgumentOutOfRangeException.ThrowIfNegative(outDim);
    }

    private static void Check(int length, long needed, string name, string shape)
    {
        if (length < needed)
            throw new ArgumentException($"{name} has {length} elements but needs {shape} = {needed}.", name);
    }
}
