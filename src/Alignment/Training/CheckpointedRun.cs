using DistAlign.Engine.SafeTensors;
using DistAlign.Transformer.Model;

namespace DistAlign.Alignment.Training;

/// <summary>
/// A training run in an output folder: <c>metrics.jsonl</c> (one JSON line per step), step checkpoints
/// (<see cref="GptCheckpoint"/>'s step folders and atomic <c>latest</c>) every N steps and at the end, and a
/// resume that refuses other settings and continues bit-identically. Subclasses say how to train one step
/// and how to save and restore their state.
/// </summary>
public abstract class CheckpointedRun
{
    private readonly int checkpointEvery;

    protected string Directory { get; }
    protected string TokenizerSpec { get; }
    /// <summary>The run's identity (options, model hash, data hash): a resume with any other is refused.</summary>
    protected string OptionsJson { get; }

    public string MetricsPath => Path.Combine(Directory, AlignmentTrainer.MetricsFileName);

    /// <summary>
    /// False on the ranks of a data-parallel job other than rank 0: they train and restore like rank 0 but write
    /// neither metrics nor checkpoints (rank 0's files are the run's).
    /// </summary>
    public bool WritesFiles { get; init; } = true;

    protected CheckpointedRun(string directory, string tokenizerSpec, string optionsJson, int checkpointEvery)
    {
        if (checkpointEvery < 1) throw new ArgumentException($"checkpoint interval must be ≥ 1 (got {checkpointEvery})");
        Directory = Path.GetFullPath(directory);
        TokenizerSpec = tokenizerSpec;
        OptionsJson = optionsJson;
        this.checkpointEvery = checkpointEvery;
    }

    /// <summary>Steps completed so far.</summary>
    protected abstract int CompletedSteps { get; }
    /// <summary>Steps the run is configured for.</summary>
    protected abstract int TotalSteps { get; }
    protected abstract AlignmentStepReport TrainStep();
    protected abstract void SaveCheckpoint();
    /// <summary>Loads weights and moments from <paramref name="checkpoint"/> and returns the trainer position saved there.</summary>
    protected abstract TrainerState LoadCheckpoint(string checkpoint);
    protected abstract void Restore(TrainerState state, double elapsedSeconds);

    /// <summary>
    /// Before a checkpoint is due, on every rank of a data-parallel job (the writer and the others): the collective part of
    /// saving, such as gathering a sharded AdamW state (ZeRO-1). Nothing by default.
    /// </summary>
    protected virtual void PrepareCheckpoint() { }

    /// <summary>
    /// Restores the latest checkpoint in the folder when <paramref name="resume"/> (returns its path, or null when
    /// there is none); refuses to start over a folder that already holds a run without <paramref name="resume"/>,
    /// and to resume one written with other settings (checked before any weight is touched). metrics.jsonl is cut
    /// back to the checkpoint's step, so steps redone after a crash are not listed twice.
    /// </summary>
    public string? Start(bool resume)
    {
        string? latest = GptCheckpoint.LatestTraining(Directory);
        if (latest is not null && !resume)
            throw new ArgumentException($"{Directory} already holds a run ({latest}); pass --resume to continue it or choose another output folder");
        if (latest is null)
        {
            if (!WritesFiles) return null;
            System.IO.Directory.CreateDirectory(Directory);
            File.WriteAllText(MetricsPath, "");
            return null;
        }
        string saved = SavedOptions(latest);
        if (saved != OptionsJson)
            throw new CheckpointMismatchException($"{latest} was written with different settings; resume with the same flags and data:\n  saved: {saved}\n  now:   {OptionsJson}");
        var state = LoadCheckpoint(latest);
        Restore(state, WritesFiles ? MetricsLog.TruncateAfter(MetricsPath, state.Step) : 0);
        return latest;
    }

    /// <summary>One step: train, append its metrics line, checkpoint when due.</summary>
    public AlignmentStepReport Step()
    {
        var report = TrainStep();
        bool due = report.Step % checkpointEvery == 0 || report.Step == TotalSteps;
        if (due) PrepareCheckpoint();
        if (!WritesFiles) return report;
        File.AppendAllText(MetricsPath, AlignmentTrainer.ToJsonLine(report) + "\n");
        if (due) SaveCheckpoint();
        return report;
    }

    /// <summary>Steps to the end, calling <paramref name="onStep"/> after each.</summary>
    public void RunToEnd(Action<AlignmentStepReport>? onStep = null)
    {
        while (CompletedSteps < TotalSteps)
        {
            var report = Step(); // not inside onStep?.Invoke(…): a null callback would skip evaluating it
            onStep?.Invoke(report);
        }
    }

    private static string SavedOptions(string checkpoint)
    {
        using var state = SafeTensorsFile.Open(Path.Combine(checkpoint, GptCheckpoint.StateFileName));
        return state.Metadata.TryGetValue("options", out var o) ? o : "{}";
    }
}
