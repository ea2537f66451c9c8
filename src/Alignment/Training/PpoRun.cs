using DistAlign.Alignment.Policies;
using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Training;

/// <summary>
/// Runs a <see cref="PpoTrainer"/> on a GPT into an output folder: metrics.jsonl, training checkpoints holding the policy
/// GPT, the value head (<c>value_head.weight</c> [1, C], <c>value_head.bias</c> [1]) and all AdamW moments, step and
/// prompt cursor — resumable bit-identically (every sampling seed derives from the step). With a separate value model
/// (<see cref="PolicyWithValueModel"/>) its backbone is saved too, flat: <c>value_model.parameters</c> in the model file,
/// <c>value_model.adam.m</c>/<c>.v</c> in the state file. The GPT policies (<see cref="GptPolicy"/>) may run
/// on any device: a checkpoint first copies their engine state to the host models (nothing to copy on the CPU),
/// a restore copies it back up; the value heads live on the host either way. A <see cref="TiltPolicy"/> with its value head
/// checkpoints its frozen backbone, θ (b and any head adapter) and θ's moments (<see cref="PolicyCheckpoint"/>) beside the head.
/// </summary>
public sealed class PpoRun : CheckpointedRun
{
    public const string ValueWeightName = "value_head.weight";
    public const string ValueBiasName = "value_head.bias";
    public const string ValueAdamMName = "value_head.adam.m";
    public const string ValueAdamVName = "value_head.adam.v";
    public const string ValueModelName = "value_model.parameters";
    public const string ValueModelAdamMName = "value_model.adam.m";
    public const string ValueModelAdamVName = "value_model.adam.v";

    private readonly PpoTrainer trainer;
    private readonly IPolicy policy;
    private readonly GptPolicy? valueModel;
    private readonly ScalarHead head;

    /// <param name="policy">a GPT policy with a value head (<see cref="GptPolicy"/>), or a <see cref="PolicyWithValueModel"/> of two GPT policies</param>
    /// <param name="optionsJson">the run's identity (options, model, reward model and prompt hashes)</param>
    public PpoRun(PpoTrainer trainer, IValuePolicy policy, string directory, string tokenizerSpec, string optionsJson, int checkpointEvery)
        : base(directory, tokenizerSpec, optionsJson, checkpointEvery)
    {
        this.trainer = trainer;
        switch (policy)
        {
            case GptPolicy { ValueHead: { } shared } gpt:
                this.policy = gpt;
                head = shared;
                break;
            case TiltPolicy { ValueHead: { } tiltHead } tilt:
                this.policy = tilt;
                head = tiltHead;
                break;
            case PolicyWithValueModel { Policy: GptPolicy gpt } separate:
                this.policy = gpt;
                valueModel = separate.ValueModel;
                head = separate.ValueModel.ValueHead!;
                break;
            default:
                throw new ArgumentException("PPO on the GPT needs a GPT or tilt policy with a value head, or a GPT policy with a separate GPT value model");
        }
    }

    public PpoTrainer Trainer => trainer;

    protected override int CompletedSteps => trainer.Step;
    protected override int TotalSteps => trainer.Options.Steps;
    protected override AlignmentStepReport TrainStep() => trainer.TrainStep();

    private (float[] M, float[] V)? gatheredMoments;
    protected override void PrepareCheckpoint() => gatheredMoments = PolicyCheckpoint.GatherMoments(policy);

    protected override void SaveCheckpoint()
    {
        valueModel?.CopyToHost();
        int c = head.Channels;
        List<SafeTensor> model =
        [
            SafeTensor.FromFloats(ValueWeightName, head.Weight, [1, c]),
            SafeTensor.FromFloats(ValueBiasName, head.Bias, [1]),
        ];
        List<SafeTensor> state =
        [
            SafeTensor.FromFloats(ValueAdamMName, head.AdamM),
            SafeTensor.FromFloats(ValueAdamVName, head.AdamV),
        ];
        if (valueModel is not null)
        {
            var v = valueModel.Model;
            model.Add(SafeTensor.FromFloats(ValueModelName, v.Parameters));
            state.Add(SafeTensor.FromFloats(ValueModelAdamMName, v.AdamM));
            state.Add(SafeTensor.FromFloats(ValueModelAdamVName, v.AdamV));
        }
        PolicyCheckpoint.SaveTraining(policy, Directory, TokenizerSpec, trainer.State, OptionsJson, model, state, gatheredMoments);
    }

    protected override TrainerState LoadCheckpoint(string checkpoint)
    {
        var state = PolicyCheckpoint.LoadTraining(policy, checkpoint);
        var v = valueModel?.Model;
        int c = head.Channels;
        string modelPath = Path.Combine(checkpoint, GptCheckpoint.ModelFileName);
        using (var file = SafeTensorsFile.Open(modelPath))
        {
            ScalarHead.ReadTensor(file, modelPath, ValueWeightName, [1, c], head.Weight);
            ScalarHead.ReadTensor(file, modelPath, ValueBiasName, [1], head.Bias);
            if (v is not null) ScalarHead.ReadTensor(file, modelPath, ValueModelName, [v.Parameters.Length], v.Parameters);
        }
        string statePath = Path.Combine(checkpoint, GptCheckpoint.StateFileName);
        using (var file = SafeTensorsFile.Open(statePath))
        {
            ScalarHead.ReadTensor(file, statePath, ValueAdamMName, [c + 1], head.AdamM);
            ScalarHead.ReadTensor(file, statePath, ValueAdamVName, [c + 1], head.AdamV);
            if (v is not null)
            {
                ScalarHead.ReadTensor(file, statePath, ValueModelAdamMName, [v.AdamM.Length], v.AdamM);
                ScalarHead.ReadTensor(file, statePath, ValueModelAdamVName, [v.AdamV.Length], v.AdamV);
                v.ZeroGradients();
                valueModel!.CopyFromHost();
            }
        }
        head.ZeroGradients();
        return state;
    }

    protected override void Restore(TrainerState state, double elapsedSeconds) => trainer.Restore(state, elapsedSeconds);
}
