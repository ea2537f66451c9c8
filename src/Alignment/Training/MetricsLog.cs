using System.Text.Json;

namespace DistAlign.Alignment.Training;

/// <summary>The <c>metrics.jsonl</c> of a run: one JSON object per optimizer step, with a "step" field.</summary>
public static class MetricsLog
{
    /// <summary>
    /// Cuts the log back to the lines of steps ≤ <paramref name="step"/> (a resumed run redoes the later ones)
    /// and returns the last kept "elapsed_seconds" (0 when none), so the resumed clock continues from there.
    /// A last line that is not JSON (torn by a kill during the append) is dropped too.
    /// </summary>
    public static double TruncateAfter(string path, int step)
    {
        double elapsed = 0;
        var kept = new List<string>();
        if (File.Exists(path))
        {
            string[] lines = File.ReadAllLines(path);
            for (int i = 0; i < lines.Length; i++)
            {
                string line = lines[i];
                if (line.Length == 0) continue;
                JsonDocument doc;
                try
                {
                    doc = JsonDocument.Parse(line);
                }
                catch (JsonException) when (i == lines.Length - 1)
                {
                    break; // the process was killed while appending this line: a torn last line is dropped, as a later step would be
                }
                using (doc)
                {
                    if (doc.RootElement.GetProperty("step").GetInt32() > step) break;
                    kept.Add(line);
                    if (doc.RootElement.TryGetProperty("elapsed_seconds", out var e) && e.ValueKind == JsonValueKind.Number) elapsed = e.GetDouble();
                }
            }
        }
        File.WriteAllText(path, kept.Count == 0 ? "" : string.Join('\n', kept) + "\n");
        return elapsed;
    }
}
