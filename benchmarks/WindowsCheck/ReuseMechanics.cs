using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Runtime.Versioning;
using Microsoft.AspNetCore.Connections;
using Transport.Winsock;

namespace WindowsCheck;

/// <summary>
/// Part (c), Windows only: the mechanics of TF_REUSE_SOCKET that the transport relies on, with .NET's
/// sockets alone and then through the transport's own outbound factory. What Winsock really bound
/// (getsockname) after a reuse disconnect and after the next connect, against what <see cref="Socket.LocalEndPoint"/>
/// says; a dual-mode listener accepting IPv4 and IPv6 clients in turn into the same recycled sockets; and
/// AcceptEx into a socket recycled from a connect (the transport never does that, its pools are apart: this
/// one is recorded, not judged). Each step is bounded (5 s); a reuse disconnect that never completes (Wine)
/// fails its check instead of hanging.
/// </summary>
[SupportedOSPlatform("windows")]
internal static partial class ReuseMechanics
{
    private static readonly TimeSpan StepTimeout = TimeSpan.FromSeconds(5);

    public static async Task RunAsync(Report report)
    {
        report.Heading("(c) the mechanics: bound address after a reuse disconnect, dual-mode, AcceptEx into a connect's socket");
        await Step(report, "a connect's socket after a reuse disconnect", () => BoundAfterDisconnectAsync(report)).ConfigureAwait(false);
        await Step(report, "the transport's recycled connections report their own local endpoint", () => FactoryEndpointsAsync(report)).ConfigureAwait(false);
        await Step(report, "a dual-mode listener, IPv4 and IPv6 clients in turn on recycled sockets", () => DualModeAsync(report)).ConfigureAwait(false);
        await Step(report, "AcceptEx into a socket recycled from a connect", () => AcceptIntoConnectedAsync(report)).ConfigureAwait(false);
    }

    /// <summary>Runs one step; one that throws or times out is a failed check with what it threw.</summary>
    private static async Task Step(Report report, string what, Func<Task> step)
    {
        try
        {
            await step().WaitAsync(TimeSpan.FromSeconds(30)).ConfigureAwait(false);
        }
        catch (Exception ex)
        {
            report.Check(false, what, OutboundChurn.Describe(ex));
        }
    }

    /// <summary>
    /// A socket connects to server A, the server closes first, the reuse disconnect; then what is it bound to,
    /// and what does LocalEndPoint say? Then it connects to server B: what does B see, getsockname, LocalEndPoint?
    /// </summary>
    private static async Task BoundAfterDisconnectAsync(Report report)
    {
        using var a = Listen(IPAddress.Loopback);
        using var b = Listen(IPAddress.Loopback);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var handle = socket.Handle;
        var first = await ConnectAndServerClosesFirstAsync(socket, a).ConfigureAwait(false);
        await socket.DisconnectAsync(reuseSocket: true).AsTask().WaitAsync(StepTimeout).ConfigureAwait(false);
        var boundAfter = GetSockName(socket);
        report.Fact($"after the reuse disconnect: getsockname {Show(boundAfter)}, Socket.LocalEndPoint {Show(socket.LocalEndPoint)} (the first connection went out from {first})");

        using var accepted = await ConnectAndAcceptAsync(socket, b).ConfigureAwait(false);
        var seen = (IPEndPoint)accepted.RemoteEndPoint!;
        var bound = GetSockName(socket);
        report.Fact($"after the next connect: server B saw {seen}, getsockname {Show(bound)}, Socket.LocalEndPoint {Show(socket.LocalEndPoint)}; handle {(socket.Handle == handle ? "the same" : "a new one")}; port {(seen.Port == first.Port ? "kept" : "not kept")}");
        report.Check(socket.Handle == handle, "the recycled socket kept its handle (kernel reuse, not .NET's emulation)", "the handle changed");
        report.Check(seen.Equals(bound), "getsockname after the next connect is what the server saw", $"{Show(bound)} against {seen}");
        if (!seen.Equals(socket.LocalEndPoint))
        {
            report.Fact($"note: Socket.LocalEndPoint ({Show(socket.LocalEndPoint)}) is not the endpoint the server saw ({seen}): .NET kept what it read first; the transport asks getsockname per connection");
        }
    }

    /// <summary>The transport's factory, reuse forced on, two servers in turn: each connection's LocalEndPoint is what its server saw.</summary>
    private static async Task FactoryEndpointsAsync(Report report)
    {
        using var a = Listen(IPAddress.Loopback);
        using var b = Listen(IPAddress.Loopback);
        await using var factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { ReuseSockets = true, DisconnectTimeout = StepTimeout });
        var mismatches = new List<string>();
        var ports = new HashSet<int>();
        const int Rounds = 8;
        for (var i = 0; i < Rounds; i++)
        {
            var server = i % 2 == 0 ? a : b;
            var connection = await factory.ConnectAsync(server.LocalEndPoint!).AsTask().WaitAsync(StepTimeout).ConfigureAwait(false);
            using var accepted = await server.AcceptAsync().WaitAsync(StepTimeout).ConfigureAwait(false);
            var seen = (IPEndPoint)accepted.RemoteEndPoint!;
            ports.Add(seen.Port);
            if (!seen.Equals(connection.LocalEndPoint))
            {
                mismatches.Add($"{connection.LocalEndPoint} against {seen}");
            }

            // The server closes first (so the client recycles), the client answers with its FIN at its dispose.
            accepted.Shutdown(SocketShutdown.Send);
            await ReadToEndAsync(connection).ConfigureAwait(false);
            await connection.DisposeAsync().ConfigureAwait(false);
            await ReceiveFinAsync(accepted).ConfigureAwait(false);
            // Its reuse disconnect and return to the pool, before the next connect.
            var until = DateTime.UtcNow + StepTimeout;
            while (factory.Counters.PendingDisconnects > 0 && DateTime.UtcNow < until)
            {
                await Task.Delay(20).ConfigureAwait(false);
            }
        }

        var c = factory.Counters;
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"the factory, {Rounds} connects to two servers in turn: sockets created {c.SocketsCreated}, reused {c.SocketsReused}, from {ports.Count} client ports; reuse disconnects {c.ReuseDisconnects} (failed {c.DisconnectFailures}, timed out {c.DisconnectTimeouts})"));
        report.Check(mismatches.Count == 0, "each recycled connection's LocalEndPoint is what its server saw", string.Join("; ", mismatches.Take(3)));
        report.Check(c.SocketsReused > 0, "the factory reused sockets", $"none reused; {c.DisconnectTimeouts} disconnects timed out, {c.DisconnectFailures} failed");
    }

    /// <summary>
    /// A dual-mode listener on [::] (it must be the wildcard to take both families; the clients are 127.0.0.1 and
    /// ::1), three sockets accepted into in turn, each recycled after a passive close, clients alternating
    /// IPv4 and IPv6: six rounds, so each socket takes each family.
    /// </summary>
    private static async Task DualModeAsync(Report report)
    {
        using var listener = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
        listener.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
        listener.Listen(16);
        var port = ((IPEndPoint)listener.LocalEndPoint!).Port;
        var sockets = Enumerable.Range(0, 3).Select(_ => new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp)).ToArray();
        var handles = sockets.Select(static s => s.Handle).ToArray();
        var seen = new List<string>();
        var wrong = new List<string>();
        bool keptHandles;
        try
        {
            for (var round = 0; round < 6; round++)
            {
                var socket = sockets[round % 3];
                var ipv4 = round % 2 == 0;
                var server = new IPEndPoint(ipv4 ? IPAddress.Loopback : IPAddress.IPv6Loopback, port);
                using var client = new Socket(server.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                var accepting = listener.AcceptAsync(socket);
                await client.ConnectAsync(server).WaitAsync(StepTimeout).ConfigureAwait(false);
                var accepted = await accepting.WaitAsync(StepTimeout).ConfigureAwait(false);
                if (!ReferenceEquals(accepted, socket))
                {
                    wrong.Add($"round {round}: the accept did not go into the given socket");
                }

                var remote = (IPEndPoint)socket.RemoteEndPoint!;
                var local = (IPEndPoint)socket.LocalEndPoint!;
                var clientLocal = (IPEndPoint)client.LocalEndPoint!;
                var expectedRemote = ipv4 ? new IPEndPoint(clientLocal.Address.MapToIPv6(), clientLocal.Port) : clientLocal;
                if (!remote.Equals(expectedRemote) || (ipv4 ? !local.Address.IsIPv4MappedToIPv6 : local.Address.IsIPv4MappedToIPv6))
                {
                    wrong.Add($"round {round} ({(ipv4 ? "IPv4" : "IPv6")}): remote {remote} (client {clientLocal}), local {local}");
                }

                seen.Add($"{(ipv4 ? "v4" : "v6")}: {remote} -> {local}");
                await ExchangeAsync(client, socket).ConfigureAwait(false);
                // The client closes first: the passive close the transport recycles.
                client.Shutdown(SocketShutdown.Send);
                await ReceiveFinAsync(socket).ConfigureAwait(false);
                socket.Shutdown(SocketShutdown.Send);
                await ReceiveFinAsync(client).ConfigureAwait(false);
                await socket.DisconnectAsync(reuseSocket: true).AsTask().WaitAsync(StepTimeout).ConfigureAwait(false);
            }

            keptHandles = sockets.Select((s, i) => s.Handle == handles[i]).All(static same => same);
        }
        finally
        {
            foreach (var socket in sockets)
            {
                socket.Dispose();
            }
        }

        report.Fact($"dual-mode [::]:{port}, 3 sockets x 2 rounds: {string.Join("; ", seen)}");
        report.Check(wrong.Count == 0, "each recycled socket took IPv4 and IPv6 clients in turn with the right endpoints", string.Join("; ", wrong.Take(3)));
        report.Check(keptHandles, "the dual-mode sockets kept their handles across reuse", "a handle changed");
    }

    /// <summary>A socket that connected out, recycled (server closed first), then given to AcceptEx: recorded, not judged.</summary>
    private static async Task AcceptIntoConnectedAsync(Report report)
    {
        using var server = Listen(IPAddress.Loopback);
        using var listener = Listen(IPAddress.Loopback);
        using var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        var first = await ConnectAndServerClosesFirstAsync(socket, server).ConfigureAwait(false);
        await socket.DisconnectAsync(reuseSocket: true).AsTask().WaitAsync(StepTimeout).ConfigureAwait(false);
        using var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        string outcome;
        try
        {
            var accepting = listener.AcceptAsync(socket);
            await client.ConnectAsync(listener.LocalEndPoint!).WaitAsync(StepTimeout).ConfigureAwait(false);
            await accepting.WaitAsync(StepTimeout).ConfigureAwait(false);
            await ExchangeAsync(client, socket).ConfigureAwait(false);
            outcome = $"accepted and moved bytes both ways; local {socket.LocalEndPoint} (getsockname {Show(GetSockName(socket))}), remote {socket.RemoteEndPoint}; it had connected out from {first}";
        }
        catch (Exception ex) when (ex is SocketException or InvalidOperationException or TimeoutException)
        {
            outcome = $"failed: {OutboundChurn.Describe(ex)} (it had connected out from {first})";
        }

        report.Fact($"AcceptEx into a socket recycled from a connect: {outcome} (recorded only: the transport keeps listener and outbound sockets apart)");
    }

    private static Socket Listen(IPAddress address)
    {
        var listener = new Socket(address.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        listener.Bind(new IPEndPoint(address, 0));
        listener.Listen(16);
        return listener;
    }

    /// <summary>Connects, moves a byte each way, the server closes first and then the client: the client's socket is ready for a reuse disconnect.</summary>
    private static async Task<IPEndPoint> ConnectAndServerClosesFirstAsync(Socket socket, Socket server)
    {
        using var accepted = await ConnectAndAcceptAsync(socket, server).ConfigureAwait(false);
        await ExchangeAsync(socket, accepted).ConfigureAwait(false);
        var local = (IPEndPoint)accepted.RemoteEndPoint!;
        accepted.Shutdown(SocketShutdown.Send);
        await ReceiveFinAsync(socket).ConfigureAwait(false);
        socket.Shutdown(SocketShutdown.Send);
        await ReceiveFinAsync(accepted).ConfigureAwait(false);
        return local;
    }

    private static async Task<Socket> ConnectAndAcceptAsync(Socket socket, Socket server)
    {
        var accepting = server.AcceptAsync();
        await socket.ConnectAsync(server.LocalEndPoint!).WaitAsync(StepTimeout).ConfigureAwait(false);
        return await accepting.WaitAsync(StepTimeout).ConfigureAwait(false);
    }

    private static async Task ExchangeAsync(Socket one, Socket other)
    {
        var buffer = new byte[1];
        await one.SendAsync(new byte[] { 1 }, SocketFlags.None).ConfigureAwait(false);
        if (await other.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(StepTimeout).ConfigureAwait(false) != 1)
        {
            throw new InvalidOperationException("no byte one way");
        }

        await other.SendAsync(new byte[] { 2 }, SocketFlags.None).ConfigureAwait(false);
        if (await one.ReceiveAsync(buffer, SocketFlags.None).WaitAsync(StepTimeout).ConfigureAwait(false) != 1)
        {
            throw new InvalidOperationException("no byte the other way");
        }
    }

    private static async Task ReceiveFinAsync(Socket socket)
    {
        if (await socket.ReceiveAsync(new byte[16], SocketFlags.None).WaitAsync(StepTimeout).ConfigureAwait(false) != 0)
        {
            throw new InvalidOperationException("bytes where a FIN was due");
        }
    }

    private static async Task ReadToEndAsync(ConnectionContext connection)
    {
        using var timeout = new CancellationTokenSource(StepTimeout);
        while (true)
        {
            var result = await connection.Transport.Input.ReadAsync(timeout.Token).ConfigureAwait(false);
            connection.Transport.Input.AdvanceTo(result.Buffer.End);
            if (result.IsCompleted)
            {
                return;
            }
        }
    }

    private static string Show(EndPoint? endpoint) => endpoint?.ToString() ?? "(none)";

    /// <summary>What Winsock has the socket bound to now, or null when it is not bound (WSAEINVAL).</summary>
    private static unsafe IPEndPoint? GetSockName(Socket socket)
    {
        var address = stackalloc byte[28];
        var length = 28;
        if (GetSockNameNative(socket.SafeHandle, address, ref length) != 0)
        {
            return null;
        }

        var family = (AddressFamily)(address[0] | (address[1] << 8));
        var port = (address[2] << 8) | address[3];
        return family switch
        {
            AddressFamily.InterNetwork => new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(address + 4, 4)), port),
            AddressFamily.InterNetworkV6 => new IPEndPoint(new IPAddress(new ReadOnlySpan<byte>(address + 8, 16), BitConverter.ToUInt32(new ReadOnlySpan<byte>(address + 24, 4))), port),
            _ => null,
        };
    }

    [LibraryImport("ws2_32.dll", EntryPoint = "getsockname", SetLastError = true)]
    private static unsafe partial int GetSockNameNative(SafeSocketHandle socket, byte* name, ref int nameLength);
}
