namespace Transport.Tests.Infrastructure;

/// <summary>Bounded polling for state that settles asynchronously (counters after a teardown).</summary>
public static class Eventually
{
    /// <summary>Polls until <paramref name="condition"/> holds or <paramref name="timeout"/> passes; returns the last result.</summary>
    public static async Task<bool> TrueAsync(Func<bool> condition, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!condition())
        {
            if (DateTime.UtcNow >= deadline)
            {
                return condition();
            }

            await Task.Delay(20, TestContext.Current.CancellationToken);
        }

        return true;
    }

    /// <summary>A one-line snapshot of the counters, for assertion messages.</summary>
    public static string Describe(Transport.Winsock.WinsockTransportCounters c) =>
        $"accepted={c.ConnectionsAccepted} created={c.SocketsCreated} reused={c.SocketsReused} pooled={c.PooledSockets} " +
        $"pendingDisconnects={c.PendingDisconnects} graceful={c.GracefulCloses} abortive={c.AbortiveCloses} resets={c.ConnectionResets} " +
        $"drainTimeouts={c.DrainTimeouts} timeWaitCloses={c.TimeWaitCloses} reuseDisconnects={c.ReuseDisconnects} " +
        $"disconnectFailures={c.DisconnectFailures} disconnectTimeouts={c.DisconnectTimeouts} recycledAcceptFailures={c.RecycledAcceptFailures} " +
        $"peerClosedFirst={c.PeerClosedFirst} deferFinTimeouts={c.DeferFinTimeouts} reuse={c.ReuseActive}";
}
