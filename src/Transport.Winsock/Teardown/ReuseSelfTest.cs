using System.Net;
using System.Net.Sockets;
using Transport.Winsock.Engines.Sockets;

namespace Transport.Winsock.Teardown;

/// <summary>
/// Proves socket reuse on this machine before the transport trusts it: on a private loopback listener,
/// accept into a socket, move bytes both ways, close gracefully (the client first, so no TIME_WAIT holds
/// the disconnect), disconnect with reuse, accept into the same socket again and move bytes both ways
/// again; all with the transport's own event args, within a short timeout. Wine, for one, accepts into
/// such a socket but never completes the disconnect and cannot send on it afterwards.
/// <para>
/// Reuse is also declined where the runtime only emulates it: where an accept into a given socket does
/// not keep that socket's handle (.NET on Linux accepts into a new descriptor and swaps it in, and its
/// reuse disconnect opens yet another), "reusing" costs system calls and saves none.
/// </para>
/// Runs on the listener's own kind of socket (IPv4, IPv6, or IPv6 dual-mode taking IPv4 clients), once per
/// process for each kind; every listener of that kind shares the verdict.
/// </summary>
internal static class ReuseSelfTest
{
    internal static readonly TimeSpan Timeout = TimeSpan.FromSeconds(5);

    /// <summary>
    /// The longest the outbound test's second connect (the recycled socket's) may take: 1 s. On loopback
    /// a connect takes well under a millisecond; one whose SYN the server dropped, as a stack may drop a SYN
    /// for a 4-tuple it holds in TIME_WAIT from a client without TCP timestamps, completes only after the
    /// retransmit, one initial RTO later (1 s on Linux and on current Windows). Such a connect would pass
    /// within <see cref="Timeout"/>, and every churning connect after it would stall as long, so it fails
    /// the test instead. A loaded machine that is slow to run the continuation can cross it too; that only
    /// leaves reuse off.
    /// </summary>
    internal static readonly TimeSpan SecondConnectStall = TimeSpan.FromSeconds(1);

    private static readonly Lock s_lock = new();
    private static readonly Dictionary<ListenerKind, Task<Verdict>> s_verdicts = [];
    private static readonly Dictionary<ListenerKind, Task<Verdict>> s_connectVerdicts = [];

    /// <summary>
    /// What the self-test found: <see cref="Refusal"/> is null when reuse works, else why not;
    /// <see cref="Emulated"/> marks the refusal where the runtime only emulates reuse (expected, not a fault).
    /// </summary>
    internal readonly record struct Verdict(ListenerKind Kind, string? Refusal, bool Emulated = false, string? Detail = null);

    /// <summary>What the accepted sockets of a listener are: its address family, and for IPv6 whether it is dual-mode.</summary>
    internal readonly record struct ListenerKind(AddressFamily Family, bool DualMode)
    {
        public static ListenerKind Of(Socket listenSocket) => new(
            listenSocket.AddressFamily,
            listenSocket.AddressFamily == AddressFamily.InterNetworkV6 && listenSocket.DualMode);

        /// <summary>Where the self-test listens: loopback of the family; for dual-mode the IPv4-mapped loopback, so its clients come over IPv4.</summary>
        public IPAddress ListenAddress => Family == AddressFamily.InterNetworkV6
            ? (DualMode ? IPAddress.Loopback.MapToIPv6() : IPAddress.IPv6Loopback)
            : IPAddress.Loopback;

        public AddressFamily ClientFamily => DualMode ? AddressFamily.InterNetwork : Family;

        /// <summary>The kind as an outbound socket (one family each: outbound sockets are never dual-mode).</summary>
        public string OutboundName => Family == AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4";

        public override string ToString() => Family == AddressFamily.InterNetworkV6
            ? (DualMode ? "IPv6 dual-mode, IPv4 clients" : "IPv6")
            : "IPv4";
    }

    /// <summary>The verdict for this kind of listener, from the one run of the test for that kind.</summary>
    public static Task<Verdict> RunOnceAsync(ListenerKind kind)
    {
        lock (s_lock)
        {
            if (!s_verdicts.TryGetValue(kind, out var verdict))
            {
                verdict = Task.Run(() => RunAsync(kind));
                s_verdicts.Add(kind, verdict);
            }

            return verdict;
        }
    }

    /// <summary>A fresh run of the listener's test for this kind, whose verdict replaces the one kept for the process.</summary>
    public static Task<Verdict> RunAgainAsync(ListenerKind kind)
    {
        lock (s_lock)
        {
            var verdict = Task.Run(() => RunAsync(kind));
            s_verdicts[kind] = verdict;
            return verdict;
        }
    }

    /// <summary>A fresh run of the outbound test for this family, whose verdict replaces the one kept for the process.</summary>
    public static Task<Verdict> RunConnectAgainAsync(ListenerKind kind)
    {
        lock (s_lock)
        {
            var verdict = Task.Run(() => RunConnectAsync(kind));
            s_connectVerdicts[kind] = verdict;
            return verdict;
        }
    }

    /// <summary>
    /// The outbound side's verdict for sockets of this family, from the one run of its test: the same socket connects, moves bytes both ways, is closed
    /// by the server first (the only close after which it is recycled), is disconnected with reuse, and
    /// connects again to the same server and moves bytes both ways again. The second connect is the one a
    /// churning client makes: if the recycled socket kept its local port, it goes out on the 4-tuple the
    /// server holds in TIME_WAIT, which the server's stack must take a new SYN on; the verdict's detail
    /// says which it was. That connect is timed as well: one that takes <see cref="SecondConnectStall"/> or
    /// more passed only after a SYN retransmit, and fails the test.
    /// </summary>
    public static Task<Verdict> RunConnectOnceAsync(ListenerKind kind)
    {
        lock (s_lock)
        {
            if (!s_connectVerdicts.TryGetValue(kind, out var verdict))
            {
                verdict = Task.Run(() => RunConnectAsync(kind));
                s_connectVerdicts.Add(kind, verdict);
            }

            return verdict;
        }
    }

    /// <summary>
    /// For tests: the outbound test with <paramref name="secondConnectDelay"/> put into the recycled
    /// socket's connect (what a dropped SYN and its retransmit cost), carried on past the emulation check so
    /// that it reaches that connect where .NET only emulates reuse (Linux). Never run in production.
    /// </summary>
    internal static Task<Verdict> RunConnectWithDelayForTestsAsync(ListenerKind kind, TimeSpan secondConnectDelay)
        => RunConnectAsync(kind, secondConnectDelay);

    private static async Task<Verdict> RunConnectAsync(ListenerKind kind, TimeSpan? secondConnectDelayForTests = null)
    {
        var step = "setting up a loopback listener";
        using var listener = new Socket(kind.Family, SocketType.Stream, ProtocolType.Tcp);
        // As the outbound factory makes them for this kind.
        using var socket = new Socket(kind.Family, SocketType.Stream, ProtocolType.Tcp);
        using var receiver = new SocketReceiver();
        using var sender = new SocketSender();
        using var disconnector = new SocketDisconnector();
        var deadline = Task.Delay(Timeout);
        try
        {
            var loopback = kind.Family == AddressFamily.InterNetworkV6 ? IPAddress.IPv6Loopback : IPAddress.Loopback;
            listener.Bind(new IPEndPoint(loopback, 0));
            listener.Listen(2);
            var target = new IPEndPoint(loopback, ((IPEndPoint)listener.LocalEndPoint!).Port);
            var handle = IntPtr.Zero;
            var ports = new int[2];
            for (var round = 1; round <= 2; round++)
            {
                step = round == 1 ? "connecting a new socket" : "connecting the recycled socket";
                var acceptTask = listener.AcceptAsync();
                var started = System.Diagnostics.Stopwatch.GetTimestamp();
                var connect = round == 2 && secondConnectDelayForTests is { } delay
                    ? DelayedConnectAsync(socket, target, delay)
                    : socket.ConnectAsync(target);
                await Within(connect, deadline).ConfigureAwait(false);
                var took = System.Diagnostics.Stopwatch.GetElapsedTime(started);
                await Within(acceptTask, deadline).ConfigureAwait(false);
                using var server = acceptTask.Result;
                if (round == 2 && took >= SecondConnectStall)
                {
                    // Within the budget, but a stall: each churning connect would wait as long.
                    return new(kind, $"the outbound reuse self-test ({kind.OutboundName}) failed: connecting the recycled socket took {took.TotalMilliseconds:0} ms, a stall of {SecondConnectStall.TotalSeconds:0} s or more on loopback (what a SYN the server dropped and the retransmit cost)");
                }

                ports[round - 1] = ((IPEndPoint)server.RemoteEndPoint!).Port;

                step = round == 1 ? "sending on a new socket" : "sending on the recycled socket";
                await Within(sender.SendAsync(socket, new System.Buffers.ReadOnlySequence<byte>(new byte[] { 1 })).AsTask(), deadline).ConfigureAwait(false);
                await Within(server.ReceiveAsync(new byte[1], SocketFlags.None), deadline).ConfigureAwait(false);

                step = round == 1 ? "receiving on a new socket" : "receiving on the recycled socket";
                await Within(server.SendAsync(new byte[] { 2 }, SocketFlags.None), deadline).ConfigureAwait(false);
                await Within(receiver.ReceiveAsync(socket, new byte[1]).AsTask(), deadline).ConfigureAwait(false);

                step = "closing gracefully, the server first";
                server.Shutdown(SocketShutdown.Send);
                await Within(receiver.ReceiveAsync(socket, new byte[1]).AsTask(), deadline).ConfigureAwait(false);
                HalfClose.SendFin(socket);
                await Within(server.ReceiveAsync(new byte[1], SocketFlags.None), deadline).ConfigureAwait(false);

                if (round == 1)
                {
                    step = "the reuse disconnect (DisconnectEx with TF_REUSE_SOCKET)";
                    handle = socket.Handle;
                    await Within(disconnector.DisconnectAsync(socket).AsTask(), deadline).ConfigureAwait(false);
                    if (socket.Handle != handle && secondConnectDelayForTests is null)
                    {
                        return new(kind, $"the runtime emulates socket reuse here (a reuse disconnect of an outbound {kind.OutboundName} socket gave it a new handle), so reuse would add system calls and save none", Emulated: true);
                    }
                }
            }

            // Said, not required: either way the recycled socket connected and carried bytes.
            return new(kind, null, Detail: ports[0] == ports[1]
                ? $"the recycled socket kept its port {ports[0]}, so its second connect went out on the 4-tuple the server held in TIME_WAIT"
                : $"the recycled socket connected again from a new port ({ports[0]}, then {ports[1]})");
        }
        catch (TimeoutException)
        {
            return new(kind, $"the outbound reuse self-test ({kind.OutboundName}) failed: {step} did not finish within {Timeout.TotalSeconds:0} s");
        }
        catch (SocketException ex)
        {
            return new(kind, $"the outbound reuse self-test ({kind.OutboundName}) failed: {step} failed with {ex.SocketErrorCode}");
        }
        catch (Exception ex) when (ex is InvalidOperationException or NotSupportedException or ObjectDisposedException)
        {
            return new(kind, $"the outbound reuse self-test ({kind.OutboundName}) failed: {step} failed: {ex.Message}");
        }
    }

    private static async Task<Verdict> RunAsync(ListenerKind kind)
    {
        var step = "setting up a loopback listener";
        using var listener = new Socket(kind.Family, SocketType.Stream, ProtocolType.Tcp);
        // As the posted accepts make them: the listener's family, nothing else set.
        using var socket = new Socket(kind.Family, SocketType.Stream, ProtocolType.Tcp);
        using var acceptor = new SocketAcceptor();
        using var receiver = new SocketReceiver();
        using var sender = new SocketSender();
        using var disconnector = new SocketDisconnector();
        var deadline = Task.Delay(Timeout);
        try
        {
            if (kind.DualMode)
            {
                listener.DualMode = true;
            }

            listener.Bind(new IPEndPoint(kind.ListenAddress, 0));
            listener.Listen(2);
            var target = new IPEndPoint(kind.DualMode ? IPAddress.Loopback : kind.ListenAddress, ((IPEndPoint)listener.LocalEndPoint!).Port);
            for (var round = 1; round <= 2; round++)
            {
                using var client = new Socket(kind.ClientFamily, SocketType.Stream, ProtocolType.Tcp);
                step = round == 1 ? "accepting into a new socket" : "accepting into the recycled socket";
                var connecting = client.ConnectAsync(target);
                var handle = socket.Handle;
                await Within(acceptor.AcceptAsync(listener, socket).AsTask(), deadline).ConfigureAwait(false);
                acceptor.AcceptSocket = null;
                await Within(connecting, deadline).ConfigureAwait(false);
                if (socket.Handle != handle)
                {
                    return new(kind, $"the runtime emulates socket reuse here (an accept into a given {kind} socket got a new handle), so reuse would add system calls and save none", Emulated: true);
                }

                step = round == 1 ? "sending on a new socket" : "sending on the recycled socket";
                await Within(sender.SendAsync(socket, new System.Buffers.ReadOnlySequence<byte>(new byte[] { 1 })).AsTask(), deadline).ConfigureAwait(false);
                await Within(client.ReceiveAsync(new byte[1], SocketFlags.None), deadline).ConfigureAwait(false);

                step = round == 1 ? "receiving on a new socket" : "receiving on the recycled socket";
                await Within(client.SendAsync(new byte[] { 2 }, SocketFlags.None), deadline).ConfigureAwait(false);
                await Within(receiver.ReceiveAsync(socket, new byte[1]).AsTask(), deadline).ConfigureAwait(false);

                step = "closing gracefully";
                client.Shutdown(SocketShutdown.Send);
                await Within(receiver.ReceiveAsync(socket, new byte[1]).AsTask(), deadline).ConfigureAwait(false);
                HalfClose.SendFin(socket);
                await Within(client.ReceiveAsync(new byte[1], SocketFlags.None), deadline).ConfigureAwait(false);

                if (round == 1)
                {
                    step = "the reuse disconnect (DisconnectEx with TF_REUSE_SOCKET)";
                    await Within(disconnector.DisconnectAsync(socket).AsTask(), deadline).ConfigureAwait(false);
                }
            }

            return new(kind, null);
        }
        catch (TimeoutException)
        {
            return new(kind, $"the reuse self-test ({kind}) failed: {step} did not finish within {Timeout.TotalSeconds:0} s");
        }
        catch (SocketException ex)
        {
            return new(kind, $"the reuse self-test ({kind}) failed: {step} failed with {ex.SocketErrorCode}");
        }
        catch (Exception ex) when (ex is InvalidOperationException or NotSupportedException or ObjectDisposedException)
        {
            return new(kind, $"the reuse self-test ({kind}) failed: {step} failed: {ex.Message}");
        }
    }

    private static async Task DelayedConnectAsync(Socket socket, IPEndPoint target, TimeSpan delay)
    {
        await Task.Delay(delay).ConfigureAwait(false);
        await socket.ConnectAsync(target).ConfigureAwait(false);
    }

    private static async Task Within(Task operation, Task deadline)
    {
        if (await Task.WhenAny(operation, deadline).ConfigureAwait(false) == deadline)
        {
            // Whatever is still pending is abandoned with its sockets, which the caller disposes.
            _ = operation.ContinueWith(static t => t.Exception, TaskScheduler.Default);
            throw new TimeoutException();
        }

        await operation.ConfigureAwait(false);
    }
}
