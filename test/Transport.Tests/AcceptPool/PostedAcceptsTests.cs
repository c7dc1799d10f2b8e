using System.Net;
using System.Net.Sockets;
using System.Threading.Channels;
using Microsoft.Extensions.Logging.Abstractions;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Teardown;

namespace Transport.Tests.AcceptPool;

/// <summary>
/// The posted accepts with the real pool and recycler around them, on a real listening socket: an accept
/// into a socket from the pool that was not really recycled fails for real, reaches the fallback, and
/// never ends the slot.
/// </summary>
public sealed class PostedAcceptsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Accepts_into_sockets_that_were_not_really_recycled_count_toward_the_fallback_and_the_slot_goes_on(bool automatic)
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        var decision = new ReuseDecision(true, automatic, "on: test");
        using var recycler = new SocketRecycler(pool, new WinsockTransportOptions(), decision, new IPEndPoint(IPAddress.Loopback, 0), counters, NullLogger.Instance);
        // As a started listener does: its counters read the reuse status from its recycler.
        counters.TrackReuse(recycler);
        var listenSocket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listenSocket.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listenSocket.Listen();
        var endPoint = (IPEndPoint)listenSocket.LocalEndPoint!;

        // Sockets that a recycle left connected, as a provider whose DisconnectEx claims success without
        // recycling would: .NET refuses to accept into them (a synchronous InvalidOperationException).
        var bad = new List<ReusableSocket>();
        var peers = new List<Socket>();
        using (var scratch = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp))
        {
            scratch.Bind(new IPEndPoint(IPAddress.Loopback, 0));
            scratch.Listen();
            for (var i = 0; i < SocketRecycler.FailuresBeforeFallback; i++)
            {
                peers.Add(await RawClient.ConnectAsync((IPEndPoint)scratch.LocalEndPoint!));
                var connected = new ReusableSocket(await scratch.AcceptAsync(TestContext.Current.CancellationToken));
                bad.Add(connected);
                Assert.True(pool.TryReturn(connected));
            }
        }

        var accepted = Channel.CreateUnbounded<(Socket Socket, ReusableSocket? Reusable)>();
        var accepts = new PostedAccepts(listenSocket, pool, recycler, (s, r) => accepted.Writer.TryWrite((s, r)), noDelay: true, counters, NullLogger.Instance, new AcceptPause(endPoint, counters, NullLogger.Instance));
        try
        {
            accepts.Start(1);

            // The one slot goes through all ten before any client connects: each fails at once.
            Assert.True(
                await Eventually.TrueAsync(() => counters.RecycledAcceptFailures == SocketRecycler.FailuresBeforeFallback && recycler.IsActive == !automatic, Timeout),
                Eventually.Describe(counters));
            Assert.All(bad, socket => Assert.Throws<ObjectDisposedException>(() => socket.Socket.Available));
            Assert.Equal(0, counters.PooledSockets);
            Assert.Equal(!automatic, recycler.IsActive);
            if (automatic)
            {
                Assert.Contains("an accept into a recycled socket failed", counters.ReuseStatus, StringComparison.Ordinal);
            }

            // The slot is alive and serves the next client: into the runtime's own socket once reuse is
            // off, into a new socket of its own while reuse is forced on.
            using var client = await RawClient.ConnectAsync(endPoint);
            var (socket, reusable) = await accepted.Reader.ReadAsync(TestContext.Current.CancellationToken).AsTask().WaitAsync(Timeout, TestContext.Current.CancellationToken);
            Assert.Equal(automatic, reusable is null);
            Assert.Equal(client.LocalEndPoint, socket.RemoteEndPoint);
            socket.Dispose();
            reusable?.Dispose();
        }
        finally
        {
            await accepts.StopAsync().WaitAsync(Timeout, TestContext.Current.CancellationToken);
            foreach (var peer in peers)
            {
                peer.Dispose();
            }
        }
    }
}
