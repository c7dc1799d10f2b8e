using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.Teardown;

namespace Transport.Tests.Teardown;

public sealed class ReuseDecisionTests
{
    [Theory]
    [InlineData(true, true, "on: forced by ReuseSockets = true")]
    [InlineData(false, false, "off: ReuseSockets = false")]
    public async Task The_option_forces_the_decision_and_no_fallback(bool forced, bool active, string reason)
    {
        using var listenSocket = Listening();
        var decision = await ReuseDecision.DecideAsync(new WinsockTransportOptions { ReuseSockets = forced }, listenSocket);
        Assert.Equal(new ReuseDecision(active, Automatic: false, reason), decision);
    }

    [Fact]
    public async Task A_pool_of_zero_sockets_means_no_reuse()
    {
        using var listenSocket = Listening();
        var decision = await ReuseDecision.DecideAsync(new WinsockTransportOptions { MaxPooledSockets = 0 }, listenSocket);
        Assert.False(decision.Active);
        Assert.Contains("MaxPooledSockets", decision.Reason, StringComparison.Ordinal);
    }

    [Fact]
    public async Task Left_automatic_the_self_test_decides()
    {
        using var listenSocket = Listening();
        var decision = await ReuseDecision.DecideAsync(new WinsockTransportOptions(), listenSocket);

        Assert.True(decision.Automatic);
        if (Infrastructure.WinePlatform.IsWine)
        {
            // Wine 8 never completes an overlapped DisconnectEx: the self-test must catch that.
            Assert.False(decision.Active);
            Assert.Contains("DisconnectEx", decision.Reason, StringComparison.Ordinal);
        }
        else if (OperatingSystem.IsWindows())
        {
            Assert.Equal(new ReuseDecision(true, Automatic: true, "on: the reuse self-test (IPv4) passed"), decision);
        }
        else
        {
            // .NET on Linux accepts into a new descriptor and swaps it in: reuse there would only cost.
            Assert.False(decision.Active);
            Assert.Contains("emulates socket reuse", decision.Reason, StringComparison.Ordinal);
        }
    }

    [Theory(Skip = Ipv6Loopback.Unavailable, SkipUnless = nameof(Ipv6Loopback.IsAvailable), SkipType = typeof(Ipv6Loopback))]
    [InlineData(AddressFamily.InterNetwork, false, "IPv4")]
    [InlineData(AddressFamily.InterNetworkV6, false, "IPv6")]
    [InlineData(AddressFamily.InterNetworkV6, true, "IPv6 dual-mode, IPv4 clients")]
    public async Task The_self_test_runs_on_the_listeners_own_kind_of_socket(AddressFamily family, bool dualMode, string kind)
    {
        using var listenSocket = new Socket(family, SocketType.Stream, ProtocolType.Tcp);
        if (dualMode)
        {
            listenSocket.DualMode = true;
        }

        // Dual-mode on the IPv4-mapped loopback: the listener takes IPv4 clients without a wildcard address.
        listenSocket.Bind(new IPEndPoint(family == AddressFamily.InterNetwork ? IPAddress.Loopback : dualMode ? IPAddress.Loopback.MapToIPv6() : IPAddress.IPv6Loopback, 0));
        listenSocket.Listen();
        Assert.Equal(kind, ReuseSelfTest.ListenerKind.Of(listenSocket).ToString());

        var decision = await ReuseDecision.DecideAsync(new WinsockTransportOptions(), listenSocket);
        if (WinePlatform.IsWine)
        {
            // The test got as far as the reuse disconnect on a socket of this kind.
            Assert.Contains($"reuse self-test ({kind}) failed: the reuse disconnect", decision.Reason, StringComparison.Ordinal);
        }
        else if (OperatingSystem.IsWindows())
        {
            Assert.Equal(new ReuseDecision(true, Automatic: true, $"on: the reuse self-test ({kind}) passed"), decision);
        }
        else
        {
            // Declined only after an accept on a socket of this kind went through and got a new handle.
            Assert.True(decision.Emulated, decision.Reason);
            Assert.Contains($"an accept into a given {kind} socket got a new handle", decision.Reason, StringComparison.Ordinal);
        }
    }

    [Fact]
    public async Task Reuse_left_off_is_logged_once_at_the_level_its_cause_deserves()
    {
        var log = new CapturedLog();
        // The sockets engine's reuse decision (the io_uring engine never recycles, and says so in ReuseStatus).
        await using (var server = await SampleServer.StartAsync(
            configure: options => options.Engine = WinsockEngine.Sockets,
            configureBuilder: builder => builder.Logging.AddProvider(log).AddFilter<CapturedLog>("Transport.Winsock", LogLevel.Trace)))
        {
            await server.GetPlaintextOnNewConnectionsAsync(1);
        }

        var off = log.Entries.Where(e => e.EventId.Id == 14).ToList();
        var notNative = log.Entries.Where(e => e.EventId.Id == 17).ToList();
        if (WinePlatform.IsWine)
        {
            // A platform that claims reuse and fails it: a warning.
            Assert.Equal(LogLevel.Warning, Assert.Single(off).Level);
            Assert.Empty(notNative);
        }
        else if (OperatingSystem.IsWindows())
        {
            Assert.Empty(off);
            Assert.Empty(notNative);
        }
        else
        {
            // Emulated reuse declined is the expected state on Linux: Debug, as quiet as Kestrel's transports.
            var entry = Assert.Single(notNative);
            Assert.Equal(LogLevel.Debug, entry.Level);
            Assert.Equal("ReuseNotNative", entry.EventId.Name);
            Assert.Contains("emulates socket reuse", entry.Message, StringComparison.Ordinal);
            Assert.Empty(off);
        }
    }

    private static Socket Listening()
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        socket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        socket.Listen();
        return socket;
    }
}
