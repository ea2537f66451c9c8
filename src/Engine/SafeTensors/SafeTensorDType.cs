namespace DistAlign.Engine.SafeTensors;

/// <summary>Element types this reader and writer support, with their safetensors header names.</summary>
public enum SafeTensorDType
{
    /// <summary>IEEE 754 binary32, header name <c>F32</c>.</summary>
    F32,

    /// <summary>IEEE 754 binary16, header name <c>F16</c>.</summary>
    F16,

    /// <summary>bfloat16 (upper 16 bits of a binary32), header name <c>BF16</c>.</summary>
    BF16,

    /// <summary>Signed 32-bit integer, header name <c>I32</c>.</summary>
    I32,

    /// <summary>Signed 64-bit integer, header name <c>I64</c>.</summary>
    I64,
}

/// <summary>Sizes and header names of <see cref="SafeTensorDType"/> values.</summary>
public static class SafeTensorDTypes
{
    /// <summary>The header names this library accepts, for error messages.</summary>
    public const string SupportedNames = "F32, F16, BF16, I32, I64";

    /// <summary>Bytes per element.</summary>
    public static int SizeInBytes(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F32 or SafeTensorDType.I32 => 4,
        SafeTensorDType.F16 or SafeTensorDType.BF16 => 2,
        SafeTensorDType.I64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown safetensors dtype."),
    };

    /// <summary>The name written in the header (<c>"F32"</c>, <c>"BF16"</c>, …).</summary>
    public static string HeaderName(this SafeTensorDType dtype) => dtype switch
    {
        SafeTensorDType.F32 => "F32",
        SafeTensorDType.F16 => "F16",
        SafeTensorDType.BF16 => "BF16",
        SafeTensorDType.I32 => "I32",
        SafeTensorDType.I64 => "I64",
        _ => throw new ArgumentOutOfRangeException(nameof(dtype), dtype, "Unknown safetensors dtype."),
    };

    /// <summary>Parses a header name (case-sensitive, as the format requires).</summary>
    public static bool TryParse(string headerName, out SafeTensorDType dtype)
    {
        switch (headerName)
        {
            case "F32": dtype = SafeTensorDType.F32; return true;
            case "F16": dtype = SafeTensorDType.F16; return true;
            case "BF16": dtype = SafeTensorDType.BF16; return true;
            case "I32": dtype = SafeTensorDType.I32; return true;
            case "I64": dtype = SafeTensorDType.I64; return true;
            default: dtype = default; return false;
        }
    }
}
