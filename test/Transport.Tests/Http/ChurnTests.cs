using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

public sealed class ChurnTests
{
    private const int Requests = 2000;

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Thousands_of_connection_close_requests_all_succeed_and_reuse_sockets()
    {
        // Forced: left automatic, reuse is on only where it is native (Windows); on Linux this runs
        // through .NET's emulation, which exercises the same recycling path.
        await using var server = await SampleServer.StartAsync(configure: options => options.ReuseSockets = true);
        await server.GetPlaintextOnNewConnectionsAsync(Requests);

        var counters = server.Counters;
        Assert.True(counters.ConnectionsAccepted >= Requests, $"accepted {counters.ConnectionsAccepted}");
        Assert.True(counters.SocketsReused >= Requests / 2, $"reused {counters.SocketsReused} of {counters.ConnectionsAccepted}");
        Assert.True(counters.SocketsCreated < Requests / 2, $"created {counters.SocketsCreated}");
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.True(counters.ReuseActive);
        TestContext.Current.SendDiagnosticMessage(
            $"churn: accepted={counters.ConnectionsAccepted} created={counters.SocketsCreated} reused={counters.SocketsReused} " +
            $"pooled={counters.PooledSockets} graceful={counters.GracefulCloses} abortive={counters.AbortiveCloses} " +
            $"resets={counters.ConnectionResets} drainTimeouts={counters.DrainTimeouts} disconnectFailures={counters.DisconnectFailures} " +
            $"disconnectTimeouts={counters.DisconnectTimeouts}");
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
        if (!counters.ReuseActive)
        {
            // Each connection on the socket its accept made: nothing made ahead, nothing pooled.
            Assert.Equal(counters.ConnectionsAccepted, counters.SocketsCreated);
            Assert.Equal(0, counters.SocketsReused);
            Assert.Equal(0, counters.PooledSockets);
        }

        if (!OperatingSystem.IsWindows())
        {
            Assert.Contains("emulates socket reuse", counters.ReuseStatus, StringComparison.Ordinal);
        }

        TestContext.Current.SendDiagnosticMessage($"automatic churn: {counters.ReuseStatus}; {Eventually.Describe(counters)}");
    }
}
