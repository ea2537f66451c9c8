namespace DistAlign.Transformer.Model;

/// <summary>The position of a run: completed steps and the data loader's (epoch, index).</summary>
public readonly record struct TrainerState(int Step, int LoaderEpoch, int LoaderIndex);
