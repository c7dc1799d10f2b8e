namespace Transport.Tests.Infrastructure;

/// <summary>
/// Where the transport recycles sockets when left to decide (<c>ReuseSockets = null</c>): only where the
/// platform really reuses a socket handle, which is Windows. On Linux .NET emulates reuse (a new
/// descriptor each time), so the self-test declines it; under Wine the reuse disconnect never completes.
/// Tests of the recycling path itself force reuse on with <c>ReuseSockets = true</c>, which works on
/// Linux through the emulation.
/// </summary>
public static class ReusePlatform
{
    public static bool ReusesByDefault { get; } = OperatingSystem.IsWindows() && !WinePlatform.IsWine;

    /// <summary>For tests that run under Wine too: reuse forced on, except under Wine, where it cannot work.</summary>
    public static bool? ForcedWhereItWorks => WinePlatform.IsWine ? null : true;
}
