using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// Whether the tests run on the Windows API under Wine, where some Windows features are missing; a test
/// that cannot pass there only because of such a gap is skipped there alone, with the gap named.
/// </summary>
public static class WinePlatform
{
    /// <summary>Wine's ntdll exports wine_get_version; Windows' does not.</summary>
    public static bool IsWine { get; } =
        OperatingSystem.IsWindows()
        && NativeLibrary.TryLoad("ntdll.dll", out var ntdll)
        && NativeLibrary.TryGetExport(ntdll, "wine_get_version", out _);

    /// <summary>For SkipUnless: Windows itself, not under Wine.</summary>
    public static bool IsRealWindows => OperatingSystem.IsWindows() && !IsWine;

    public const string NotRealWindows =
        "Needs real Windows: .NET on Linux only emulates socket reuse (a new descriptor each time) and Wine 8 has no TF_REUSE_SOCKET, so neither can show what TIME_WAIT does to DisconnectEx; CI's windows-latest job runs it.";

    /// <summary>For SkipUnless: Windows, or Windows under Wine.</summary>
    public static bool IsWindowsApi => OperatingSystem.IsWindows();

    public const string NotWindowsApi =
        "Calls ws2_32.dll, which exists only on Windows (or under Wine); this run is on Linux.";

    public const string NoSocketReuse =
        "Wine 8 does not implement DisconnectEx(TF_REUSE_SOCKET): an overlapped reuse disconnect never completes, so the transport runs without reuse there.";

    public const string NoUnixSockets =
        "Wine 8 has no AF_UNIX sockets: UnixDomainSocketEndPoint throws PlatformNotSupportedException there.";

    public const string ResetMissedByBlockedSend =
        "Wine 8 does not fail a send blocked on a full send buffer when the peer resets while received bytes are still unread: the send stays pending, so no transport (Kestrel's Sockets one included) learns of the reset.";

    public const string SendNotEndedByClose =
        "Wine 8 does not end a send blocked on a full send buffer when its socket is closed (Windows completes it as aborted): the send stays pending, so a connection aborted under such a send never finishes its end.";

    public const string NoTlsCertificate =
        "Wine 8's CNG cannot make or load a certificate with its RSA key (CryptographicException 0xc1000002), so no TLS server runs there.";

    public const string ResetReadsAsEnd =
        "Wine 8 reports a peer's RST to a receive posted after it arrived as end of stream (a read of 0), so a reset cannot always be told from a FIN there.";
}

/// <summary>A fact that runs everywhere but under Wine, where the named Windows feature is missing.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class NotUnderWineFactAttribute : FactAttribute
{
    public NotUnderWineFactAttribute(
        string missingFeature,
        [CallerFilePath] string? sourceFilePath = null,
        [CallerLineNumber] int sourceLineNumber = -1)
        : base(sourceFilePath, sourceLineNumber)
    {
        Skip = missingFeature;
        SkipWhen = nameof(WinePlatform.IsWine);
        SkipType = typeof(WinePlatform);
    }
}

/// <summary>A fact about the Windows API under Wine only (what the transport does where Wine lacks a feature).</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class OnlyUnderWineFactAttribute : FactAttribute
{
    public OnlyUnderWineFactAttribute(
        string whyOnlyThere,
        [CallerFilePath] string? sourceFilePath = null,
        [CallerLineNumber] int sourceLineNumber = -1)
        : base(sourceFilePath, sourceLineNumber)
    {
        Skip = whyOnlyThere;
        SkipUnless = nameof(WinePlatform.IsWine);
        SkipType = typeof(WinePlatform);
    }
}
