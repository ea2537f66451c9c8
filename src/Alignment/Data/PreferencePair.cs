namespace DistAlign.Alignment.Data;

/// <summary>A preference pair as tokens: a⁺ (chosen) preferred to a⁻ (rejected) after the prompt x.</summary>
public sealed record PreferencePair(int[] Prompt, int[] Chosen, int[] Rejected);
