using System.Net;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

/// <summary>
/// The path without reuse: fresh sockets, a graceful half-close, then close. It is what runs when
/// ReuseSockets is false, and what the self-test falls back to where reuse is broken (Wine).
/// </summary>
public sealed class NoReuseTests
{
    [Fact]
    public async Task With_reuse_forced_off_churn_is_served_on_fresh_sockets_each_ending_with_a_fin()
    {
        const int Requests = 500;
        await using var server = await SampleServer.StartAsync(configure: options => options.ReuseSockets = false);
        await server.GetPlaintextOnNewConnectionsAsync(Requests);

        await AssertFinOnGracefulEndAsync(server);
        var counters = server.Counters;
        Assert.False(counters.ReuseActive);
        Assert.Equal("off: ReuseSockets = false", counters.ReuseStatus);
        Assert.Equal(0, counters.SocketsReused);
        Assert.Equal(0, counters.PooledSockets);
        Assert.True(counters.SocketsCreated > Requests, Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
    }

    [OnlyUnderWineFact("Runs only under Wine, the one platform here where socket reuse is broken; elsewhere ChurnTests covers reuse.")]
    public async Task Where_reuse_is_broken_the_self_test_turns_it_off_and_thousands_of_requests_succeed()
    {
        const int Requests = 2000;
        await using var server = await SampleServer.StartAsync();
        await server.GetPlaintextOnNewConnectionsAsync(Requests);

        await AssertFinOnGracefulEndAsync(server);
        var counters = server.Counters;
        Assert.False(counters.ReuseActive);
        Assert.StartsWith("off: the reuse self-test (IPv4) failed", counters.ReuseStatus, StringComparison.Ordinal);
        Assert.Equal(0, counters.SocketsReused);
        Assert.True(counters.ConnectionsAccepted >= Requests, Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
        TestContext.Current.SendDiagnosticMessage($"wine: {counters.ReuseStatus}; {Eventually.Describe(counters)}");
    }

    [OnlyUnderWineFact("Runs only under Wine, where a reuse disconnect really hangs; elsewhere it completes at once.")]
    public async Task Where_reuse_disconnects_hang_forced_reuse_times_each_out_and_keeps_serving()
    {
        const int Requests = 100;
        await using var server = await SampleServer.StartAsync(configure: options =>
        {
            options.ReuseSockets = true;
            options.DisconnectTimeout = TimeSpan.FromMilliseconds(200);
            // HttpClient then closes first: passive closes, every one handed to a reuse disconnect.
            options.DeferFinTimeout = TimeSpan.FromSeconds(2);
        });
        await server.GetPlaintextOnNewConnectionsAsync(Requests);

        // Every recycle hangs, is cut off at the timeout, closed and counted; none holds the pool.
        var counters = server.Counters;
        Assert.True(await Eventually.TrueAsync(() => counters.PendingDisconnects == 0 && counters.DisconnectTimeouts == Requests, TimeSpan.FromSeconds(20)), Eventually.Describe(counters));
        Assert.Equal(Requests, counters.ReuseDisconnects);
        Assert.Equal(0, counters.TimeWaitCloses);
        Assert.True(counters.ReuseActive, "forced reuse never falls back");
        Assert.Equal(0, counters.SocketsReused);
        Assert.Equal(0, counters.PooledSockets);
        Assert.Equal(0, counters.AbortiveCloses);
    }

    // A raw request with Connection: close: the whole response, then a FIN (a read of 0), never an RST.
    private static async Task AssertFinOnGracefulEndAsync(SampleServer server)
    {
        using var socket = await RawClient.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port));
        await RawClient.SendAsync(socket, "GET /plaintext HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        var response = System.Text.Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(socket, TimeSpan.FromSeconds(10)));
        Assert.StartsWith("HTTP/1.1 200 OK", response, StringComparison.Ordinal);
        Assert.EndsWith("Hello, World!", response, StringComparison.Ordinal);
    }
}
