using DistAlign.Alignment.Policies;
using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;
using DistAlign.Transformer.Training;

namespace DistAlign.Alignment.Training;

/// <summary>
/// Runs a <see cref="PpoTrainer"/> on a <see cref="GptPolicy"/> with a value head into an output folder: metrics.jsonl,
/// training checkpoints holding the GPT, the value head (<c>value_head.weight</c> [1, C], <c>value_head.bias</c> [1]) and
/// all AdamW moments, step and prompt cursor — resumable bit-identically (every sampling seed derives from the step).
/// </summary>
public sealed class PpoRun : CheckpointedRun
{
    public const string ValueWeightName = "value_head.weight";
    public const string ValueBiasName = "value_head.bias";
    public const string ValueAdamMName = "value_head.adam.m";
    public const string ValueAdamVName = "value_head.adam.v";

    private readonly PpoTrainer trainer;
    private readonly GptPolicy policy;
    private readonly ScalarHead head;

    /// <param name="optionsJson">the run's identity (options, model, reward model and prompt hashes)</param>
    public PpoRun(PpoTrainer trainer, GptPolicy policy, string directory, string tokenizerSpec, string optionsJson, int checkpointEvery)
        : base(directory, tokenizerSpec, optionsJson, checkpointEvery)
    {
        this.trainer = trainer;
        this.policy = policy;
        head = policy.ValueHead ?? throw new ArgumentException("PPO needs a GPT policy built with a value head");
    }

    public PpoTrainer Trainer => trainer;

    protected override int CompletedSteps => trainer.Step;
    protected override int TotalSteps => trainer.Options.Steps;
    protected override AlignmentStepReport TrainStep() => trainer.TrainStep();

    protected override void SaveCheckpoint()
    {
        int c = head.Channels;
        GptCheckpoint.SaveTraining(Directory, policy.Model, TokenizerSpec, trainer.State, OptionsJson, 2,
        [
            SafeTensor.FromFloats(ValueWeightName, head.Weight, [1, c]),
            SafeTensor.FromFloats(ValueBiasName, head.Bias, [1]),
        ],
        [
            SafeTensor.FromFloats(ValueAdamMName, head.AdamM),
            SafeTensor.FromFloats(ValueAdamVName, head.AdamV),
        ]);
    }

    protected override TrainerState LoadCheckpoint(string checkpoint)
    {
        var state = GptCheckpoint.LoadTraining(checkpoint, policy.Model).State;
        int c = head.Channels;
        string modelPath = Path.Combine(checkpoint, GptCheckpoint.ModelFileName);
        using (var file = SafeTensorsFile.Open(modelPath))
        {
            ScalarHead.ReadTensor(file, modelPath, ValueWeightName, [1, c], head.Weight);
            ScalarHead.ReadTensor(file, modelPath, ValueBiasName, [1], head.Bias);
        }
        string statePath = Path.Combine(checkpoint, GptCheckpoint.StateFileName);
        using (var file = SafeTensorsFile.Open(statePath))
        {
            ScalarHead.ReadTensor(file, statePath, ValueAdamMName, [c + 1], head.AdamM);
            ScalarHead.ReadTensor(file, statePath, ValueAdamVName, [c + 1], head.AdamV);
        }
        head.ZeroGradients();
        return state;
    }

    protected override void Restore(TrainerState state, double elapsedSeconds) => trainer.Restore(state, elapsedSeconds);
}
