using DistAlign.Kernels.Gpu;
using ILGPU;

namespace DistAlign.Transformer.Gpu;

/// <summary>
/// Attention with the probabilities materialised: three steps per layer, each GEMM over the NH heads of one batch row as
/// one strided-batched call (head h's q, k, v are hs-wide column blocks of qkv [T, 3C], so consecutive heads are hs
/// elements apart), the softmax over the whole batch at once. Any <see cref="IGemm"/>, fp32 operands; "att" [B, NH, T, T]
/// holds the scores, then in place the probabilities the backward reads.
/// </summary>
internal sealed class MaterialisedAttentionPath(IGemm gemm, GpuAttention softmax, int channels, int heads) : IAttentionPath
{
    public bool MaterialisesScores => true;

    // Per row b, over the NH heads (stride hs): scores = q·kᵀ [T, T]; then the masked softmax (scale 1/√hs and segment ids
    // applied there) over all rows, in place; then atty = a·v.
    public void Forward(GpuActivations s, int layer, ArrayView<float> qkv, ArrayView<float> atty)
    {
        int T = s.Length, nh = heads, c = channels, hs = c / nh;
        long tt = (long)T * T;
        var att = s[$"h.{layer}.att"];
        for (int b = 0; b < s.Rows; b++)
        {
            var rowQkv = qkv.SubView((long)b * T * 3 * c);
            gemm.MultiplyStridedBatched(false, true, T, T, hs, 1f, rowQkv, 3 * c, hs, rowQkv.SubView(c), 3 * c, hs,
                                        0f, att.SubView(b * nh * tt), T, tt, nh);
        }
        softmax.SoftmaxForward(att, s.Segments, s.Rows, T, nh, 1f / MathF.Sqrt(hs), att);
        for (int b = 0; b < s.Rows; b++)
        {
            var rowQkv = qkv.SubView((long)b * T * 3 * c);
            gemm.MultiplyStridedBatched(false, false, T, hs, T, 1f, att.SubView(b * nh * tt), T, tt, rowQkv.SubView(2 * c), 3 * c, hs,
                                        0f, atty.SubView((long)b * T * c), c, hs, nh);
        }
    }

    // dA = dout·vᵀ;  dv += aᵀ·dout;  dS = softmax backward (scale included);  dq += dS·k;  dk += dSᵀ·q   (dQkv accumulated)
    public void Backward(GpuActivations s, int layer, ArrayView<float> qkv, ArrayView<float> atty, ArrayView<float> dAtty, ArrayView<float> dQkv)
    {
        int T = s.Length, nh = heads, c = channels, hs = c / nh;
        long tt = (long)T * T;
        var att = s[$"h.{layer}.att"];
        var dAtt = s["d_att"];
        for (int b = 0; b < s.Rows; b++)
        {
            var rowQkv = qkv.SubView((long)b * T * 3 * c);
            var rowDQkv = dQkv.SubView((long)b * T * 3 * c);
            var rowDOut = dAtty.SubView((long)b * T * c);
            gemm.MultiplyStridedBatched(false, true, T, T, hs, 1f, rowDOut, c, hs, rowQkv.SubView(2 * c), 3 * c, hs,
                                        0f, dAtt.SubView(b * nh * tt), T, tt, nh);
            gemm.MultiplyStridedBatched(true, false, T, hs, T, 1f, att.SubView(b * nh * tt), T, tt, rowDOut, c, hs,
                                        1f, rowDQkv.SubView(2 * c), 3 * c, hs, nh);
        }
        softmax.SoftmaxBackward(dAtt, att, s.Rows, T, nh, 1f / MathF.Sqrt(hs), dAtt);
        for (int b = 0; b < s.Rows; b++)
        {
            var rowQkv = qkv.SubView((long)b * T * 3 * c);
            var rowDQkv = dQkv.SubView((long)b * T * 3 * c);
            var rowDScores = dAtt.SubView(b * nh * tt);
            gemm.MultiplyStridedBatched(false, false, T, hs, T, 1f, rowDScores, T, tt, rowQkv.SubView(c), 3 * c, hs,
                                        1f, rowDQkv, 3 * c, hs, nh);
            gemm.MultiplyStridedBatched(true, false, T, hs, T, 1f, rowDScores, T, tt, rowQkv, 3 * c, hs,
                                        1f, rowDQkv.SubView(c), 3 * c, hs, nh);
        }
    }
}
