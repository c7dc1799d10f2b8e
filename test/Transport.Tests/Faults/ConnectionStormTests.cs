using System.Collections.Concurrent;
using System.Net;
using System.Text;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Faults;

/// <summary>
/// A burst of short connections far larger than the transport's posted accepts and reuse pool: every
/// connection is still served and ended gracefully, the pool stays capped, the teardown work settles, and
/// the listener is left in a state that serves a second burst just as well.
/// </summary>
public sealed class ConnectionStormTests
{
    private const int PendingAccepts = 2;
    private const int MaxPooledSockets = 4;
    private const int Connections = 300;
    private const int Concurrency = 64;
    private static readonly TimeSpan PerConnection = TimeSpan.FromSeconds(20);
    private static readonly TimeSpan Settle = TimeSpan.FromSeconds(15);

    [Fact]
    public async Task Storm_that_exhausts_the_pool_serves_every_connection_and_settles_then_a_second_storm_does_too()
    {
        await using var server = await SampleServer.StartAsync(configure: options =>
        {
            options.PendingAccepts = PendingAccepts;
            options.MaxPooledSockets = MaxPooledSockets;
        });
        var counters = server.Counters;
        var endPoint = new IPEndPoint(IPAddress.Loopback, server.Port);

        await StormAsync(endPoint);
        await AssertSettledAsync(counters, Connections);
        // Far more sockets than the accepts and the pool together could ever hold: the storm outgrew the pool.
        Assert.True(counters.SocketsCreated > PendingAccepts + MaxPooledSockets, Eventually.Describe(counters));
        var createdAfterFirst = counters.SocketsCreated;

        // Nothing is stuck: a second storm on the same listener is served in full too.
        await StormAsync(endPoint);
        await AssertSettledAsync(counters, 2 * Connections);
        Assert.True(counters.SocketsCreated > createdAfterFirst, Eventually.Describe(counters));
        TestContext.Current.SendDiagnosticMessage($"storm: {Eventually.Describe(counters)} reuse={counters.ReuseActive}");
    }

    private static async Task StormAsync(IPEndPoint endPoint)
    {
        var failures = new ConcurrentQueue<string>();
        var served = 0;
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(TimeSpan.FromSeconds(90));
        var storm = Parallel.ForEachAsync(
            Enumerable.Range(0, Connections),
            new ParallelOptions { MaxDegreeOfParallelism = Concurrency, CancellationToken = cts.Token },
            async (i, _) =>
            {
                try
                {
                    using var client = await RawClient.ConnectAsync(endPoint);
                    await RawClient.SendAsync(client, $"GET /plaintext HTTP/1.1\r\nHost: storm-{i}\r\nConnection: close\r\n\r\n");
                    // Throws on a reset or after the bound; returns only after the server's FIN.
                    var response = Encoding.ASCII.GetString(await RawClient.ReadToFinAsync(client, PerConnection));
                    if (response.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal) && response.EndsWith("\r\n\r\nHello, World!", StringComparison.Ordinal))
                    {
                        Interlocked.Increment(ref served);
                    }
                    else
                    {
                        failures.Enqueue($"connection {i}: unexpected response '{response}'");
                    }
                }
                catch (Exception ex) when (ex is IOException or System.Net.Sockets.SocketException or OperationCanceledException)
                {
                    failures.Enqueue($"connection {i}: {ex.GetType().Name}: {ex.Message}");
                }
            });
        await storm.WaitAsync(TimeSpan.FromSeconds(120), TestContext.Current.CancellationToken);

        Assert.True(failures.IsEmpty, $"{failures.Count} of {Connections} failed, e.g. {string.Join(" | ", failures.Take(5))}");
        Assert.Equal(Connections, served);
    }

    private static async Task AssertSettledAsync(WinsockTransportCounters counters, int expected)
    {
        // Every connection ends with a FIN both ways; its socket is recycled (bounded by the pool) or closed.
        var settled = await Eventually.TrueAsync(
            () => counters.GracefulCloses >= expected && counters.PendingDisconnects == 0,
            Settle);
        Assert.True(settled, Eventually.Describe(counters));
        Assert.True(counters.ConnectionsAccepted >= expected, Eventually.Describe(counters));
        Assert.InRange(counters.PooledSockets, 0, MaxPooledSockets);
        Assert.Equal(0, counters.AbortiveCloses);
        Assert.Equal(0, counters.ConnectionResets);
        Assert.Equal(0, counters.DrainTimeouts);
    }
}
