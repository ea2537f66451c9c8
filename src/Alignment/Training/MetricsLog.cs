using System.Text.Json;

namespace DistAlign.Alignment.Training;

/// <summary>The <c>metrics.jsonl</c> of a run: one JSON object per optimizer step, with a "step" field.</summary>
public static class MetricsLog
{
    /// <summary>
    /// Cuts the log back to the lines of steps ≤ <paramref name="step"/> (a resumed run redoes the later ones)
    /// and returns the last kept "elapsed_seconds" (0 when none), so the resumed clock continues from there.
    /// </summary>
    public static double TruncateAfter(string path, int step)
    {
        double elapsed = 0;
        var kept = new List<string>();
        if (File.Exists(path))
            foreach (var line in File.ReadAllLines(path))
            {
                if (line.Length == 0) continue;
                using var doc = JsonDocument.Parse(line);
                if (doc.RootElement.GetProperty("step").GetInt32() > step) break;
                kept.Add(line);
                if (doc.RootElement.TryGetProperty("elapsed_seconds", out var e) && e.ValueKind == JsonValueKind.Number) elapsed = e.GetDouble();
            }
        File.WriteAllText(path, kept.Count == 0 ? "" : string.Join('\n', kept) + "\n");
        return elapsed;
    }
}
