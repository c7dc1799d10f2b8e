using System.Net;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Http;

/// <summary>
/// Connection: close churn. Who closes first decides a socket's fate: a server that closes first keeps
/// TIME_WAIT, which a reuse disconnect would wait out, so its sockets are closed and counted, never
/// recycled and never held against reuse; a client that closes first (a deferred FIN lets it) leaves a
/// socket that recycles at once.
/// </summary>
public sealed class ChurnTests
{
    private const int Requests = 2000;

    [Fact]
    public async Task Server_first_closes_are_never_handed_to_a_reuse_disconnect_and_reuse_stays_on()
    {
        // Forced on: left automatic, reuse is on only where it is native (Windows). On Linux this runs
        // through .NET's emulation and under Wine without TF_REUSE_SOCKET, where a reuse disconnect never
        // completes and each one tried would show as a disconnect timeout.
        var requests = WinePlatform.IsWine ? Requests / 2 : Requests;
        await using var server = await SampleServer.StartAsync(configure: options => options.ReuseSockets = true);
        await RawHttp.GetPlaintextAsync(new IPEndPoint(IPAddress.Loopback, server.Port), requests, clientClosesFirst: false);

        var counters = server.Counters;
        Assert.True(await Eventually.TrueAsync(() => counters.TimeWaitCloses == requests, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        Assert.Equal(requests, counters.GracefulCloses);
        Assert.Equal(0, counters.ReuseDisconnects);
        Assert.Equal(0, counters.PendingDisconnects);
        Assert.Equal(0, counters.DisconnectTimeouts);
        Assert.Equal(0, counters.DisconnectFailures);
        Assert.Equal(0, counters.SocketsReused);
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.True(counters.ReuseActive, counters.ReuseStatus);
        TestContext.Current.SendDiagnosticMessage($"server-first churn, {requests} requests: {Eventually.Describe(counters)}");
    }

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Client_first_closes_recycle_their_sockets()
    {
        await using var server = await SampleServer.StartAsync(configure: options =>
        {
            options.ReuseSockets = true;
            options.DeferFinTimeout = TimeSpan.FromSeconds(5);
        });
        await RawHttp.GetPlaintextAsync(new IPEndPoint(IPAddress.Loopback, server.Port), Requests, clientClosesFirst: true);

        var counters = server.Counters;
        Assert.True(await Eventually.TrueAsync(() => counters.ReuseDisconnects == Requests && counters.PendingDisconnects == 0, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        Assert.Equal(Requests, counters.PeerClosedFirst);
        Assert.Equal(0, counters.TimeWaitCloses);
        Assert.Equal(0, counters.DeferFinTimeouts);
        Assert.Equal(0, counters.DisconnectTimeouts);
        Assert.Equal(0, counters.DisconnectFailures);
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.True(counters.SocketsReused >= Requests / 2, Eventually.Describe(counters));
        Assert.True(counters.SocketsCreated < Requests / 2, Eventually.Describe(counters));
        Assert.True(counters.ReuseActive, counters.ReuseStatus);
        TestContext.Current.SendDiagnosticMessage($"client-first churn, {Requests} requests: {Eventually.Describe(counters)}");
    }

    [Fact]
    public async Task Left_automatic_reuse_follows_the_platform_and_every_request_succeeds()
    {
        await using var server = await SampleServer.StartAsync();
        await server.GetPlaintextOnNewConnectionsAsync(Requests);

        var counters = server.Counters;
        Assert.Equal(ReusePlatform.ReusesByDefault, counters.ReuseActive);
        Assert.True(await Eventually.TrueAsync(() => counters.GracefulCloses >= Requests, TimeSpan.FromSeconds(10)), Eventually.Describe(counters));
        Assert.Equal(0, counters.AbortiveCloses);
        // However HttpClient and the server race to close, nothing counts against reuse.
        Assert.Equal(0, counters.DisconnectTimeouts);
        Assert.Equal(0, counters.DisconnectFailures);
        if (!counters.ReuseActive)
        {
            // Each connection on the socket its accept made: nothing made ahead, nothing pooled.
            Assert.Equal(counters.ConnectionsAccepted, counters.SocketsCreated);
            Assert.Equal(0, counters.SocketsReused);
            Assert.Equal(0, counters.PooledSockets);
            Assert.Equal(0, counters.ReuseDisconnects);
        }

        if (counters.Engine == WinsockEngine.IoUring)
        {
            // Linux with io_uring available: Auto's choice, which never recycles.
            Assert.True(OperatingSystem.IsLinux());
            Assert.Contains("io_uring engine", counters.ReuseStatus, StringComparison.Ordinal);
        }
        else if (!OperatingSystem.IsWindows())
        {
            Assert.Contains("emulates socket reuse", counters.ReuseStatus, StringComparison.Ordinal);
        }

        TestContext.Current.SendDiagnosticMessage($"automatic churn: {counters.ReuseStatus}; {Eventually.Describe(counters)}");
    }
}
