using System.Net.Sockets;
using Transport.Winsock.Interop;

namespace Transport.Winsock.Teardown;

/// <summary>Whether a listener recycles its sockets, and why, in words a log or /stats can show.</summary>
internal sealed record ReuseDecision(bool Active, bool Automatic, string Reason)
{
    /// <summary>Off because the platform only emulates reuse: the expected state there, not a fault.</summary>
    public bool Emulated { get; init; }

    /// <summary>
    /// Off by a self-test that failed on a platform that has reuse (a timeout under load, say): a verdict
    /// that may change, so the recycler runs the test again later.
    /// </summary>
    public bool Retestable { get; init; }

    /// <summary>The listener's decision again, with a self-test run afresh (the recycler's retest after a fallback).</summary>
    public static async Task<ReuseDecision> RetestAsync(ReuseSelfTest.ListenerKind kind)
    {
        var verdict = await ReuseSelfTest.RunAgainAsync(kind).ConfigureAwait(false);
        return verdict.Refusal is null
            ? new(true, true, $"on: the reuse self-test ({verdict.Kind}) passed")
            : new(false, true, $"off: {verdict.Refusal}") { Emulated = verdict.Emulated, Retestable = !verdict.Emulated };
    }

    /// <summary>The outbound decision again, with its self-test run afresh.</summary>
    public static async Task<ReuseDecision> RetestOutboundAsync(ReuseSelfTest.ListenerKind kind)
    {
        var verdict = await ReuseSelfTest.RunConnectAgainAsync(kind).ConfigureAwait(false);
        return verdict.Refusal is null
            ? new(true, true, $"on: the outbound reuse self-test ({kind.OutboundName}) passed; {verdict.Detail}")
            : new(false, true, $"off: {verdict.Refusal}") { Emulated = verdict.Emulated, Retestable = !verdict.Emulated };
    }

    /// <summary>
    /// For the io_uring engine, which never recycles: the options' own reason when they turn reuse off,
    /// else the engine's.
    /// </summary>
    public static ReuseDecision ForIoUring(WinsockTransportOptions options) => options switch
    {
        { MaxPooledSockets: 0 } => new(false, false, "off: MaxPooledSockets is 0"),
        { ReuseSockets: false } => new(false, false, "off: ReuseSockets = false"),
        _ => new(false, false, "off: the io_uring engine closes each connection's descriptor, and the kernel hands its number to a later accept"),
    };

    /// <summary>
    /// The outbound side's decision for sockets of <paramref name="kind"/>: forced by
    /// <see cref="WinsockOutboundOptions.ReuseSockets"/>, else the provider check (Windows) and the connect
    /// self-test, as the listener's.
    /// </summary>
    public static async Task<ReuseDecision> DecideOutboundAsync(WinsockOutboundOptions options, ReuseSelfTest.ListenerKind kind)
    {
        if (Forced(options.MaxPooledSockets, options.ReuseSockets) is { } forced)
        {
            return forced;
        }

        if (OperatingSystem.IsWindows())
        {
            using var probe = new Socket(kind.Family, SocketType.Stream, ProtocolType.Tcp);
            if (MissingDisconnectEx(probe) is { } missing)
            {
                return missing;
            }
        }

        var verdict = await ReuseSelfTest.RunConnectOnceAsync(kind).ConfigureAwait(false);
        return verdict.Refusal is null
            ? new(true, true, $"on: the outbound reuse self-test ({kind.OutboundName}) passed; {verdict.Detail}")
            : new(false, true, $"off: {verdict.Refusal}") { Emulated = verdict.Emulated, Retestable = !verdict.Emulated };
    }

    /// <summary>
    /// <see cref="WinsockTransportOptions.ReuseSockets"/> forces the answer; left null, the provider
    /// check (Windows) and the self-test decide, and a burst of failed recycles can still turn it off.
    /// </summary>
    public static async Task<ReuseDecision> DecideAsync(WinsockTransportOptions options, Socket listenSocket)
    {
        if (Forced(options.MaxPooledSockets, options.ReuseSockets) is { } forced)
        {
            return forced;
        }

        if (OperatingSystem.IsWindows() && MissingDisconnectEx(listenSocket) is { } missing)
        {
            return missing;
        }

        var verdict = await ReuseSelfTest.RunOnceAsync(ReuseSelfTest.ListenerKind.Of(listenSocket)).ConfigureAwait(false);
        return verdict.Refusal is null
            ? new(true, true, $"on: the reuse self-test ({verdict.Kind}) passed")
            : new(false, true, $"off: {verdict.Refusal}") { Emulated = verdict.Emulated, Retestable = !verdict.Emulated };
    }

    /// <summary>The decision the options make by themselves, or null when it is left to the platform.</summary>
    private static ReuseDecision? Forced(int maxPooledSockets, bool? reuseSockets) => (maxPooledSockets, reuseSockets) switch
    {
        (0, _) => new(false, false, "off: MaxPooledSockets is 0"),
        (_, true) => new(true, false, "on: forced by ReuseSockets = true"),
        (_, false) => new(false, false, "off: ReuseSockets = false"),
        _ => null,
    };

    /// <summary>Off when the socket's provider has no DisconnectEx; null when it has.</summary>
    [System.Runtime.Versioning.SupportedOSPlatform("windows")]
    private static ReuseDecision? MissingDisconnectEx(Socket socket)
    {
        var missing = WinsockExtensions.Probe(socket, WinsockExtensions.DisconnectEx);
        return missing == SocketError.Success
            ? null
            : new(false, true, $"off: the socket's Winsock provider has no DisconnectEx ({missing}); a layered provider (VPN, antivirus) may hide it");
    }
}
