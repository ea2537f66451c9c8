using System.Globalization;
using DistAlign.Transformer.Model;

namespace DistAlign.Transformer.Training;

/// <summary>
/// A loss or gradient that stopped being finite. The trainers throw it after the backward pass and before the
/// optimizer, so the weights, the AdamW moments and every checkpoint on disk are those of the last good step.
/// The message names the step and the tensor: <c>loss</c>, or the parameter whose gradient holds the first
/// NaN/Inf in layout order (e.g. <c>h.3.attn.c_attn.weight</c>).
/// </summary>
public sealed class NonFiniteValueException : Exception
{
    /// <summary>A non-finite value described in words (<see cref="Tensor"/> is then <paramref name="where"/>).</summary>
    public NonFiniteValueException(int step, string where) : this(step, where, where, null, "")
    {
    }

    private NonFiniteValueException(int step, string where, string tensor, NonFiniteElement? element, string cause)
        : base($"step {step}: {where} is not finite (NaN or Inf){cause}; training stopped before applying this step, the last checkpoint is intact")
    {
        Step = step;
        Where = where;
        Tensor = tensor;
        Element = element;
    }

    /// <summary>The 1-based step that produced the value (it was not applied).</summary>
    public int Step { get; }

    /// <summary>What was not finite, in words (e.g. <c>the gradient of 'h.0.mlp.c_fc.weight' (element 3 is NaN)</c>).</summary>
    public string Where { get; }

    /// <summary>The tensor: <c>loss</c> for a loss, or the parameter whose gradient was not finite.</summary>
    public string Tensor { get; }

    /// <summary>The first non-finite gradient element (or, for a loss, the first non-finite weight), when there is one.</summary>
    public NonFiniteElement? Element { get; }

    /// <summary>A non-finite loss; <paramref name="parameter"/> is the first non-finite weight, when one is (the likely cause).</summary>
    public static NonFiniteValueException ForLoss(int step, string lossName, NonFiniteElement? parameter = null) =>
        new(step, lossName, "loss", parameter, parameter is { } p ? $", because weight {p} already is" : "");

    /// <summary>A non-finite gradient at <paramref name="element"/> (null: the norm overflowed but no single element is NaN/Inf).</summary>
    public static NonFiniteValueException ForGradient(int step, NonFiniteElement? element) =>
        element is { } e
            ? new(step, $"the gradient of {e}", e.Tensor, e, "")
            : new(step, "the gradient norm (every element is finite, their squares overflow)", "gradient norm", null, "");
}
