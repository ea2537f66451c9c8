using DistAlign.Engine.SafeTensors;
using DistAlign.Kernels.Cpu;
using DistAlign.Kernels.Gpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace DistAlign.GpuCheck;

/// <summary>
/// GPU results against the CPU kernels (themselves tested against fp64 references in the test suite).
/// Tolerances: fp32 paths 1e-4-ish; TF32 and bf16 tensor-core paths are bounded by their input rounding
/// (2⁻¹¹ and 2⁻⁸ relative per input, summed over k), loose enough for rounding and far too tight for a wrong
/// transpose, stride or leading dimension (those give errors of the size of the results).
/// </summary>
internal sealed class KernelChecks(Accelerator accelerator, Report report, bool quick)
{
    private readonly GpuKernels _ops = new(accelerator);

    public static float[] RandomFloats(int count, int seed, float scale = 1f)
    {
        var rng = new Random(seed);
        var a = new float[count];
        for (int i = 0; i < count; i++) a[i] = (float)(rng.NextDouble() * 2 - 1) * scale;
        return a;
    }

    private MemoryBuffer1D<T, Stride1D.Dense> Up<T>(T[] data) where T : unmanaged => accelerator.Allocate1D(data);

    private T[] Down<T>(MemoryBuffer1D<T, Stride1D.Dense> buffer) where T : unmanaged
    {
        accelerator.Synchronize();
        return buffer.GetAsArray1D();
    }

    private void Run(string name, Action check)
    {
        try { check(); }
        catch (Exception e) { report.Add(new CheckResult(name, 0, double.NaN, double.NaN, "", $"{e.GetType().Name}: {e.Message}")); }
    }

    public void RunAll()
    {
        if (accelerator is CudaAccelerator cuda)
        {
            report.Note($"GEMM: {_ops.Gemm.GetType().Name} on {accelerator.Name}; every ILGPU kernel compiled for {cuda.Architecture} while loading");
            foreach (var precision in new[] { GemmPrecision.Float32, GemmPrecision.Tf32, GemmPrecision.BFloat16 })
                Run($"cuBLAS GEMM {precision}", () => CheckCublasGemm(cuda, precision));
            Run("cuBLASLt bias and bias+GELU epilogues", () => CheckEpilogues(cuda));
            Run("cuBLAS strided-batched GEMM", () => CheckStridedBatched(cuda));
            Run("cuBLAS bf16-stored GEMM (mixed precision)", () => CheckBFloat16Storage(cuda));
        }
        else
        {
            report.Note($"{accelerator.Name}: not CUDA, so cuBLAS and NVRTC checks are skipped; ILGPU kernels only");
        }
        Run("ILGPU tiled GEMM on CUDA", CheckTiledGemm);
        Run("ILGPU GELU", CheckGelu);
        Run("ILGPU LayerNorm forward", CheckLayerNorm);
        Run("ILGPU residual", CheckResidual);
        Run("ILGPU AdamW", CheckAdamW);
        Run("ILGPU attention forward", CheckAttention);
        Run("target log-probs", CheckTargetLogProbs);
        Run("ILGPU LayerNorm backward", CheckLayerNormBackward);
        Run("ILGPU column sum (bias gradients)", CheckColumnSum);
        Run("ILGPU embedding backward", CheckEmbeddingBackward);
        Run("ILGPU residual backward", CheckResidualBackward);
        Run("ILGPU attention backward", CheckAttentionBackward);
        Run("ILGPU target log-probs backward", CheckTargetLogProbsBackward);
        Run("fused LM head (GEMM chunks + log-softmax)", CheckSequenceLogProbs);
        if (accelerator is CudaAccelerator cudaAccelerator)
            Run("fused LM head, bf16 operands and padded vocabulary (cuBLAS bf16)", () => CheckSequenceLogProbsBFloat16(cudaAccelerator));
    }

    private void CheckLayerNormBackward()
    {
        int n = quick ? 100 : 16384, c = 768;   // dW/dB: several row blocks of GpuColumnSum, the last one short when quick
        var x = RandomFloats(n * c, 30, 3f);
        var w = RandomFloats(c, 31);
        var bias = RandomFloats(c, 32);
        var dy = RandomFloats(n * c, 33);
        var (y, mean, rstd) = (new float[n * c], new float[n], new float[n]);
        LayerNorm.Forward(x, w, bias, y, mean, rstd);
        var (dx, dw, db) = (RandomFloats(n * c, 34), RandomFloats(c, 35), RandomFloats(c, 36));   // accumulated into
        using var gdx = Up(dx);
        using var gdw = Up(dw);
        using var gdb = Up(db);
        LayerNorm.Backward(dy, x, w, mean, rstd, dx, dw, db);
        using var gdy = Up(dy);
        using var gx = Up(x);
        using var gw = Up(w);
        using var gm = Up(mean);
        using var gr = Up(rstd);
        _ops.LayerNorm.Backward(gdy.View, gx.View, gw.View, gm.View, gr.View, gdx.View, gdw.View, gdb.View);
        report.Compare($"LayerNorm backward dInput [{n}, {c}]", Down(gdx), dx, 1e-5, 1e-4);
        report.Compare($"LayerNorm backward dWeight [{c}] (sum over {n} rows)", Down(gdw), dw, 1e-4 * Math.Sqrt(n), 1e-4);
        report.Compare($"LayerNorm backward dBias [{c}] (sum over {n} rows)", Down(gdb), db, 1e-4 * Math.Sqrt(n), 1e-4);
    }

    private void CheckColumnSum()
    {
        int n = quick ? 200 : 16384, c = 768;   // GPT-2 124M: B·T = 16 × 1024 rows of a bias gradient
        var x = RandomFloats(n * c, 47);
        var before = RandomFloats(c, 48);
        var expected = new float[c];
        for (int j = 0; j < c; j++)
        {
            double sum = before[j];
            for (int i = 0; i < n; i++) sum += x[(long)i * c + j];
            expected[j] = (float)sum;
        }
        using var gx = Up(x);
        float[] Sum()
        {
            using var sums = Up(before);
            _ops.ColumnSum.Sum(gx.View, sums.View);
            return Down(sums);
        }
        var first = Sum();
        report.Compare($"column sum [{n}, {c}] vs fp64 (accumulated)", first, expected, 1e-5 * Math.Sqrt(n), 1e-5);
        report.Compare($"column sum [{n}, {c}] rerun (bit-identical)", Sum(), first, 0, 0);
    }

    private void CheckEmbeddingBackward()
    {
        // GPT-2 124M shapes when full: B × T = 16 × 1024, V = 50257, C = 768; a third of the tokens from 20 frequent
        // ids, so groups range from one row to hundreds.
        int batch = quick ? 2 : 16, length = quick ? 32 : 1024, vocab = quick ? 500 : 50257, c = quick ? 64 : 768;
        int n = batch * length;
        var rng = new Random(49);
        var tokens = Enumerable.Range(0, n).Select(_ => rng.Next(3) == 0 ? rng.Next(20) * 97 % vocab : rng.Next(vocab)).ToArray();
        var positions = Enumerable.Range(0, n).Select(i => i % length).ToArray();
        var dOut = RandomFloats(n * c, 50);
        var teBefore = RandomFloats(vocab * c, 51, 0.1f);
        var peBefore = RandomFloats(length * c, 52, 0.1f);
        var (te, pe) = ((float[])teBefore.Clone(), (float[])peBefore.Clone());
        Embedding.Backward(dOut, tokens, positions, c, te, pe);
        using var gd = Up(dOut);
        using var gt = Up(tokens);
        using var gp = Up(positions);
        foreach (bool hostIds in new[] { true, false })
        {
            using var gte = Up(teBefore);
            using var gpe = Up(peBefore);
            if (hostIds)
            {
                _ops.Embedding.SetBatch(tokens, positions);
                _ops.Embedding.Backward(gd.View, c, gte.View, gpe.View);
            }
            else
            {
                _ops.Embedding.Backward(gd.View, gt.View, gp.View, c, gte.View, gpe.View);
            }
            string how = hostIds ? "host ids (SetBatch)" : "device ids";
            report.Compare($"embedding backward dWte [{vocab}, {c}], {how}, bit-identical to CPU", Down(gte), te, 0, 0);
            report.Compare($"embedding backward dWpe [{length}, {c}], {how}, bit-identical to CPU", Down(gpe), pe, 0, 0);
        }
    }

    private void CheckResidualBackward()
    {
        int count = quick ? 10_000 : 1_000_000;
        var dy = RandomFloats(count, 37);
        var (da, db) = (RandomFloats(count, 38), RandomFloats(count, 39));
        using var gda = Up(da);
        using var gdb = Up(db);
        using var gdy = Up(dy);
        Residual.Backward(dy, da, db);
        _ops.Residual.Backward(gdy.View, gda.View, gdb.View);
        report.Compare($"residual backward dA [{count}]", Down(gda), da, 0, 0);
        report.Compare($"residual backward dB [{count}]", Down(gdb), db, 0, 0);
    }

    private void CheckAttentionBackward()
    {
        int batch = 2, seqLen = quick ? 32 : 128, heads = 4, c = 256;
        var qkv = RandomFloats(batch * seqLen * 3 * c, 40);
        var att = new float[batch * heads * seqLen * seqLen];
        var output = new float[batch * seqLen * c];
        Attention.Forward(qkv, [], batch, seqLen, heads, att, output);
        var dOut = RandomFloats(output.Length, 41);
        var dQkv = RandomFloats(qkv.Length, 42);
        using var g = Up(dQkv);
        Attention.Backward(dOut, qkv, att, output, batch, seqLen, heads, dQkv);
        using var gOut = Up(dOut);
        using var gQkv = Up(qkv);
        using var gAtt = Up(att);
        using var gOutput = Up(output);
        _ops.Attention.Backward(gOut.View, gQkv.View, gAtt.View, gOutput.View, batch, seqLen, heads, g.View);
        report.Compare($"attention backward dQKV [{batch}, {seqLen}, {3 * c}]", Down(g), dQkv, 1e-5, 1e-4);
    }

    private void CheckTargetLogProbsBackward()
    {
        int rows = quick ? 5 : 37, vocab = 50257;
        var logits = RandomFloats(rows * vocab, 43, 8f);
        var targets = Enumerable.Range(0, rows).Select(r => r % 7 == 3 ? -1 : (r * 7919) % vocab).ToArray();
        var (logProbs, lse) = (new float[rows], new float[rows]);
        TargetLogProbs.Forward(logits, targets, vocab, logProbs, lse);
        var dLogProbs = RandomFloats(rows, 44);
        using var gLogits = Up(logits);
        using var gTargets = Up(targets);
        using var gLse = Up(lse);
        using var gd = Up(dLogProbs);
        TargetLogProbs.Backward(logits, targets, vocab, lse, dLogProbs);
        _ops.TargetLogProbs.Backward(gLogits.View, gTargets.View, vocab, gLse.View, gd.View);
        report.Compare($"target log-probs backward dLogits [{rows}, {vocab}]", Down(gLogits), logits, 1e-7, 1e-4);
    }

    private void CheckSequenceLogProbs()
    {
        // An odd vocabulary (logits rows padded to 4,160 floats) and a scratch of a third of the rows: several chunks.
        int rows = quick ? 16 : 300, channels = 128, vocab = 4099;
        var hidden = RandomFloats(rows * channels, 45);
        var head = RandomFloats(vocab * channels, 46, 0.2f);
        var targets = Enumerable.Range(0, rows).Select(r => r % 5 == 2 ? -1 : (r * 131) % vocab).ToArray();
        var (logProbs, lse, entropy) = (new float[rows], new float[rows], new float[rows]);
        var scratch = new float[SequenceLogProbs.ScratchLength(rows, vocab)];
        SequenceLogProbs.Forward(hidden, head, targets, channels, vocab, scratch, logProbs, lse, entropy);
        using var gh = Up(hidden);
        using var gw = Up(head);
        using var gt = Up(targets);
        using var gs = accelerator.Allocate1D<float>(GpuSequenceLogProbs.ScratchLength(rows, vocab, (rows / 3 + 1L) * GpuSequenceLogProbs.RowStride(vocab)));
        gs.View.CopyFromCPU(Enumerable.Repeat(float.NaN, (int)gs.Length).ToArray());   // the padding columns must never be read as logits
        using var glp = accelerator.Allocate1D<float>(rows);
        using var glse = accelerator.Allocate1D<float>(rows);
        using var gent = accelerator.Allocate1D<float>(rows);
        _ops.SequenceLogProbs.Forward(gh.View, gw.View, gt.View, channels, vocab, gs.View, glp.View, glse.View, gent.View);
        int chunk = GpuSequenceLogProbs.ChunkRows(rows, vocab, gs.Length);
        report.Compare($"LM head log-probs [{rows}×{channels}]·[{vocab}×{channels}]ᵀ, {(rows + chunk - 1) / chunk} chunks, row stride {GpuSequenceLogProbs.RowStride(vocab)} ({_ops.Gemm.GetType().Name})",
                       Down(glp), logProbs, 1e-4, 1e-4);
        report.Compare($"LM head logsumexp [{rows}]", Down(glse), lse, 1e-4, 1e-4);
        report.Compare($"LM head entropy [{rows}]", Down(gent), entropy, 1e-4, 1e-4);
    }

    /// <summary>
    /// The LM head as the bf16 training step runs it (<see cref="GpuSequenceLogProbs.UsesBFloat16Operands"/>: E and h rounded
    /// to bf16, n = k = Vp against the zero-padded table, bf16 d(logits)), fused forward+backward with entropies, against
    /// the fp32 CPU kernel: log-probs, log-sum-exp and entropies within 2e-2 absolute (logits with std 2, up to ~±10), ∂h and ∂E
    /// within 3 % of the largest |∂| the CPU kernel adds (both pre-filled: β = 1 accumulation checked). Two shapes: an odd
    /// vocabulary in several chunks, and GPT-2's (V = 50,257 padded to 50,304, C = 768) in one chunk when not quick.
    /// The scratch starts NaN: a padding column read as a logit would make a result NaN.
    /// </summary>
    private void CheckSequenceLogProbsBFloat16(CudaAccelerator cuda)
    {
        using var gemm = new CublasGemm(cuda, GemmPrecision.BFloat16);
        using var op = new GpuSequenceLogProbs(accelerator, gemm, _ops.TargetLogProbs);
        if (!op.UsesBFloat16Operands) throw new InvalidOperationException("the LM head did not choose bf16 operands for cuBLAS bf16");
        var shapes = new List<(int Rows, int Channels, int Vocab, int ScratchRows)> { (quick ? 16 : 300, 128, 4099, quick ? 5 : 101) };
        if (!quick) shapes.Add((64, 768, 50257, 64));
        foreach (var (rows, channels, vocab, scratchRows) in shapes)
        {
            var hidden = RandomFloats(rows * channels, 47);
            var head = RandomFloats(vocab * channels, 48, 6f / MathF.Sqrt(channels));   // uniform inputs: logits with std 2, up to ~±10
            var targets = Enumerable.Range(0, rows).Select(r => r % 5 == 2 ? -1 : (r * 131) % vocab).ToArray();
            var dLogProbs = RandomFloats(rows, 49);
            var dEntropy = RandomFloats(rows, 50);
            var dHidden0 = RandomFloats(rows * channels, 51, 0.1f);
            var dHead0 = RandomFloats(vocab * channels, 52, 0.1f);
            var (logProbs, lse, entropy) = (new float[rows], new float[rows], new float[rows]);
            var (dHidden, dHead) = ((float[])dHidden0.Clone(), (float[])dHead0.Clone());
            var scratch = new float[SequenceLogProbs.ScratchLength(rows, vocab)];
            SequenceLogProbs.ForwardBackward(hidden, head, targets, channels, vocab, dLogProbs, dEntropy, scratch, logProbs, lse, entropy, dHidden, dHead);

            int stride = GpuSequenceLogProbs.RowStride(vocab);
            using var gh = Up(hidden);
            using var gw = Up(head);
            using var gt = Up(targets);
            using var gda = Up(dLogProbs);
            using var gdb = Up(dEntropy);
            using var gs = Up(Enumerable.Repeat(float.NaN, scratchRows * stride).ToArray());
            using var glp = accelerator.Allocate1D<float>(rows);
            using var glse = accelerator.Allocate1D<float>(rows);
            using var gent = accelerator.Allocate1D<float>(rows);
            using var gdh = Up(dHidden0);
            using var gde = Up(dHead0);
            op.ForwardBackward(gh.View, gw.View, gt.View, channels, vocab, gda.View, gdb.View, gs.View, glp.View, glse.View, gent.View, gdh.View, gde.View);
            int chunk = GpuSequenceLogProbs.ChunkRows(rows, vocab, gs.Length);
            string what = $"LM head bf16 [{rows}×{channels}]·[{vocab}×{channels}]ᵀ, Vp {stride}, {(rows + chunk - 1) / chunk} chunks";
            report.Compare($"{what}: log-probs", Down(glp), logProbs, 2e-2, 0);
            report.Compare($"{what}: logsumexp", Down(glse), lse, 2e-2, 0);
            report.Compare($"{what}: entropy", Down(gent), entropy, 2e-2, 0);
            CompareGradient($"{what}: ∂h (+=)", Down(gdh), dHidden, dHidden0);
            CompareGradient($"{what}: ∂E (+=)", Down(gde), dHead, dHead0);
        }
    }

    /// <summary>Gradients within 3 % of the largest |∂| the CPU kernel added to <paramref name="before"/>.</summary>
    private void CompareGradient(string name, float[] actual, float[] expected, float[] before)
    {
        double largest = 0;
        for (int i = 0; i < expected.Length; i++) largest = Math.Max(largest, Math.Abs(expected[i] - before[i]));
        report.Compare(name, actual, expected, 0.03 * Math.Max(largest, 1e-30), 0);
    }

    private void CheckCublasGemm(CudaAccelerator cuda, GemmPrecision precision)
    {
        using var gemm = new CublasGemm(cuda, precision);
        var (atol, rtol) = precision switch { GemmPrecision.Float32 => (1e-4, 1e-4), GemmPrecision.Tf32 => (2e-2, 1e-2), _ => (1.5e-1, 2e-2) };
        foreach (var (ta, tb) in new[] { (false, false), (false, true), (true, false), (true, true) })
        {
            int m = 67, n = 45, k = 129;
            int lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 1, ldc = n + 2;
            var a = RandomFloats((ta ? k : m) * lda, 1);
            var b = RandomFloats((tb ? n : k) * ldb, 2);
            var c = RandomFloats(m * ldc, 3);
            var expected = (float[])c.Clone();
            Gemm.Multiply(ta ? Transpose.Yes : Transpose.No, tb ? Transpose.Yes : Transpose.No, m, n, k, 0.5f, a, lda, b, ldb, 0.25f, expected, ldc);
            using var da = Up(a);
            using var db = Up(b);
            using var dc = Up(c);
            gemm.Multiply(ta, tb, m, n, k, 0.5f, da.View, lda, db.View, ldb, 0.25f, dc.View, ldc);
            report.Compare($"cuBLAS GEMM {precision} {(ta ? 'T' : 'N')}{(tb ? 'T' : 'N')} {m}×{n}×{k}", Down(dc), expected, atol, rtol);
        }
    }

    private void CheckEpilogues(CudaAccelerator cuda)
    {
        using var gemm = new CublasGemm(cuda, GemmPrecision.Float32);
        int m = 33, n = 96, k = 64;
        var a = RandomFloats(m * k, 4);
        var b = RandomFloats(n * k, 5);   // [n, k]: op(B) = Bᵀ as for a tied LM head
        var bias = RandomFloats(n, 6);
        var expected = new float[m * n];
        Gemm.Multiply(Transpose.No, Transpose.Yes, m, n, k, 1f, a, k, b, k, 0f, expected, n, bias);
        using var da = Up(a);
        using var db = Up(b);
        using var dbias = Up(bias);
        using var dc = accelerator.Allocate1D<float>(m * n);
        gemm.Multiply(false, true, m, n, k, 1f, da.View, k, db.View, k, 0f, dc.View, n, dbias.View);
        report.Compare($"cuBLASLt BIAS epilogue NT {m}×{n}×{k}", Down(dc), expected, 1e-4, 1e-4);
        var geluExpected = new float[m * n];
        Gelu.Forward(expected, geluExpected);
        gemm.MultiplyBiasGelu(false, true, m, n, k, 1f, da.View, k, db.View, k, 0f, dc.View, n, dbias.View);
        report.Compare($"cuBLASLt GELU_BIAS epilogue NT {m}×{n}×{k}", Down(dc), geluExpected, 1e-3, 1e-3);
    }

    private void CheckStridedBatched(CudaAccelerator cuda)
    {
        using var gemm = new CublasGemm(cuda, GemmPrecision.Float32);
        // Attention shapes: scores[b,h] = Q·Kᵀ over head dim 64, batch = B·NH.
        int batch = 12, m = 40, n = 40, k = 64;
        long sa = m * k, sb = n * k, sc = m * n;
        var a = RandomFloats((int)(batch * sa), 7);
        var b = RandomFloats((int)(batch * sb), 8);
        var expected = new float[batch * sc];
        for (int i = 0; i < batch; i++)
            Gemm.Multiply(Transpose.No, Transpose.Yes, m, n, k, 0.125f, a.AsSpan((int)(i * sa)), k, b.AsSpan((int)(i * sb)), k, 0f, expected.AsSpan((int)(i * sc)), n);
        using var da = Up(a);
        using var db = Up(b);
        using var dc = accelerator.Allocate1D<float>(batch * sc);
        gemm.MultiplyStridedBatched(false, true, m, n, k, 0.125f, da.View, k, sa, db.View, k, sb, 0f, dc.View, n, sc, batch);
        report.Compare($"cuBLAS strided-batched NT {batch}×({m}×{n}×{k})", Down(dc), expected, 1e-4, 1e-4);
    }

    private void CheckBFloat16Storage(CudaAccelerator cuda)
    {
        using var gemm = new CublasGemm(cuda, GemmPrecision.Float32);
        int m = 64, n = 80, k = 256;
        var a = RandomFloats(m * k, 9);
        var b = RandomFloats(k * n, 10);
        var aRounded = a.Select(x => HalfPrecision.FromBFloat16Bits(HalfPrecision.ToBFloat16Bits(x))).ToArray();
        var bRounded = b.Select(x => HalfPrecision.FromBFloat16Bits(HalfPrecision.ToBFloat16Bits(x))).ToArray();
        var expected = new float[m * n];
        Gemm.Multiply(Transpose.No, Transpose.No, m, n, k, 1f, aRounded, k, bRounded, n, 0f, expected, n);
        using var da = Up(a);
        using var db = Up(b);
        using var a16 = accelerator.Allocate1D<ushort>(a.Length);
        using var b16 = accelerator.Allocate1D<ushort>(b.Length);
        using var dc = accelerator.Allocate1D<float>(m * n);
        var convert = new GpuBFloat16(accelerator);
        convert.ToBFloat16(da.View, a16.View);
        convert.ToBFloat16(db.View, b16.View);
        var bits = Down(a16);
        int mismatches = 0;
        for (int i = 0; i < a.Length; i++) if (bits[i] != HalfPrecision.ToBFloat16Bits(a[i])) mismatches++;
        report.Add(new CheckResult("GpuBFloat16 rounding (bits vs CPU)", a.Length, mismatches, mismatches, "exact", mismatches == 0 ? null : $"{mismatches} values differ"));
        gemm.MultiplyBFloat16(false, false, m, n, k, 1f, a16.View, k, b16.View, n, 0f, dc.View, n);
        report.Compare($"cuBLAS bf16 inputs, fp32 accumulate NN {m}×{n}×{k}", Down(dc), expected, 1e-3, 1e-4);
    }

    private void CheckTiledGemm()
    {
        var gemm = new GpuTiledGemm(accelerator);
        int m = 50, n = 70, k = 90;
        var a = RandomFloats(k * m, 11);
        var b = RandomFloats(k * n, 12);
        var bias = RandomFloats(n, 13);
        var expected = new float[m * n];
        Gemm.Multiply(Transpose.Yes, Transpose.No, m, n, k, 1f, a, m, b, n, 0f, expected, n, bias);
        using var da = Up(a);
        using var db = Up(b);
        using var dbias = Up(bias);
        using var dc = accelerator.Allocate1D<float>(m * n);
        gemm.Multiply(true, false, m, n, k, 1f, da.View, m, db.View, n, 0f, dc.View, n, dbias.View);
        report.Compare($"ILGPU tiled GEMM TN + bias {m}×{n}×{k}", Down(dc), expected, 1e-4, 1e-4);
    }

    private void CheckGelu()
    {
        int count = quick ? 10_000 : 1_000_003;
        var x = RandomFloats(count, 14, 6f);
        var dy = RandomFloats(count, 15);
        var dx0 = RandomFloats(count, 16);
        var y = new float[count];
        var dx = (float[])dx0.Clone();
        Gelu.Forward(x, y);
        Gelu.Backward(dy, x, dx);
        using var dX = Up(x);
        using var dY = accelerator.Allocate1D<float>(count);
        using var ddy = Up(dy);
        using var ddx = Up(dx0);
        _ops.Gelu.Forward(dX.View, dY.View);
        _ops.Gelu.Backward(ddy.View, dX.View, ddx.View);
        report.Compare($"GELU forward [{count}]", Down(dY), y, 1e-6, 1e-5);
        report.Compare($"GELU backward [{count}]", Down(ddx), dx, 1e-6, 1e-5);
    }

    private void CheckLayerNorm()
    {
        int n = quick ? 64 : 4096, c = 768;
        var x = RandomFloats(n * c, 17, 3f);
        var w = RandomFloats(c, 18);
        var bias = RandomFloats(c, 19);
        var (y, mean, rstd) = (new float[n * c], new float[n], new float[n]);
        LayerNorm.Forward(x, w, bias, y, mean, rstd);
        using var dx = Up(x);
        using var dw = Up(w);
        using var db = Up(bias);
        using var dy = accelerator.Allocate1D<float>(n * c);
        using var dm = accelerator.Allocate1D<float>(n);
        using var dr = accelerator.Allocate1D<float>(n);
        _ops.LayerNorm.Forward(dx.View, dw.View, db.View, dy.View, dm.View, dr.View);
        report.Compare($"LayerNorm forward output [{n}, {c}]", Down(dy), y, 1e-5, 1e-4);
        report.Compare($"LayerNorm forward mean [{n}]", Down(dm), mean, 1e-6, 1e-5);
        report.Compare($"LayerNorm forward rstd [{n}]", Down(dr), rstd, 1e-6, 1e-5);
    }

    private void CheckResidual()
    {
        int count = quick ? 10_000 : 1_000_000;
        var a = RandomFloats(count, 20);
        var b = RandomFloats(count, 21);
        var y = new float[count];
        Residual.Forward(a, b, y);
        using var da = Up(a);
        using var db = Up(b);
        using var dy = accelerator.Allocate1D<float>(count);
        _ops.Residual.Forward(da.View, db.View, dy.View);
        report.Compare($"residual forward [{count}]", Down(dy), y, 0, 0);
    }

    private void CheckAdamW()
    {
        int count = quick ? 10_000 : 1_000_000;
        var p = RandomFloats(count, 22);
        var g = RandomFloats(count, 23);
        var m = RandomFloats(count, 24, 0.1f);
        var v = RandomFloats(count, 25, 0.01f).Select(Math.Abs).ToArray();
        using var dp = Up(p);
        using var dg = Up(g);
        using var dm = Up(m);
        using var dv = Up(v);
        AdamW.Step(p, g, m, v, step: 3, learningRate: 1e-3f, weightDecay: 0.1f);
        _ops.AdamW.Step(dp.View, dg.View, dm.View, dv.View, step: 3, learningRate: 1e-3f, weightDecay: 0.1f);
        report.Compare($"AdamW parameters [{count}]", Down(dp), p, 1e-7, 1e-6);
        report.Compare($"AdamW m [{count}]", Down(dm), m, 1e-7, 1e-6);
        report.Compare($"AdamW v [{count}]", Down(dv), v, 1e-9, 1e-6);
    }

    private void CheckAttention()
    {
        int batch = 2, seqLen = quick ? 32 : 128, heads = 4, c = 256;
        var qkv = RandomFloats(batch * seqLen * 3 * c, 26);
        var segments = new int[batch * seqLen];
        for (int i = 0; i < segments.Length; i++) segments[i] = (i % seqLen) / 48;   // packed sequences
        var att = new float[batch * heads * seqLen * seqLen];
        var output = new float[batch * seqLen * c];
        Attention.Forward(qkv, segments, batch, seqLen, heads, att, output);
        using var dqkv = Up(qkv);
        using var dseg = Up(segments);
        using var datt = accelerator.Allocate1D<float>(att.Length);
        using var dout = accelerator.Allocate1D<float>(output.Length);
        _ops.Attention.Forward(dqkv.View, dseg.View, batch, seqLen, heads, datt.View, dout.View);
        report.Compare($"attention probabilities [{batch}, {heads}, {seqLen}, {seqLen}]", Down(datt), att, 1e-6, 1e-4);
        report.Compare($"attention output [{batch}, {seqLen}, {c}]", Down(dout), output, 1e-5, 1e-4);
    }

    private void CheckTargetLogProbs()
    {
        int rows = quick ? 5 : 37, vocab = 50257;   // odd V: the NVRTC kernel's unaligned head and tail paths run
        var logits = RandomFloats(rows * vocab, 27, 8f);
        var targets = Enumerable.Range(0, rows).Select(r => r % 7 == 3 ? -1 : (r * 7919) % vocab).ToArray();
        var (logProbs, lse) = (new float[rows], new float[rows]);
        TargetLogProbs.Forward(logits, targets, vocab, logProbs, lse);
        using var dl = Up(logits);
        using var dt = Up(targets);
        using var dlp = accelerator.Allocate1D<float>(rows);
        using var dlse = accelerator.Allocate1D<float>(rows);
        _ops.TargetLogProbs.Forward(dl.View, dt.View, vocab, dlp.View, dlse.View);
        report.Compare($"ILGPU target log-probs fp32 [{rows}, {vocab}]", Down(dlp), logProbs, 1e-4, 1e-5);
        report.Compare($"ILGPU logsumexp fp32 [{rows}, {vocab}]", Down(dlse), lse, 1e-4, 1e-5);

        if (accelerator is not CudaAccelerator cuda) return;
        using var nvrtc = new NvrtcTargetLogProbs(cuda, NvrtcKernelCache.CreateDefault());
        report.Note($"NVRTC kernel {NvrtcTargetLogProbs.SourceName}: {(nvrtc.LoadedFromCache ? "loaded from" : "compiled into")} {NvrtcKernelCache.DefaultDirectory}");
        nvrtc.Forward(dl.View, dt.View, vocab, dlp.View, dlse.View);
        report.Compare($"NVRTC target log-probs fp32 [{rows}, {vocab}]", Down(dlp), logProbs, 2e-4, 1e-5);
        report.Compare($"NVRTC logsumexp fp32 [{rows}, {vocab}]", Down(dlse), lse, 2e-4, 1e-5);

        var bits = logits.Select(HalfPrecision.ToBFloat16Bits).ToArray();
        var rounded = bits.Select(HalfPrecision.FromBFloat16Bits).ToArray();
        TargetLogProbs.Forward(rounded, targets, vocab, logProbs, lse);
        using var d16 = Up(bits);
        nvrtc.Forward(d16.View, dt.View, vocab, dlp.View, dlse.View);
        report.Compare($"NVRTC target log-probs bf16 [{rows}, {vocab}]", Down(dlp), logProbs, 2e-4, 1e-5);
        report.Compare($"NVRTC logsumexp bf16 [{rows}, {vocab}]", Down(dlse), lse, 2e-4, 1e-5);
        // Offset views: the row pointers are no longer 16-byte aligned for any row.
        using var shifted = Up(bits.Prepend((ushort)0).ToArray());
        nvrtc.Forward(shifted.View.SubView(1, bits.Length), dt.View, vocab, dlp.View, dlse.View);
        report.Compare($"NVRTC target log-probs bf16, misaligned base [{rows}, {vocab}]", Down(dlp), logProbs, 2e-4, 1e-5);

        // The LM head's layout: rows padded to the row stride (the padding holds NaN, which neither kernel may use), the forward
        // on them, then the bf16 d(logits) against the CPU backward rounded to bf16 (padding and ignored rows exactly 0).
        int stride = GpuSequenceLogProbs.RowStride(vocab);
        var padded = new float[rows * stride];
        Array.Fill(padded, float.NaN);
        for (int r = 0; r < rows; r++) Array.Copy(logits, r * vocab, padded, r * stride, vocab);
        TargetLogProbs.Forward(logits, targets, vocab, logProbs, lse);
        using var dPadded = Up(padded);
        nvrtc.Forward(dPadded.View, dt.View, vocab, stride, dlp.View, dlse.View);
        report.Compare($"NVRTC target log-probs fp32, row stride {stride} [{rows}, {vocab}]", Down(dlp), logProbs, 2e-4, 1e-5);
        var dLogProbs = RandomFloats(rows, 28);
        var expected = (float[])logits.Clone();
        TargetLogProbs.Backward(expected, targets, vocab, lse, dLogProbs);   // d(logits) in place, 0 on ignored rows
        var expectedPadded = new float[rows * stride];
        for (int r = 0; r < rows; r++) Array.Copy(expected, r * vocab, expectedPadded, r * stride, vocab);
        using var dGradient = accelerator.Allocate1D<ushort>((long)rows * stride);
        using var dd = Up(dLogProbs);
        using var dLse = Up(lse);
        nvrtc.BackwardToBFloat16(dPadded.View, dt.View, vocab, stride, dLse.View, dd.View, dGradient.View);
        var gradient = Down(dGradient).Select(HalfPrecision.FromBFloat16Bits).ToArray();
        report.Compare($"NVRTC d(logits) to bf16, row stride {stride} [{rows}, {vocab}]", gradient, expectedPadded, 1e-7, 1.0 / 128);
    }
}
