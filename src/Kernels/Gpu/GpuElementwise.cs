using ILGPU;
using ILGPU.Algorithms;
using ILGPU.Runtime;

namespace DistAlign.Kernels.Gpu;

/// <summary>
/// GELU (tanh approximation), the GPU form of <see cref="Cpu.Gelu"/>: gelu(x) = x·σ(2u),
/// u = √(2/π)·(x + 0.044715·x³); backward dinp += dout·gelu'(x) with x clamped to ±20 (as the CPU op).
/// One thread per element.
/// </summary>
public sealed class GpuGelu
{
    private const float TwoSqrtTwoOverPi = 2f * 0.7978845608028654f;
    private const float Cubic = 0.044715f;
    private const float Saturation = 20f;

    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>> forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<ushort>> forwardToBFloat16;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> backward, backwardOverwrite;
    private readonly Accelerator accelerator;

    public GpuGelu(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        forwardToBFloat16 = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<ushort>>(ForwardToBFloat16Kernel);
        backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernel);
        backwardOverwrite = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardOverwriteKernel);
    }

    /// <summary>output[i] = gelu(input[i]); output may be input.</summary>
    public void Forward(ArrayView<float> input, ArrayView<float> output)
    {
        GpuLaunch.CheckLength(output.Length, input.Length, nameof(output), "same length as input");
        if (input.Length > 0) forward(accelerator.DefaultStream, (int)input.Length, input, output);
    }

    /// <summary>
    /// output[i] = bf16(gelu(input[i])) (round to nearest even, <see cref="GpuBFloat16.Round"/>): the mixed-precision
    /// forward, where the activation is only ever a bf16 GEMM operand; bit-identical to <see cref="Forward(ArrayView{float}, ArrayView{float})"/>
    /// followed by <see cref="GpuBFloat16.ToBFloat16"/>, with one pass less.
    /// </summary>
    public void Forward(ArrayView<float> input, ArrayView<ushort> output)
    {
        GpuLaunch.CheckLength(output.Length, input.Length, nameof(output), "same length as input");
        if (input.Length > 0) forwardToBFloat16(accelerator.DefaultStream, (int)input.Length, input, output);
    }

    /// <summary>dInput[i] += dOutput[i]·gelu'(input[i]) (accumulates), or = with <paramref name="accumulate"/> false
    /// (for a dInput this is the only producer of: no zeroing pass).</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> dInput, bool accumulate = true)
    {
        GpuLaunch.CheckLength(dOutput.Length, input.Length, nameof(dOutput), "same length as input");
        GpuLaunch.CheckLength(dInput.Length, input.Length, nameof(dInput), "same length as input");
        if (input.Length > 0) (accumulate ? backward : backwardOverwrite)(accelerator.DefaultStream, (int)input.Length, dOutput, input, dInput);
    }

    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D i, ArrayView<float> input, ArrayView<float> output) => output[i] = Gelu(input[i]);

    [GpuKernel(false)]
    internal static void ForwardToBFloat16Kernel(Index1D i, ArrayView<float> input, ArrayView<ushort> output) =>
        output[i] = GpuBFloat16.Round(Gelu(input[i]));

    private static float Gelu(float x)
    {
        float twoU = x * (TwoSqrtTwoOverPi + TwoSqrtTwoOverPi * Cubic * (x * x));
        return x / (1f + XMath.Exp(-twoU));
    }

    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D i, ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> dInput) =>
        dInput[i] += dOutput[i] * Derivative(input[i]);

    [GpuKernel(false)]
    internal static void BackwardOverwriteKernel(Index1D i, ArrayView<float> dOutput, ArrayView<float> input, ArrayView<float> dInput) =>
        dInput[i] = dOutput[i] * Derivative(input[i]);

    // gelu'(x), x clamped to ±20 (as the CPU op)
    private static float Derivative(float input)
    {
        float x = IntrinsicMath.Clamp(input, -Saturation, Saturation);
        float square = x * x;
        float twoU = x * (TwoSqrtTwoOverPi + TwoSqrtTwoOverPi * Cubic * square);
        float twoUPrime = TwoSqrtTwoOverPi + 3f * TwoSqrtTwoOverPi * Cubic * square;
        float sigma = 1f / (1f + XMath.Exp(-twoU));
        return sigma + x * sigma * (1f - sigma) * twoUPrime;
    }
}

/// <summary>Residual connection, the GPU form of <see cref="Cpu.Residual"/>: out = a + b; da += dout, db += dout.</summary>
public sealed class GpuResidual
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>> backward;
    private readonly Accelerator accelerator;

    public GpuResidual(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(ForwardKernel);
        backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<float>, ArrayView<float>>(BackwardKernel);
    }

    /// <summary>output[i] = a[i] + b[i]; output may be a or b.</summary>
    public void Forward(ArrayView<float> a, ArrayView<float> b, ArrayView<float> output)
    {
        GpuLaunch.CheckLength(b.Length, a.Length, nameof(b), "same length as a");
        GpuLaunch.CheckLength(output.Length, a.Length, nameof(output), "same length as a");
        if (a.Length > 0) forward(accelerator.DefaultStream, (int)a.Length, a, b, output);
    }

    /// <summary>dA[i] += dOutput[i]; dB[i] += dOutput[i]. Accumulates into both.</summary>
    public void Backward(ArrayView<float> dOutput, ArrayView<float> dA, ArrayView<float> dB)
    {
        GpuLaunch.CheckLength(dA.Length, dOutput.Length, nameof(dA), "same length as dOutput");
        GpuLaunch.CheckLength(dB.Length, dOutput.Length, nameof(dB), "same length as dOutput");
        if (dOutput.Length > 0) backward(accelerator.DefaultStream, (int)dOutput.Length, dOutput, dA, dB);
    }

    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D i, ArrayView<float> a, ArrayView<float> b, ArrayView<float> output) =>
        output[i] = a[i] + b[i];

    [GpuKernel(false)]
    internal static void BackwardKernel(Index1D i, ArrayView<float> dOutput, ArrayView<float> dA, ArrayView<float> dB)
    {
        float d = dOutput[i];
        dA[i] += d;
        dB[i] += d;
    }
}

/// <summary>
/// Token + position embedding, the GPU form of <see cref="Cpu.Embedding"/>:
/// out[n, :] = wte[token[n], :] + wpe[position[n], :]; backward dwte[token[n]] += dout[n], dwpe[position[n]] += dout[n].
/// The forward does NOT range-check ids on the device (that would need a host read-back); the data pipeline
/// validates them (the CPU op does, and so do the tests). The backward groups the ids on the host, so it checks them.
/// </summary>
/// <remarks>
/// Backward, deterministic without atomics: the host groups the rows by id (CSR: for each distinct token id, the
/// rows n where it occurs, in increasing n; likewise for positions), then one thread per (distinct id, channel)
/// adds its rows' gradients in increasing n into dwte[id, c] (dwpe[id, c]). That is the order of the CPU op, one
/// fp32 add per row onto the existing value, so the result is bit-identical to <see cref="Cpu.Embedding.Backward"/>.
/// <see cref="SetBatch"/> takes the ids from the host (GpuGpt has them there); the overload with device ids
/// copies them to the host first (a synchronisation).
/// </remarks>
public sealed class GpuEmbedding : IDisposable
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>> forward;
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, ArrayView<float>> backward;
    private readonly Accelerator accelerator;
    private readonly EmbeddingRowGroups batch, copied;
    private int[] hostTokens = [], hostPositions = [];

    public GpuEmbedding(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        forward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<int>, ArrayView<int>, ArrayView<float>, ArrayView<float>, int, ArrayView<float>>(ForwardKernel);
        backward = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, ArrayView<int>, ArrayView<int>, int, ArrayView<float>>(BackwardGroupKernel);
        batch = new EmbeddingRowGroups(accelerator);
        copied = new EmbeddingRowGroups(accelerator);
    }

    /// <summary>output [N, C] = wte[tokens] + wpe[positions]; tokens, positions [N]; wte [V, C]; wpe [maxT, C].</summary>
    public void Forward(ArrayView<int> tokens, ArrayView<int> positions, ArrayView<float> wte, ArrayView<float> wpe,
                        int channels, ArrayView<float> output)
    {
        Validate(tokens.Length, positions.Length, wte.Length, wpe.Length, channels, output.Length, nameof(output));
        long total = tokens.Length * channels;
        if (total > 0) forward(accelerator.DefaultStream, (int)total, tokens, positions, wte, wpe, channels, output);
    }

    /// <summary>
    /// Groups the batch's rows by token id and by position on the host and uploads the grouping, for
    /// <see cref="Backward(ArrayView{float}, int, ArrayView{float}, ArrayView{float})"/>. The upload is queued on the
    /// default stream after the work already queued, so it may be called while a previous backward still runs.
    /// </summary>
    /// <exception cref="ArgumentException">The spans differ in length, or an id is negative.</exception>
    public void SetBatch(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions)
    {
        GpuLaunch.CheckLength(positions.Length, tokens.Length, nameof(positions), "[N], one position per token");
        batch.Set(tokens, positions);
    }

    /// <summary>dWte[tokens[n]] += dOutput[n]; dWpe[positions[n]] += dOutput[n] for the ids of the last
    /// <see cref="SetBatch"/>. Accumulates; bit-identical to the CPU op.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An id of the batch is outside its table.</exception>
    public void Backward(ArrayView<float> dOutput, int channels, ArrayView<float> dWte, ArrayView<float> dWpe) =>
        Backward(dOutput, batch, channels, dWte, dWpe);

    /// <summary>dWte[tokens[n]] += dOutput[n]; dWpe[positions[n]] += dOutput[n]. Accumulates; bit-identical to the CPU op.
    /// Copies the ids to the host to group them (waits for the queued work); the grouping of <see cref="SetBatch"/> is kept.</summary>
    /// <exception cref="ArgumentOutOfRangeException">An id is outside its table.</exception>
    public void Backward(ArrayView<float> dOutput, ArrayView<int> tokens, ArrayView<int> positions, int channels,
                         ArrayView<float> dWte, ArrayView<float> dWpe)
    {
        Validate(tokens.Length, positions.Length, dWte.Length, dWpe.Length, channels, dOutput.Length, nameof(dOutput));
        int n = (int)tokens.Length;
        if (this.hostTokens.Length < n)
        {
            this.hostTokens = new int[n];
            this.hostPositions = new int[n];
        }
        var hostTokens = this.hostTokens.AsSpan(0, n);
        var hostPositions = this.hostPositions.AsSpan(0, n);
        accelerator.Synchronize();
        if (n > 0)
        {
            tokens.CopyToCPU(hostTokens);
            positions.CopyToCPU(hostPositions);
            accelerator.Synchronize();
        }
        copied.Set(hostTokens, hostPositions);
        Backward(dOutput, copied, channels, dWte, dWpe);
    }

    private void Backward(ArrayView<float> dOutput, EmbeddingRowGroups groups, int channels, ArrayView<float> dWte, ArrayView<float> dWpe)
    {
        Validate(groups.Rows, groups.Rows, dWte.Length, dWpe.Length, channels, dOutput.Length, nameof(dOutput));
        groups.CheckIds(dWte.Length / channels, dWpe.Length / channels);
        if (groups.Rows == 0) return;
        var stream = accelerator.DefaultStream;
        backward(stream, groups.TokenGroups * channels, dOutput, groups.TokenIds, groups.TokenStarts, groups.TokenRows, channels, dWte);
        backward(stream, groups.PositionGroups * channels, dOutput, groups.PositionIds, groups.PositionStarts, groups.PositionRows, channels, dWpe);
    }

    [GpuKernel(false)]
    internal static void ForwardKernel(Index1D i, ArrayView<int> tokens, ArrayView<int> positions, ArrayView<float> wte,
                                       ArrayView<float> wpe, int channels, ArrayView<float> output)
    {
        int n = i / channels, c = i - n * channels;
        output[i] = wte[(long)tokens[n] * channels + c] + wpe[(long)positions[n] * channels + c];
    }

    // Thread (g, c): table[ids[g], c] += dOutput[rows[k], c] for k = starts[g] … starts[g + 1] − 1, one add per row
    // in increasing row order (rows of a group are sorted), onto the existing value.
    [GpuKernel(false)]
    internal static void BackwardGroupKernel(Index1D i, ArrayView<float> dOutput, ArrayView<int> ids, ArrayView<int> starts,
                                             ArrayView<int> rows, int channels, ArrayView<float> table)
    {
        int g = i / channels, c = i - g * channels;
        long at = (long)ids[g] * channels + c;
        float sum = table[at];
        int end = starts[g + 1];
        for (int k = starts[g]; k < end; k++) sum += dOutput[(long)rows[k] * channels + c];
        table[at] = sum;
    }

    private static void Validate(long tokens, long positions, long wte, long wpe,
                                 int channels, long activationLength, string activationName)
    {
        GpuLaunch.CheckPositive(channels, nameof(channels));
        GpuLaunch.CheckLength(positions, tokens, nameof(positions), "[N], one position per token");
        GpuLaunch.CheckLength(activationLength, tokens * channels, activationName, "[N, C]");
        if (wte % channels != 0)
            throw new ArgumentException($"The token table has {wte} elements, not a multiple of C = {channels}.", nameof(wte));
        if (wpe % channels != 0)
            throw new ArgumentException($"The position table has {wpe} elements, not a multiple of C = {channels}.", nameof(wpe));
        if (activationLength > int.MaxValue)
            throw new ArgumentException($"{activationName} has {activationLength} elements; the GPU kernels index with 32-bit ints.", activationName);
    }

    /// <summary>Frees the device copies of the groupings.</summary>
    public void Dispose()
    {
        batch.Dispose();
        copied.Dispose();
    }
}

/// <summary>
/// A batch's rows grouped by token id and by position (CSR), built on the host and kept on the device for
/// <see cref="GpuEmbedding"/>'s backward. Per id kind: ids [G] (distinct, increasing), starts [G + 1], rows [N]
/// (the rows of group g are rows[starts[g] … starts[g + 1] − 1], increasing).
/// </summary>
internal sealed class EmbeddingRowGroups(Accelerator accelerator) : IDisposable
{
    private MemoryBuffer1D<int, Stride1D.Dense>? device;
    private int[] host = [];
    private int[] counts = [];
    private int maxToken = -1, maxPosition = -1;

    public int Rows { get; private set; }
    public int TokenGroups { get; private set; }
    public int PositionGroups { get; private set; }
    public ArrayView<int> TokenIds { get; private set; }
    public ArrayView<int> TokenStarts { get; private set; }
    public ArrayView<int> TokenRows { get; private set; }
    public ArrayView<int> PositionIds { get; private set; }
    public ArrayView<int> PositionStarts { get; private set; }
    public ArrayView<int> PositionRows { get; private set; }

    /// <summary>Groups <paramref name="tokens"/> and <paramref name="positions"/> (same length) and uploads both groupings.</summary>
    public void Set(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions)
    {
        int n = tokens.Length;
        int capacity = 2 * (3 * n + 1);   // per kind at most N ids, N + 1 starts, N rows
        if (host.Length < capacity) host = new int[capacity];
        int tokenGroups = Group(tokens, "Token id", "tokens", host, out maxToken);
        int tokenLength = 2 * tokenGroups + 1 + n;
        int positionGroups = Group(positions, "Position", "positions", host.AsSpan(tokenLength), out maxPosition);
        int length = tokenLength + 2 * positionGroups + 1 + n;
        Rows = n;
        TokenGroups = tokenGroups;
        PositionGroups = positionGroups;
        if (n == 0) return;   // nothing to upload; the backward returns before reading the views

        if (device is null || device.Length < length)
        {
            if (device is not null)
            {
                accelerator.Synchronize();   // a queued backward may still read the old grouping
                device.Dispose();
            }
            device = null;
            device = accelerator.Allocate1D<int>(Math.Max(capacity, 1));
        }
        ArrayView<int> all = device.View;
        all.SubView(0, length).CopyFromCPU(host.AsSpan(0, length));
        TokenIds = all.SubView(0, tokenGroups);
        TokenStarts = all.SubView(tokenGroups, tokenGroups + 1);
        TokenRows = all.SubView(2 * tokenGroups + 1, n);
        PositionIds = all.SubView(tokenLength, positionGroups);
        PositionStarts = all.SubView(tokenLength + positionGroups, positionGroups + 1);
        PositionRows = all.SubView(tokenLength + 2 * positionGroups + 1, n);
    }

    /// <summary>Throws when an id of the grouped batch is outside [0, vocab) or a position outside [0, maxT).</summary>
    public void CheckIds(long vocab, long maxT)
    {
        if (maxToken >= vocab)
            throw new ArgumentOutOfRangeException("tokens", maxToken, $"Token id {maxToken} is outside the vocabulary [0, {vocab}).");
        if (maxPosition >= maxT)
            throw new ArgumentOutOfRangeException("positions", maxPosition, $"Position {maxPosition} is outside the position table [0, {maxT}).");
    }

    /// <summary>
    /// Writes ids [G], starts [G + 1], rows [N] of <paramref name="values"/> into <paramref name="layout"/> by a
    /// counting sort (stable, so each group's rows stay increasing); returns G.
    /// </summary>
    private int Group(ReadOnlySpan<int> values, string what, string name, Span<int> layout, out int max)
    {
        int n = values.Length;
        max = -1;
        for (int i = 0; i < n; i++)
        {
            int v = values[i];
            if (v < 0) throw new ArgumentOutOfRangeException(name, v, $"{what} {v} at index {i} is negative.");
            if (v > max) max = v;
        }
        if (this.counts.Length < max + 1) this.counts = new int[max + 1];
        var counts = this.counts.AsSpan(0, max + 1);
        counts.Clear();
        foreach (int v in values) counts[v]++;
        int groups = 0;
        for (int v = 0; v <= max; v++) if (counts[v] > 0) groups++;
        var ids = layout[..groups];
        var starts = layout.Slice(groups, groups + 1);
        var rows = layout.Slice(2 * groups + 1, n);
        // counts[v] becomes the next free slot of id v in rows; ids and starts list the non-empty ids in order.
        int g = 0, offset = 0;
        for (int v = 0; v <= max; v++)
        {
            int count = counts[v];
            if (count == 0) continue;
            ids[g] = v;
            starts[g++] = offset;
            counts[v] = offset;
            offset += count;
        }
        starts[groups] = offset;
        for (int i = 0; i < n; i++) rows[counts[values[i]]++] = i;
        return groups;
    }

    public void Dispose()
    {
        device?.Dispose();
        device = null;
    }
}

/// <summary>
/// Row gather and scatter between a [N, width] row-major activation and S chosen rows of it: gather
/// output[s, :] = source[rows[s], :] (a head on chosen positions reads them: a reward model's last-token hidden states,
/// copied out in one transfer instead of one per row), and its adjoint scatter destination[rows[s], :] = values[s, :]
/// (that head's gradient put back, the other rows left as they are). One thread per element of the S rows; rows are not
/// range-checked on the device (the host caller checks them, and for the scatter that they are distinct).
/// </summary>
public sealed class GpuRowGather
{
    private readonly Action<AcceleratorStream, Index1D, ArrayView<float>, ArrayView<int>, int, ArrayView<float>> gather, scatter;
    private readonly Accelerator accelerator;

    public GpuRowGather(Accelerator accelerator)
    {
        this.accelerator = accelerator;
        gather = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, ArrayView<float>>(GatherKernel);
        scatter = accelerator.LoadAutoGroupedKernel<Index1D, ArrayView<float>, ArrayView<int>, int, ArrayView<float>>(ScatterKernel);
    }

    /// <summary>output [S, width] = source[rows[s], :]; rows [S] on the device.</summary>
    public void Gather(ArrayView<float> source, ArrayView<int> rows, int width, ArrayView<float> output)
    {
        GpuLaunch.CheckPositive(width, nameof(width));
        GpuLaunch.CheckLength(output.Length, rows.Length * width, nameof(output), "[S, width], one row per index");
        if (source.Length % width != 0)
            throw new ArgumentException($"source has {source.Length} elements, not a multiple of width = {width}.", nameof(source));
        if (output.Length > 0) gather(accelerator.DefaultStream, (int)output.Length, source, rows, width, output);
    }

    /// <summary>destination[rows[s], :] = values[s, :]; rows [S] on the device, distinct; other rows untouched.</summary>
    public void Scatter(ArrayView<float> values, ArrayView<int> rows, int width, ArrayView<float> destination)
    {
        GpuLaunch.CheckPositive(width, nameof(width));
        GpuLaunch.CheckLength(values.Length, rows.Length * width, nameof(values), "[S, width], one row per index");
        if (destination.Length % width != 0)
            throw new ArgumentException($"destination has {destination.Length} elements, not a multiple of width = {width}.", nameof(destination));
        if (values.Length > 0) scatter(accelerator.DefaultStream, (int)values.Length, values, rows, width, destination);
    }

    [GpuKernel(false)]
    internal static void ScatterKernel(Index1D i, ArrayView<float> values, ArrayView<int> rows, int width, ArrayView<float> destination)
    {
        int s = i / width, c = i - s * width;
        destination[(long)rows[s] * width + c] = values[i];
    }

    [GpuKernel(false)]
    internal static void GatherKernel(Index1D i, ArrayView<float> source, ArrayView<int> rows, int width, ArrayView<float> output)
    {
        int s = i / width, c = i - s * width;
        output[i] = source[(long)rows[s] * width + c];
    }
}
