using DistAlign.Alignment.Policies;
using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Training;

/// <summary>
/// What the model file and a training checkpoint of a run hold of its policy, for the two kinds a run trains:
/// a GPT policy (<see cref="GptPolicy"/>: every weight and its AdamW moments, copied from the device first on a GPU) or a
/// tilt policy (<see cref="TiltPolicy"/>: the frozen backbone's weights, which the run never writes, plus θ = b (and a head adapter's A, B) and θ's moments).
/// A tilt model file is the backbone plus <c>logit_offset</c> (and <c>lm_head_adapter.a</c>/<c>.b</c>), so <c>sample</c> and <c>align --train tilt</c> read it back.
/// </summary>
public static class PolicyCheckpoint
{
    /// <summary>Refuses a policy that a run cannot checkpoint.</summary>
    public static void CheckSupported(IPolicy policy)
    {
        if (policy is not (GptPolicy or TiltPolicy))
            throw new ArgumentException($"a run checkpoints a GPT policy or a tilt policy, not a {policy?.GetType().Name ?? "null"}");
    }

    /// <summary>The GPT the model file's weights come from.</summary>
    public static Gpt ModelOf(IPolicy policy) => policy switch
    {
        GptPolicy g => g.Model,
        TiltPolicy t => t.Backbone,
        _ => throw new ArgumentException($"no GPT behind a {policy?.GetType().Name ?? "null"}"),
    };

    /// <summary>Writes the trained model: the GPT's weights, and b for a tilt policy.</summary>
    public static void SaveModel(IPolicy policy, string path, string tokenizerSpec)
    {
        if (policy is GptPolicy g) g.CopyToHost();
        GptCheckpoint.SaveModel(path, ModelOf(policy), tokenizerSpec, policy is TiltPolicy t ? [..t.ModelTensors()] : null);
    }

    /// <summary><see cref="GptCheckpoint.SaveTraining"/> for the policy, with a head's tensors (<paramref name="model"/>, <paramref name="state"/>) beside it.</summary>
    /// <param name="moments">a GPT whose AdamW state is sharded (ZeRO-1): the whole state, from <see cref="GatherMoments"/></param>
    public static void SaveTraining(IPolicy policy, string directory, string tokenizerSpec, TrainerState trainerState, string optionsJson,
                                    IEnumerable<SafeTensor>? model = null, IEnumerable<SafeTensor>? state = null, (float[] M, float[] V)? moments = null)
    {
        CheckSupported(policy);
        if (policy is GptPolicy g) g.CopyToHost();
        var tilt = policy as TiltPolicy;
        GptCheckpoint.SaveTraining(directory, ModelOf(policy), tokenizerSpec, trainerState, optionsJson, 2,
            [.. tilt?.ModelTensors() ?? [], .. model ?? []],
            [.. tilt?.OptimizerStateTensors() ?? [], .. state ?? []],
            frozenModel: tilt is not null, moments: moments);
    }

    /// <summary>
    /// A GPT policy's whole AdamW state when its model keeps a shard of it (ZeRO-1; a collective every rank calls at the same
    /// step), otherwise null (the model's own moments are written).
    /// </summary>
    public static (float[] M, float[] V)? GatherMoments(IPolicy policy) =>
        policy is GptPolicy { Model.OptimizerShard: not null } g ? g.Model.GatherMoments() : null;

    /// <summary>Restores the policy from a checkpoint written by <see cref="SaveTraining"/> and returns the trainer position.</summary>
    public static TrainerState LoadTraining(IPolicy policy, string checkpoint)
    {
        CheckSupported(policy);
        var (trainerState, _) = GptCheckpoint.LoadTraining(checkpoint, ModelOf(policy), frozenModel: policy is TiltPolicy);
        switch (policy)
        {
            case GptPolicy g:
                g.CopyFromHost();
                break;
            case TiltPolicy t:
                string modelPath = Path.Combine(checkpoint, GptCheckpoint.ModelFileName), statePath = Path.Combine(checkpoint, GptCheckpoint.StateFileName);
                using (var model = SafeTensorsFile.Open(modelPath))
                using (var state = SafeTensorsFile.Open(statePath))
                    t.ReadCheckpoint(model, modelPath, state, statePath);
                break;
        }
        return trainerState;
    }
}
