using System.Net;
using System.Net.Sockets;
using KestrelApp;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Teardown;

/// <summary>
/// DeferFinTimeout: after a Connection: close response the server waits for the client to close first,
/// so the TIME_WAIT lands on the client. Seen on the wire (who sent the first FIN, from the kernel's
/// TIME_WAIT table) and in the counters.
/// </summary>
public sealed class DeferredFinTests
{
    private const int Connections = 20;

    [Fact(Skip = TimeWaitSockets.Unsupported, SkipUnless = nameof(TimeWaitSockets.IsSupported), SkipType = typeof(TimeWaitSockets))]
    public async Task On_the_client_closes_first_and_the_server_keeps_no_TIME_WAIT()
    {
        await using var server = await SampleServer.StartAsync(configure: o => o.DeferFinTimeout = TimeSpan.FromSeconds(5));

        for (var i = 0; i < Connections; i++)
        {
            using var socket = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port));
            await RawHttp.SendRequestAndReadResponseAsync(socket);
            socket.Shutdown(SocketShutdown.Send);
            // The server's FIN follows the client's; no byte after the response, and no RST.
            Assert.Empty(await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
        }

        var counters = server.Counters;
        Assert.True(await Eventually.TrueAsync(() => counters.PeerClosedFirst == Connections, TimeSpan.FromSeconds(10)), $"peerClosedFirst={counters.PeerClosedFirst}");
        Assert.Equal(0, counters.DeferFinTimeouts);
        Assert.Equal(Connections, counters.GracefulCloses);
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.Equal(0, counters.TimeWaitCloses);
        Assert.Equal(0, TimeWaitSockets.CountWithLocalPort(server.Port));
    }

    [Fact(Skip = TimeWaitSockets.Unsupported, SkipUnless = nameof(TimeWaitSockets.IsSupported), SkipType = typeof(TimeWaitSockets))]
    public async Task Off_the_server_sends_the_first_FIN_and_keeps_a_TIME_WAIT_per_connection()
    {
        await using var server = await SampleServer.StartAsync();

        for (var i = 0; i < Connections; i++)
        {
            using var socket = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port));
            await RawHttp.SendRequestAndReadResponseAsync(socket);
            // The server closes without waiting for us.
            Assert.Empty(await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
        }

        Assert.True(
            await Eventually.TrueAsync(() => TimeWaitSockets.CountWithLocalPort(server.Port) >= Connections, TimeSpan.FromSeconds(10)),
            $"server-side TIME_WAIT: {TimeWaitSockets.CountWithLocalPort(server.Port)}");
        Assert.Equal(0, server.Counters.PeerClosedFirst);
        Assert.True(await Eventually.TrueAsync(() => server.Counters.TimeWaitCloses == Connections, TimeSpan.FromSeconds(10)), Eventually.Describe(server.Counters));
    }

    [Fact]
    public async Task On_a_client_that_never_closes_still_gets_the_FIN_after_the_deferral()
    {
        await using var server = await SampleServer.StartAsync(configure: o => o.DeferFinTimeout = TimeSpan.FromMilliseconds(300));
        using var socket = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port));

        await RawHttp.SendRequestAndReadResponseAsync(socket);

        // We keep our side open: the FIN comes anyway, once the deferral is over.
        Assert.Empty(await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
        var counters = server.Counters;
        Assert.True(await Eventually.TrueAsync(() => counters.DeferFinTimeouts == 1, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        Assert.Equal(0, counters.PeerClosedFirst);
        Assert.Equal(1, counters.GracefulCloses);
        Assert.Equal(0, counters.AbortiveCloses);
    }

    [Fact]
    public async Task On_keep_alive_requests_are_not_delayed_by_it()
    {
        await using var server = await SampleServer.StartAsync(configure: o => o.DeferFinTimeout = TimeSpan.FromSeconds(5));
        using var client = server.CreateKeepAliveClient(maxConnections: 1);

        for (var i = 0; i < 20; i++)
        {
            Assert.Equal(SampleHost.PlaintextBody, await client.GetByteArrayAsync("/plaintext", TestContext.Current.CancellationToken));
        }

        Assert.Equal(1, server.Counters.ConnectionsAccepted);
        Assert.Equal(0, server.Counters.DeferFinTimeouts);
    }
}
