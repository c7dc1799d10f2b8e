using Transport.Winsock;

namespace Transport.Tests.Infrastructure;

/// <summary>
/// The engine the suite's outbound factories run on: the pass's engine, as the servers' come from
/// <c>Kestrel__Transport__Winsock__Engine</c> (the sockets pass runs the outbound side on .NET's sockets
/// too; the default pass leaves it Auto, which is io_uring where it runs).
/// </summary>
internal static class OutboundEngine
{
    public static WinsockEngine Current { get; } =
        string.Equals(Environment.GetEnvironmentVariable("Kestrel__Transport__Winsock__Engine"), "Sockets", StringComparison.OrdinalIgnoreCase)
            ? WinsockEngine.Sockets
            : WinsockEngine.Auto;

    /// <summary>The default options, on <see cref="Current"/>.</summary>
    public static WinsockOutboundOptions Options() => new() { Engine = Current };
}
