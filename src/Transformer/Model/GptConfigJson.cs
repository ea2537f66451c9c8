using System.Text.Json;
using System.Text.Json.Serialization;

namespace DistAlign.Transformer.Model;

/// <summary>
/// <see cref="GptConfig"/> as JSON (checkpoint metadata, model hashes), through source-generated serialization so that
/// trimmed and NativeAOT hosts read and write it without reflection. The text is what the reflection-based serializer
/// with default options writes, byte for byte, so existing checkpoints and cache keys stay valid.
/// </summary>
public static class GptConfigJson
{
    /// <summary>The config as compact JSON (all properties, declaration order).</summary>
    public static string Serialize(GptConfig config) => JsonSerializer.Serialize(config, GptConfigJsonContext.Default.GptConfig);

    /// <summary>Parses what <see cref="Serialize"/> wrote.</summary>
    /// <exception cref="JsonException">The text is not a config object.</exception>
    public static GptConfig Deserialize(string json) =>
        JsonSerializer.Deserialize(json, GptConfigJsonContext.Default.GptConfig) ?? throw new JsonException("the config is null");
}

[JsonSerializable(typeof(GptConfig))]
internal sealed partial class GptConfigJsonContext : JsonSerializerContext;
