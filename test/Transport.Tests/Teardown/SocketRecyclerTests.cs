using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging.Abstractions;
using Transport.Tests.Infrastructure;
using Transport.Winsock;
using Transport.Winsock.AcceptPool;
using Transport.Winsock.Teardown;

namespace Transport.Tests.Teardown;

public sealed class SocketRecyclerTests
{
    private static readonly TimeSpan Bound = TimeSpan.FromSeconds(10);

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task A_cleanly_closed_socket_is_disconnected_and_pooled()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 4, counters);
        using var recycler = CreateRecycler(pool, counters);
        var socket = await ConnectedAndClosedBothWaysAsync();

        recycler.Recycle(socket);

        var pooled = await PollAsync(() => pool.TryRent());
        Assert.Same(socket, pooled);
        Assert.Equal(0, counters.DisconnectFailures);
        Assert.Equal(0, counters.PendingDisconnects);
        pooled.Dispose();
    }

    [Fact]
    public async Task A_failed_disconnect_closes_the_socket_counts_it_and_pools_nothing()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 4, counters);
        using var recycler = CreateRecycler(pool, counters);
        var socket = NeverConnected();

        recycler.Recycle(socket);

        await PollAsync(() => counters.DisconnectFailures == 1 ? "failed" : null);
        Assert.Null(pool.TryRent());
        Assert.Equal(0, counters.PendingDisconnects);
        Assert.Throws<ObjectDisposedException>(() => socket.Socket.Available);
    }

    [Fact]
    public async Task Past_the_pending_cap_or_after_dispose_sockets_are_closed_not_recycled()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 4, counters);
        var recycler = CreateRecycler(pool, counters);
        recycler.Dispose();
        var socket = await ConnectedAndClosedBothWaysAsync();

        recycler.Recycle(socket);

        Assert.Throws<ObjectDisposedException>(() => socket.Socket.Available);
        Assert.Null(pool.TryRent());
        Assert.Equal(0, counters.PendingDisconnects);
    }

    [Fact]
    public void A_full_pool_takes_nothing_more_and_a_disposed_pool_nothing_at_all()
    {
        var counters = new WinsockTransportCounters();
        var pool = new SocketPool(capacity: 1, counters);
        using var first = new ReusableSocket(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        using var second = new ReusableSocket(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));

        Assert.True(pool.TryReturn(first));
        Assert.False(pool.TryReturn(second));
        Assert.Equal(1, counters.PooledSockets);

        pool.Dispose();
        Assert.Equal(0, counters.PooledSockets);
        Assert.Throws<ObjectDisposedException>(() => first.Socket.Available);
        Assert.False(pool.TryReturn(second));
    }

    [Fact]
    public async Task Ten_failed_recycles_turn_automatic_reuse_off()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: true, "on: test"), maxPending: 64);

        for (var i = 0; i < SocketRecycler.FailuresBeforeFallback; i++)
        {
            Assert.True(recycler.IsActive);
            recycler.Recycle(NeverConnected());
            await PollAsync(() => counters.DisconnectFailures == i + 1 ? "failed" : null);
        }

        Assert.False(recycler.IsActive);
        Assert.False(counters.ReuseActive);
        Assert.Contains("10 of the last 20 recycles failed", counters.ReuseStatus, StringComparison.Ordinal);

        // From now on sockets are closed without a disconnect attempt.
        var socket = await ConnectedAndClosedBothWaysAsync();
        recycler.Recycle(socket);
        Assert.Throws<ObjectDisposedException>(() => socket.Socket.Available);
        Assert.Equal(SocketRecycler.FailuresBeforeFallback, counters.DisconnectFailures);
    }

    [Fact]
    public async Task The_fallback_closes_the_pooled_sockets_at_once_and_pools_nothing_while_off()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: true, "on: test"), maxPending: 64);
        using var idle = new ReusableSocket(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));
        Assert.True(pool.TryReturn(idle));

        for (var i = 0; i < SocketRecycler.FailuresBeforeFallback; i++)
        {
            recycler.Recycle(NeverConnected());
            await PollAsync(() => counters.DisconnectFailures == i + 1 ? "failed" : null);
        }

        Assert.False(recycler.IsActive);
        Assert.Equal(0, counters.PooledSockets);
        Assert.Throws<ObjectDisposedException>(() => idle.Socket.Available);
        // While reuse is off (until a retest passes), a socket that ends cleanly is closed, not pooled.
        var late = await ConnectedAndClosedBothWaysAsync();
        recycler.Recycle(late);
        Assert.Throws<ObjectDisposedException>(() => late.Socket.Available);
        Assert.Null(pool.TryRent());
    }

    [Fact]
    public void Failures_scattered_among_successes_keep_reuse_on_and_half_of_the_last_twenty_turn_it_off()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: true, "on: test"), maxPending: 64);

        // One recycle in three fails, for a long time: bad luck, not a platform without reuse. Ten failures
        // in a row used to be the rule, and ten in the whole run would have been enough for a total count.
        for (var i = 0; i < 30; i++)
        {
            recycler.OnRecycledAcceptFailed("InvalidArgument");
            recycler.OnRecycledAccept();
            recycler.OnRecycledAccept();
        }

        Assert.True(recycler.IsActive, counters.ReuseStatus);
        Assert.Equal(30, counters.RecycledAcceptFailures);

        // Every other one fails: 10 of the last 20, which in a row would never have been reached.
        for (var i = 0; i < SocketRecycler.FailuresBeforeFallback; i++)
        {
            Assert.True(recycler.IsActive, counters.ReuseStatus);
            recycler.OnRecycledAccept();
            recycler.OnRecycledAcceptFailed(i == SocketRecycler.FailuresBeforeFallback - 1 ? "NotSocket" : "InvalidArgument");
        }

        Assert.False(recycler.IsActive);
        Assert.Contains("10 of the last 20 recycles failed", counters.ReuseStatus, StringComparison.Ordinal);
        Assert.Contains("an accept into a recycled socket failed: NotSocket", counters.ReuseStatus, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_disconnect_that_fails_with_a_reset_is_the_connections_and_never_turns_reuse_off()
    {
        // A client that sends its request and closes at once resets after our FIN: DisconnectEx then fails
        // with WSAECONNRESET, which says nothing of the platform's reuse.
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: true, "on: test"), maxPending: 64);
        recycler.DisconnectFaultForTests = _ => throw new SocketException((int)SocketError.ConnectionReset);

        for (var i = 0; i < 2 * SocketRecycler.FailuresBeforeFallback; i++)
        {
            recycler.Recycle(NeverConnected());
            await PollAsync(() => counters.DisconnectFailures == i + 1 ? "failed" : null);
        }

        Assert.True(recycler.IsActive, counters.ReuseStatus);
        Assert.Equal(0, counters.PendingDisconnects);
    }

    [Fact]
    public async Task After_a_fallback_the_self_test_runs_again_with_a_back_off_and_reuse_comes_back_when_it_passes()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        var retests = new List<TimeSpan>();
        var started = System.Diagnostics.Stopwatch.StartNew();
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: true, "on: test"), maxPending: 64,
            retest: () =>
            {
                lock (retests)
                {
                    retests.Add(started.Elapsed);
                    // The first retest fails again (a timeout under load, say); the second passes.
                    return Task.FromResult(retests.Count == 1
                        ? new ReuseDecision(false, true, "off: the reuse self-test timed out") { Retestable = true }
                        : new ReuseDecision(true, true, "on: the reuse self-test passed"));
                }
            },
            firstRetest: TimeSpan.FromMilliseconds(100));

        for (var i = 0; i < SocketRecycler.FailuresBeforeFallback; i++)
        {
            recycler.OnRecycledAcceptFailed("InvalidArgument");
        }

        Assert.False(recycler.IsActive);
        started.Restart();
        Assert.Contains("the self-test runs again in", counters.ReuseStatus, StringComparison.Ordinal);
        await PollAsync(() => recycler.IsActive ? "on" : null);
        Assert.True(counters.ReuseActive);
        Assert.Contains("on: the reuse self-test passed (again,", counters.ReuseStatus, StringComparison.Ordinal);
        lock (retests)
        {
            Assert.Equal(2, retests.Count);
            // The second waited twice as long as the first.
            // (Windows' timers tick in ~15.6 ms steps: 150 of the 200 ms, not all of it.)
            Assert.True(retests[1] - retests[0] >= TimeSpan.FromMilliseconds(150), $"retests at {string.Join(", ", retests)}");
        }

        // Recycling works again: a clean socket is disconnected and pooled.
        if (!WinePlatform.IsWine)
        {
            var socket = await ConnectedAndClosedBothWaysAsync();
            recycler.Recycle(socket);
            Assert.Same(socket, await PollAsync(() => pool.TryRent()));
            socket.Dispose();
        }
    }

    [Fact]
    public async Task A_self_test_that_failed_at_startup_is_run_again_and_a_platform_verdict_is_not()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        var calls = 0;
        Func<Task<ReuseDecision>> retest = () =>
        {
            Interlocked.Increment(ref calls);
            return Task.FromResult(new ReuseDecision(true, true, "on: the reuse self-test passed"));
        };
        using var timedOut = CreateRecycler(pool, counters, new ReuseDecision(false, true, "off: the reuse self-test timed out") { Retestable = true }, retest: retest, firstRetest: TimeSpan.FromMilliseconds(50));
        await PollAsync(() => timedOut.IsActive ? "on" : null);

        // The platform only emulates reuse: that verdict stands.
        using var emulated = CreateRecycler(pool, counters, new ReuseDecision(false, true, "off: emulated") { Emulated = true }, retest: retest, firstRetest: TimeSpan.FromMilliseconds(50));
        await Task.Delay(300, TestContext.Current.CancellationToken);
        Assert.False(emulated.IsActive);
        Assert.Equal(1, Volatile.Read(ref calls));
    }

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task A_successful_reuse_disconnect_alone_does_not_end_a_run_of_failures()
    {
        // The disconnect is only half of a recycle: a socket whose accept then fails was not recycled.
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: true, "on: test"), maxPending: 64);
        for (var i = 0; i < SocketRecycler.FailuresBeforeFallback - 1; i++)
        {
            recycler.OnRecycledAcceptFailed("InvalidArgument");
        }

        var socket = await ConnectedAndClosedBothWaysAsync();
        recycler.Recycle(socket);
        Assert.Same(socket, await PollAsync(() => pool.TryRent()));
        Assert.True(recycler.IsActive);

        recycler.OnRecycledAcceptFailed("InvalidArgument");
        Assert.False(recycler.IsActive);
        socket.Dispose();
    }

    [NotUnderWineFact(WinePlatform.NoSocketReuse)]
    public async Task Forced_reuse_keeps_recycling_whatever_fails()
    {
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 64, counters);
        using var recycler = CreateRecycler(pool, counters, new ReuseDecision(true, Automatic: false, "on: forced"), maxPending: 64);

        for (var i = 0; i < SocketRecycler.FailuresBeforeFallback + 2; i++)
        {
            recycler.Recycle(NeverConnected());
            await PollAsync(() => counters.DisconnectFailures == i + 1 ? "failed" : null);
        }

        Assert.True(recycler.IsActive);
        var socket = await ConnectedAndClosedBothWaysAsync();
        recycler.Recycle(socket);
        Assert.Same(socket, await PollAsync(() => pool.TryRent()));
        socket.Dispose();
    }

    [Fact]
    public async Task A_disconnect_that_throws_something_unexpected_closes_the_socket_counts_it_and_frees_its_slot()
    {
        // Both sides' recyclers are this class: the listener's and the outbound factory's.
        var counters = new WinsockTransportCounters();
        using var pool = new SocketPool(capacity: 4, counters);
        using var recycler = CreateRecycler(pool, counters, maxPending: 1);
        var socket = await ConnectedAndClosedBothWaysAsync();
        recycler.DisconnectFaultForTests = s =>
        {
            if (ReferenceEquals(s, socket))
            {
                throw new InvalidOperationException("a fault only the platform could make");
            }
        };

        recycler.Recycle(socket);

        await PollAsync(() => counters.DisconnectFailures == 1 ? "failed" : null);
        Assert.Equal(0, counters.PendingDisconnects);
        Assert.Throws<ObjectDisposedException>(() => socket.Socket.Available);
        Assert.Null(pool.TryRent());

        // The one pending slot is free again: the next socket goes to its disconnect, not straight to a close.
        recycler.DisconnectFaultForTests = null;
        var next = await ConnectedAndClosedBothWaysAsync();
        recycler.Recycle(next);
        Assert.Equal(2, counters.ReuseDisconnects);
        await PollAsync(() => counters.PendingDisconnects == 0 ? "done" : null);
        next.Dispose();
    }

    private static SocketRecycler CreateRecycler(
        SocketPool pool,
        WinsockTransportCounters counters,
        ReuseDecision? decision = null,
        int maxPending = 4,
        Func<Task<ReuseDecision>>? retest = null,
        TimeSpan? firstRetest = null)
    {
        var recycler = new SocketRecycler(
            pool,
            new WinsockTransportOptions { DisconnectTimeout = TimeSpan.FromSeconds(5), MaxPendingDisconnects = maxPending },
            decision ?? new ReuseDecision(true, Automatic: false, "on: test"),
            new IPEndPoint(IPAddress.Loopback, 0),
            counters,
            NullLogger.Instance,
            retest,
            firstRetest);
        // As a started listener does: its counters read the reuse status from its recycler.
        counters.TrackReuse(recycler);
        return recycler;
    }

    // A reuse disconnect on a socket that never connected fails for real.
    private static ReusableSocket NeverConnected()
        => new(new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp));

    // A server-side socket whose connection ended cleanly: FIN sent both ways, as a connection leaves it.
    private static async Task<ReusableSocket> ConnectedAndClosedBothWaysAsync()
    {
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen();
        using var client = await RawClient.ConnectAsync((IPEndPoint)listener.LocalEndPoint!);
        var server = await listener.AcceptAsync(TestContext.Current.CancellationToken);

        server.Shutdown(SocketShutdown.Send);
        Assert.Empty(await RawClient.ReadToFinAsync(client, Bound));
        client.Shutdown(SocketShutdown.Send);
        Assert.Equal(0, await server.ReceiveAsync(new byte[1], SocketFlags.None, TestContext.Current.CancellationToken));
        return new ReusableSocket(server);
    }

    private static async Task<T> PollAsync<T>(Func<T?> probe) where T : class
    {
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(TestContext.Current.CancellationToken);
        cts.CancelAfter(Bound);
        while (true)
        {
            if (probe() is { } value)
            {
                return value;
            }

            await Task.Delay(10, cts.Token);
        }
    }
}
