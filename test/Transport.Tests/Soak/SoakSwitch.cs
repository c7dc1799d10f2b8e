using Transport.Tests.Infrastructure;

namespace Transport.Tests.Soak;

/// <summary>
/// The switch for the soak tests, which run long: off unless TRANSPORT_SOAK=1 (build/test.sh sets it
/// for its Linux stage in CI), and Linux only, since they count the process's sockets in /proc/self/fd.
/// </summary>
public static class SoakSwitch
{
    public const string Variable = "TRANSPORT_SOAK";

    /// <summary>Where build/test.sh wants the soak's figures written (optional).</summary>
    public const string ReportVariable = "TRANSPORT_SOAK_REPORT";

    public const string Off =
        "A long soak (100,000+ requests, 5,000 connections at once): runs only with TRANSPORT_SOAK=1 (build/test.sh does in CI), and only on Linux, " +
        "because it counts the process's open sockets in /proc/self/fd.";

    public static bool IsOn => Environment.GetEnvironmentVariable(Variable) == "1";

    /// <summary>For SkipUnless: the switch is on and the socket count works here.</summary>
    public static bool CanRun => IsOn && ProcessSockets.IsSupported;

    public static string? ReportPath => Environment.GetEnvironmentVariable(ReportVariable) is { Length: > 0 } path ? path : null;
}
