using System.Numerics.Tensors;

namespace DistAlign.Kernels.Cpu;

/// <summary>
/// Token + position embedding (GPT-2's input layer).
/// Forward:  out[n, :] = wte[token[n], :] + wpe[position[n], :]   for n in [0, N), N = B·T.
/// Shapes: tokens [N], positions [N] (explicit, so packed sequences can restart at 0), wte [V, C],
/// wpe [maxT, C], out [N, C].
/// Backward: dwte[token[n], :] += dout[n, :]; dwpe[position[n], :] += dout[n, :] (accumulates).
/// </summary>
public static class Embedding
{
    /// <summary>Channels per work item in the backward: 16 floats = one 64-byte cache line.</summary>
    private const int ChannelBlock = 16;

    /// <summary>Writes out[n, :] = wte[tokens[n], :] + wpe[positions[n], :].</summary>
    /// <exception cref="ArgumentOutOfRangeException">A token is outside [0, V) or a position outside [0, maxT).</exception>
    public static unsafe void Forward(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions,
                                      ReadOnlySpan<float> wte, ReadOnlySpan<float> wpe, int channels, Span<float> output)
    {
        int n = tokens.Length;
        Validate(tokens, positions, wte, wpe, channels, output.Length, nameof(output));
        int c = channels;
        fixed (int* pt = tokens, pp = positions)
        fixed (float* pte = wte, ppe = wpe, po = output)
        {
            int* xt = pt, xp = pp;
            float* xte = pte, xpe = ppe, xo = po;
            CpuParallel.For(n, 64, (start, end) =>
            {
                for (int i = start; i < end; i++)
                    TensorPrimitives.Add(new ReadOnlySpan<float>(xte + (long)xt[i] * c, c),
                                         new ReadOnlySpan<float>(xpe + (long)xp[i] * c, c),
                                         new Span<float>(xo + (long)i * c, c));
            });
        }
    }

    /// <summary>
    /// Scatters dOutput into the tables: dWte[tokens[n]] += dOutput[n], dWpe[positions[n]] += dOutput[n].
    /// Accumulates. Deterministic for any thread count: work is split over blocks of channels, and each
    /// thread walks all N rows in order for its own channels, so every gradient element receives its
    /// contributions in row order, from one thread, without atomics or per-thread copies.
    /// </summary>
    public static unsafe void Backward(ReadOnlySpan<float> dOutput, ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions,
                                       int channels, Span<float> dWte, Span<float> dWpe)
    {
        int n = tokens.Length;
        Validate(tokens, positions, dWte, dWpe, channels, dOutput.Length, nameof(dOutput));
        int c = channels;
        int blocks = (c + ChannelBlock - 1) / ChannelBlock;
        fixed (int* pt = tokens, pp = positions)
        fixed (float* pd = dOutput, pte = dWte, ppe = dWpe)
        {
            int* xt = pt, xp = pp;
            float* xd = pd, xte = pte, xpe = ppe;
            // Each range must have enough rows×channels to pay for a thread.
            int minBlocks = Math.Max(1, 4096 / Math.Max(1, n));
            CpuParallel.For(blocks, minBlocks, (b0, b1) =>
            {
                int c0 = b0 * ChannelBlock, width = Math.Min(c, b1 * ChannelBlock) - c0;
                for (int i = 0; i < n; i++)
                {
                    var d = new ReadOnlySpan<float>(xd + (long)i * c + c0, width);
                    var te = new Span<float>(xte + (long)xt[i] * c + c0, width);
                    var pe = new Span<float>(xpe + (long)xp[i] * c + c0, width);
                    TensorPrimitives.Add(te, d, te);
                    TensorPrimitives.Add(pe, d, pe);
                }
            });
        }
    }

    private static void Validate(ReadOnlySpan<int> tokens, ReadOnlySpan<int> positions, ReadOnlySpan<float> wte,
                                 ReadOnlySpan<float> wpe, int channels, int activationLength, string activationName)
    {
        ShapeCheck.Positive(channels, nameof(channels));
        int n = tokens.Length;
        ShapeCheck.Length(positions.Length, n, nameof(positions), "[N], one position per token");
        ShapeCheck.Length(activationLength, (long)n * channels, activationName, "[N, C]");
        if (wte.Length % channels != 0)
            throw new ArgumentException($"The token table has {wte.Length} elements, not a multiple of C = {channels}.", nameof(wte));
        if (wpe.Length % channels != 0)
            throw new ArgumentException($"The position table has {wpe.Length} elements, not a multiple of C = {channels}.", nameof(wpe));
        int vocab = wte.Length / channels, maxT = wpe.Length / channels;
        for (int i = 0; i < n; i++)
        {
            if ((uint)tokens[i] >= (uint)vocab)
                throw new ArgumentOutOfRangeException(nameof(tokens), tokens[i],
                    $"Token id {tokens[i]} at index {i} is outside the vocabulary [0, {vocab}).");
            if ((uint)positions[i] >= (uint)maxT)
                throw new ArgumentOutOfRangeException(nameof(positions), positions[i],
                    $"Position {positions[i]} at index {i} is outside the position table [0, {maxT}).");
        }
    }
}
