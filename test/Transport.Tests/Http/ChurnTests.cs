using Transport.Tests.Infrastructure;

namespace Transport.Tests.Http;

public sealed class ChurnTests
{
    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Thousands_of_connection_close_requests_all_succeed_and_reuse_sockets()
    {
        const int Requests = 2000;
        await using var server = await SampleServer.StartAsync();
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
}
