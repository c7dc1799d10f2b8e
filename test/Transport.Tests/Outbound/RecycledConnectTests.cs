using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.AspNetCore.Connections;
using Transport.Tests.Infrastructure;
using Transport.Winsock;

namespace Transport.Tests.Outbound;

/// <summary>
/// What a connect on a recycled outbound socket must get right, against bare loopback servers that close
/// first (so every socket goes back to the pool): the endpoints it reports, and which socket it takes.
/// Reuse is forced on (on Linux .NET only emulates it, a new descriptor after each reuse disconnect, but
/// the pool and the connect path are the same); under Wine the reuse disconnect never completes, so
/// nothing would be recycled there.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed class RecycledConnectTests
{
    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task A_recycled_connection_reports_its_own_local_endpoint_not_the_previous_connections()
    {
        var ct = TestContext.Current.CancellationToken;
        // Two servers taken in turn, so each socket the pool holds suits the next connect.
        await using var first = ServerThatClosesFirst.Start();
        await using var second = ServerThatClosesFirst.Start();
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true });
        var servers = new[] { first, second };
        for (var i = 0; i < 10; i++)
        {
            var server = servers[i % 2];
            var connection = await factory.ConnectAsync(server.EndPoint, ct);
            var seenByServer = await server.Accepted.ReadAsync(ct);

            Assert.Equal(seenByServer, connection.LocalEndPoint);
            Assert.Equal(server.EndPoint, connection.RemoteEndPoint);
            await EndAsync(connection, factory, i + 1, ct);
        }

        Assert.True(factory.Counters.SocketsReused >= 5, Describe(factory.Counters));
    }

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Against_one_server_a_connect_never_takes_a_socket_whose_last_connection_went_there()
    {
        // A recycled socket that kept its local port (Windows keeps it) would connect on the 4-tuple the
        // server holds in TIME_WAIT: within milliseconds here, one connect after another.
        var ct = TestContext.Current.CancellationToken;
        await using var server = ServerThatClosesFirst.Start();
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true });
        for (var i = 0; i < 10; i++)
        {
            var connection = await factory.ConnectAsync(server.EndPoint, ct);
            await server.Accepted.ReadAsync(ct);
            await EndAsync(connection, factory, i + 1, ct);
        }

        var c = factory.Counters;
        Assert.Equal(0, factory.RecycledOntoLastRemoteForTests);
        Assert.Equal(10, c.Connects);
        Assert.Equal(0, c.ConnectFailures);
        // Every socket went back to the pool; none of them suited this one server again.
        Assert.Equal(0, c.SocketsReused);
        Assert.Equal(10, c.SocketsCreated);
        Assert.Equal(10, c.PooledSockets);
    }

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Between_two_servers_sockets_are_reused_each_for_the_other_server()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var first = ServerThatClosesFirst.Start();
        await using var second = ServerThatClosesFirst.Start();
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true });
        var servers = new[] { first, second };
        for (var i = 0; i < 20; i++)
        {
            // Two to each in turn: the pool then holds sockets last used for either.
            var server = servers[i / 2 % 2];
            var connection = await factory.ConnectAsync(server.EndPoint, ct);
            await server.Accepted.ReadAsync(ct);
            await EndAsync(connection, factory, i + 1, ct);
        }

        var c = factory.Counters;
        Assert.Equal(0, factory.RecycledOntoLastRemoteForTests);
        Assert.True(c.SocketsReused >= 15, Describe(c));
        Assert.Equal(20, c.SocketsCreated + c.SocketsReused);
    }

    [Fact]
    public async Task A_recycled_socket_whose_connect_is_refused_is_closed_and_the_connect_goes_on_once_on_a_new_socket()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var server = ServerThatClosesFirst.Start();
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true });
        // A socket in the pool, never connected, so any endpoint suits it; its connect is refused, as a
        // server may refuse a recycled socket's SYN while a new socket's goes through.
        var pooled = new Winsock.AcceptPool.ReusableSocket(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        Assert.True(factory.IPv4PoolForTests.TryReturn(pooled));
        factory.RecycledConnectFaultForTests = _ => new SocketException((int)SocketError.ConnectionRefused);

        var connection = await factory.ConnectAsync(server.EndPoint, ct);
        await server.Accepted.ReadAsync(ct);

        var c = factory.Counters;
        Assert.Equal(1, c.RecycledConnectRetries);
        Assert.Equal(1, c.Connects);
        Assert.Equal(0, c.ConnectFailures);
        Assert.Equal(1, c.SocketsCreated);
        Assert.Equal(0, c.SocketsReused);
        // Not a sign of a bad recycle by itself (the server may refuse anyone): it does not count toward the fallback.
        Assert.Equal(0, c.RecycledConnectFailures);
        Assert.Throws<ObjectDisposedException>(() => pooled.Socket.Available);
        await EndAsync(connection, factory, 1, ct);
    }

    [Fact]
    public async Task When_the_new_socket_fails_too_its_failure_goes_to_the_caller_after_one_retry()
    {
        var ct = TestContext.Current.CancellationToken;
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = OutboundEngine.Current, ReuseSockets = true });
        for (var i = 0; i < 3; i++)
        {
            Assert.True(factory.IPv4PoolForTests.TryReturn(new Winsock.AcceptPool.ReusableSocket(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))));
        }

        factory.RecycledConnectFaultForTests = _ => new SocketException((int)SocketError.TimedOut);
        // Nothing listens there: the new socket's connect is refused for real.
        var closed = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        closed.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        var endpoint = (IPEndPoint)closed.LocalEndPoint!;
        closed.Dispose();

        var failure = await Assert.ThrowsAsync<SocketException>(() => factory.ConnectAsync(endpoint, ct).AsTask());

        Assert.Equal(SocketError.ConnectionRefused, failure.SocketErrorCode);
        var c = factory.Counters;
        Assert.Equal(1, c.RecycledConnectRetries);
        Assert.Equal(1, c.ConnectFailures);
        // One recycled socket tried, then one new one: the other two are still pooled.
        Assert.Equal(2, c.PooledSockets);
    }

    [Fact]
    public void The_pool_hands_an_outbound_connect_the_oldest_socket_last_used_elsewhere()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new Winsock.AcceptPool.SocketPool(capacity: 8, counters);
        var a = new IPEndPoint(IPAddress.Loopback, 1001);
        var b = new IPEndPoint(IPAddress.Loopback, 1002);
        using var toA = Pooled(a);
        using var toB = Pooled(b);
        using var toBAgain = Pooled(b);
        using var fresh = Pooled(null);
        foreach (var socket in new[] { toA, toB, toBAgain, fresh })
        {
            Assert.True(pool.TryReturn(socket));
        }

        Assert.Same(toB, pool.TryRentFor(a));
        Assert.Same(toBAgain, pool.TryRentFor(a));
        Assert.Same(fresh, pool.TryRentFor(a));
        Assert.Null(pool.TryRentFor(new IPEndPoint(IPAddress.Loopback, 1001)));
        Assert.Equal(1, counters.PooledSockets);
        Assert.Same(toA, pool.TryRentFor(b));
        Assert.Equal(0, counters.PooledSockets);

        static Winsock.AcceptPool.ReusableSocket Pooled(IPEndPoint? last)
            => new(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)) { LastRemoteEndPoint = last };
    }

    /// <summary>Reads to the server's FIN, then disposes (so the close is passive) and waits for the socket to reach the pool.</summary>
    internal static async Task EndAsync(ConnectionContext connection, WinsockOutboundConnectionFactory factory, int closes, CancellationToken ct)
    {
        var input = connection.Transport.Input;
        while (true)
        {
            var result = await input.ReadAsync(ct);
            input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                break;
            }
        }

        await connection.DisposeAsync();
        var c = factory.Counters;
        Assert.True(
            await Eventually.TrueAsync(() => c.GracefulCloses == closes && c.PendingDisconnects == 0, TimeSpan.FromSeconds(10)),
            Describe(c));
    }

    internal static string Describe(WinsockOutboundCounters c)
        => $"connects={c.Connects} connectFailures={c.ConnectFailures} created={c.SocketsCreated} reused={c.SocketsReused} pooled={c.PooledSockets} " +
           $"reuseDisconnects={c.ReuseDisconnects} pending={c.PendingDisconnects} disconnectFailures={c.DisconnectFailures} disconnectTimeouts={c.DisconnectTimeouts} " +
           $"recycledConnectFailures={c.RecycledConnectFailures} recycledConnectRetries={c.RecycledConnectRetries} graceful={c.GracefulCloses} peerClosedFirst={c.PeerClosedFirst} status='{c.ReuseStatus}'";

    /// <summary>
    /// A bare loopback listener that sends its FIN as soon as it accepts, then reads to the client's FIN
    /// and closes: every connection to it is a passive close on the client. Hands out each connection's
    /// remote endpoint as the server sees it.
    /// </summary>
    internal sealed class ServerThatClosesFirst : IAsyncDisposable
    {
        private readonly Socket _listener;
        private readonly Channel<IPEndPoint> _accepted = Channel.CreateUnbounded<IPEndPoint>();
        private readonly CancellationTokenSource _stop = new();
        private readonly Task _loop;

        private ServerThatClosesFirst()
        {
            _listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            _listener.Listen(64);
            EndPoint = (IPEndPoint)_listener.LocalEndPoint!;
            _loop = AcceptLoopAsync();
        }

        public IPEndPoint EndPoint { get; }

        /// <summary>Each accepted connection's remote endpoint, in the order accepted.</summary>
        public ChannelReader<IPEndPoint> Accepted => _accepted.Reader;

        public static ServerThatClosesFirst Start() => new();

        private async Task AcceptLoopAsync()
        {
            try
            {
                while (true)
                {
                    var socket = await _listener.AcceptAsync(_stop.Token);
                    _accepted.Writer.TryWrite((IPEndPoint)socket.RemoteEndPoint!);
                    _ = ServeAsync(socket);
                }
            }
            catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
            {
                // Stopped.
            }
        }

        private async Task ServeAsync(Socket socket)
        {
            using (socket)
            {
                try
                {
                    socket.Shutdown(SocketShutdown.Send);
                    var buffer = new byte[256];
                    while (await socket.ReceiveAsync(buffer, SocketFlags.None, _stop.Token) > 0)
                    {
                    }
                }
                catch (Exception ex) when (ex is OperationCanceledException or SocketException or ObjectDisposedException)
                {
                }
            }
        }

        public async ValueTask DisposeAsync()
        {
            await _stop.CancelAsync();
            _listener.Dispose();
            await _loop;
            _stop.Dispose();
        }
    }
}
