using System.Net;
using System.Net.Sockets;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;

namespace Transport.Tests.Outbound;

/// <summary>
/// Recycling outbound sockets: the socket of a connection the server closed first goes through a reuse
/// disconnect into the factory's pool and carries a later connect; one this side closed first never does.
/// On Linux .NET only emulates reuse (a new descriptor after each reuse disconnect), so automatic reuse is
/// off there and these tests force it; under Wine the reuse disconnect never completes, so forced reuse
/// shows the fallback path: each disconnect times out, its socket is closed, and no connect waits.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class OutboundReuseTests
{
    private static int Requests => WinePlatform.IsWine ? 300 : 2_000;

    public static bool CountsSockets => ProcessSockets.IsSupported;

    [Fact]
    public async Task With_forced_reuse_the_sockets_of_connections_the_server_closed_first_connect_again()
    {
        // Two servers, the requests taking them in turn: a socket is never recycled for the server its last
        // connection went to (that would be the 4-tuple the server holds in TIME_WAIT), so against one alone
        // nothing would be.
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var other = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions
        {
            ReuseSockets = true,
            DeferFinTimeout = TimeSpan.FromSeconds(2),
            DisconnectTimeout = TimeSpan.FromMilliseconds(WinePlatform.IsWine ? 200 : 2000),
        });

        await ChurnAsync([server, other], factory, Requests, concurrency: 4);

        var c = factory.Counters;
        Assert.True(await Eventually.TrueAsync(() => c.GracefulCloses == Requests && c.PendingDisconnects == 0, TimeSpan.FromSeconds(20)), Describe(c));
        Assert.Equal(Requests, c.Connects);
        Assert.Equal(0, c.ConnectFailures);
        Assert.Equal(Requests, c.SocketsCreated + c.SocketsReused);
        Assert.Equal(Requests, c.PeerClosedFirst);
        Assert.Equal(0, c.RecycledConnectFailures);
        Assert.Equal(0, factory.RecycledOntoLastRemoteForTests);
        // HttpClient passes a DnsEndPoint; the factory resolves it (here to 127.0.0.1) and connects IPv4 sockets.
        Assert.Equal("IPv4: on: forced by ReuseSockets = true", c.ReuseStatus);
        // Every one of them was a passive close, so every socket went to a reuse disconnect.
        Assert.Equal(Requests, c.ReuseDisconnects);
        if (WinePlatform.IsWine)
        {
            // Wine's overlapped DisconnectEx never completes: each times out and its socket is closed.
            Assert.Equal(0, c.SocketsReused);
            Assert.True(c.DisconnectTimeouts > 0, Describe(c));
        }
        else
        {
            Assert.True(c.SocketsReused > Requests / 2, Describe(c));
            Assert.Equal(0, c.DisconnectFailures + c.DisconnectTimeouts);
        }

        TestContext.Current.SendDiagnosticMessage(Describe(c));
    }

    [Fact]
    public async Task A_recycled_socket_carries_bytes_both_ways_intact_on_its_next_connection()
    {
        // Two servers in turn: each connect finds the socket of the one before, last used for the other server.
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var other = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true, DeferFinTimeout = TimeSpan.FromSeconds(2) });
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) });
        client.DefaultRequestHeaders.ConnectionClose = true;
        for (var i = 0; i < 20; i++)
        {
            var body = new byte[64 * 1024 + i];
            Random.Shared.NextBytes(body);
            using var response = await client.PostAsync(new Uri((i % 2 == 0 ? server : other).BaseAddress, "/echo"), new ByteArrayContent(body), TestContext.Current.CancellationToken);
            response.EnsureSuccessStatusCode();
            Assert.Equal(body, await response.Content.ReadAsByteArrayAsync(TestContext.Current.CancellationToken));
            // One at a time, each waiting for the last one's socket, so every connect after the first can be a recycled one.
            Assert.True(
                await Eventually.TrueAsync(() => factory.Counters.PendingDisconnects == 0 && factory.Counters.GracefulCloses == i + 1, TimeSpan.FromSeconds(10)),
                Describe(factory.Counters));
        }

        var c = factory.Counters;
        if (!WinePlatform.IsWine)
        {
            Assert.True(c.SocketsReused >= 15, Describe(c));
        }

        Assert.Equal(20, c.SocketsCreated + c.SocketsReused);
        Assert.Equal(0, c.ConnectFailures + c.AbortiveCloses + c.ConnectionResets);
    }

    [Fact]
    public async Task A_pooled_socket_that_cannot_connect_is_closed_and_the_connect_goes_on_with_a_new_one()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true });
        // A fault the platform makes only when a recycle went wrong: a socket in the pool that cannot
        // connect (a listening one: .NET refuses it, the kernel would say EINVAL).
        var bad = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        bad.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        bad.Listen(1);
        Assert.True(factory.IPv4PoolForTests.TryReturn(new ReusableSocket(bad)));
        // And one whose handle is gone: it takes no socket option.
        var closed = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closed.Dispose();
        Assert.True(factory.IPv4PoolForTests.TryReturn(new ReusableSocket(closed)));

        await using var connection = await factory.ConnectAsync(new IPEndPoint(IPAddress.Loopback, server.Port), TestContext.Current.CancellationToken);

        var c = factory.Counters;
        Assert.Equal(2, c.RecycledConnectFailures);
        Assert.Equal(0, c.PooledSockets);
        Assert.Equal(1, c.Connects);
        Assert.Equal(0, c.ConnectFailures);
        Assert.Equal(1, c.SocketsCreated);
        Assert.Equal(0, c.SocketsReused);
        Assert.Throws<ObjectDisposedException>(() => bad.Available);
    }

    [Fact(Skip = ProcessSockets.Unsupported, SkipUnless = nameof(CountsSockets))]
    public async Task Disposing_the_factory_closes_every_pooled_socket()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true, DeferFinTimeout = TimeSpan.FromSeconds(2) });
        // 16 at once, so up to 16 sockets end up in the pool.
        await ChurnAsync(server, factory, 200, concurrency: 16);
        var c = factory.Counters;
        Assert.True(await Eventually.TrueAsync(() => c.GracefulCloses == 200 && c.PendingDisconnects == 0, TimeSpan.FromSeconds(20)), Describe(c));
        var pooled = c.PooledSockets;
        Assert.True(pooled > 0, Describe(c));
        var before = ProcessSockets.Count();

        await factory.DisposeAsync();

        Assert.Equal(0, c.PooledSockets);
        var after = await ProcessSockets.WaitForAtMostAsync(before - (int)pooled, TimeSpan.FromSeconds(10));
        Assert.True(after <= before - pooled, $"{after} sockets open after the dispose, {before} before it with {pooled} pooled: {ProcessSockets.Describe()}");
    }

    [Fact]
    public async Task Automatic_reuse_is_decided_by_a_connect_self_test_while_the_first_connections_run()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        // The sockets engine, the one that recycles: on io_uring nothing is, and no self-test runs.
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = WinsockEngine.Sockets, DeferFinTimeout = TimeSpan.FromSeconds(2) });
        Assert.Equal("no connect yet", factory.Counters.ReuseStatus);

        await ChurnAsync(server, factory, 20, concurrency: 1);

        var c = factory.Counters;
        Assert.True(
            await Eventually.TrueAsync(() => !c.ReuseStatus.Contains("pending", StringComparison.Ordinal), TimeSpan.FromSeconds(15)),
            c.ReuseStatus);
        TestContext.Current.SendDiagnosticMessage(c.ReuseStatus);
        if (OperatingSystem.IsLinux())
        {
            Assert.StartsWith("IPv4: off: the runtime emulates socket reuse here", c.ReuseStatus, StringComparison.Ordinal);
        }
        else if (WinePlatform.IsWine)
        {
            Assert.StartsWith("IPv4: off: the outbound reuse self-test (IPv4) failed: the reuse disconnect", c.ReuseStatus, StringComparison.Ordinal);
        }
        else
        {
            Assert.StartsWith("IPv4: on: the outbound reuse self-test (IPv4) passed", c.ReuseStatus, StringComparison.Ordinal);
        }

        Assert.Equal(20, c.Connects);
        Assert.Equal(0, c.ConnectFailures);
        if (!c.ReuseStatus.StartsWith("IPv4: on", StringComparison.Ordinal))
        {
            Assert.Equal(0, c.SocketsReused + c.ReuseDisconnects);
        }
    }

    [Fact]
    public async Task Connection_objects_are_pooled_under_streams_only_and_a_disposed_stream_never_reaches_the_next_connection()
    {
        await using var server = await SampleServer.StartAsync(TransportKind.Sockets);
        await using var factory = new WinsockOutboundConnectionFactory(OutboundEngine.Options());
        var endpoint = new DnsEndPoint("127.0.0.1", server.Port);
        var ct = TestContext.Current.CancellationToken;

        var first = new Winsock.Outbound.ConnectionStream(await factory.ConnectForStreamAsync(endpoint, ct));
        Assert.Equal("Hello, World!", await PlaintextAsync(first, ct));
        await first.DisposeAsync();
        var second = new Winsock.Outbound.ConnectionStream(await factory.ConnectForStreamAsync(endpoint, ct));

        // The same object carries the second connection; the first stream, disposed, cannot touch it.
        Assert.Same(first.Connection, second.Connection);
        await Assert.ThrowsAsync<ObjectDisposedException>(() => first.ReadAsync(new byte[16], ct).AsTask());
        await Assert.ThrowsAsync<ObjectDisposedException>(() => first.WriteAsync(new byte[16], ct).AsTask());
        Assert.Equal("Hello, World!", await PlaintextAsync(second, ct));
        await second.DisposeAsync();

        // What ConnectAsync hands out is the caller's to keep: never pooled.
        var connection = await factory.ConnectAsync(endpoint, ct);
        await connection.DisposeAsync();
        await using var next = await factory.ConnectAsync(endpoint, ct);
        Assert.NotSame(connection, next);
        Assert.Equal(0, factory.Counters.AbortiveCloses + factory.Counters.ConnectionResets);
    }

    private static async Task<string> PlaintextAsync(Stream stream, CancellationToken ct)
    {
        await stream.WriteAsync("GET /plaintext HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"u8.ToArray(), ct);
        using var reader = new StreamReader(stream, leaveOpen: true);
        var response = await reader.ReadToEndAsync(ct);
        Assert.StartsWith("HTTP/1.1 200 OK", response, StringComparison.Ordinal);
        return response[(response.IndexOf("\r\n\r\n", StringComparison.Ordinal) + 4)..];
    }

    private static Task ChurnAsync(SampleServer server, WinsockOutboundConnectionFactory factory, int requests, int concurrency)
        => ChurnAsync([server], factory, requests, concurrency);

    /// <summary><paramref name="requests"/> requests, <paramref name="concurrency"/> at a time, each to the next of <paramref name="servers"/> in turn.</summary>
    private static async Task ChurnAsync(SampleServer[] servers, WinsockOutboundConnectionFactory factory, int requests, int concurrency)
    {
        using var client = new HttpClient(new SocketsHttpHandler { ConnectCallback = WinsockReuse.CreateConnectCallback(factory) });
        client.DefaultRequestHeaders.ConnectionClose = true;
        var next = 0;
        await Task.WhenAll(Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            int request;
            while ((request = Interlocked.Increment(ref next)) <= requests)
            {
                var uri = new Uri(servers[request % servers.Length].BaseAddress, "/plaintext");
                Assert.Equal("Hello, World!", await client.GetStringAsync(uri, TestContext.Current.CancellationToken));
            }
        })));
    }

    private static string Describe(WinsockOutboundCounters c)
        => $"connects={c.Connects} connectFailures={c.ConnectFailures} created={c.SocketsCreated} reused={c.SocketsReused} pooled={c.PooledSockets} " +
           $"reuseDisconnects={c.ReuseDisconnects} pending={c.PendingDisconnects} disconnectFailures={c.DisconnectFailures} disconnectTimeouts={c.DisconnectTimeouts} " +
           $"recycledConnectFailures={c.RecycledConnectFailures} recycledConnectRetries={c.RecycledConnectRetries} graceful={c.GracefulCloses} timeWaitCloses={c.TimeWaitCloses} peerClosedFirst={c.PeerClosedFirst} status='{c.ReuseStatus}'";
}
